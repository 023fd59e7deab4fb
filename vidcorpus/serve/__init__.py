"""`vidcorpus serve`: a local web app over the catalog to browse clips, label them and measure filters.

Modules, one job each: ``access`` (opening the catalog per request without starving a job),
``grid_queries`` (the grid and clip-page SQL), ``labels`` (verdicts as catalog rows), ``measure``
(precision and recall of each filter from the labels), ``recipe_sql`` (a recipe as a SQL
expression, for comparing recipes), ``neighbours`` (nearest clips by embedding), ``clip_bytes`` (clip
bytes with HTTP ranges, from files or shard members), ``security`` (ids, paths, bind and token
rules), ``app`` and ``routes_measure`` (the Starlette routes) and ``server`` (uvicorn).
"""
