"""`vidcorpus report`: the static HTML audit (``build.py`` writes it; ``scope.py`` the scoped views,
``figure_queries.py`` the SQL, ``sections.py``, ``footage.py``, ``stages.py``,
``filter_quality_section.py`` the sections, ``plots.py`` the figures, ``html_pages.py`` the pages,
``terminal.py`` the rich tables)."""
