"""`vidcorpus report`: the static HTML audit (``build.py`` writes it; ``scope.py`` the scoped views,
``queries.py`` the SQL, ``sections.py``, ``footage.py``, ``stages.py``, ``labels.py`` the sections,
``plots.py`` the figures, ``html_pages.py`` the pages, ``terminal.py`` the rich tables)."""
