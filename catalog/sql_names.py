"""The only names the catalog splices into SQL text, checked and quoted in one place.

Every value (ids, URLs, recipe names, labels) goes to DuckDB as a ``?`` parameter, so no value is
ever quoted by hand. What cannot be a parameter is a name: a table, a column, a scorer that has its
own clips_wide column. Those come from code (the fixed table set below, ``information_schema``,
scorer names checked by ``schema.check_scorer_name``) and pass through here before they reach a
statement, so a name that is not a plain identifier fails loudly instead of changing the SQL.
"""

from __future__ import annotations

import re

CATALOG_TABLES = frozenset({
    "captions", "clips", "clips_wide", "decisions", "dropped_segments", "embeddings", "events", "failures",
    "labels", "latent_shards", "recipe_history", "recipes", "release_members", "releases", "runs", "scores",
    "shard_members", "shards", "sources", "stage_intervals", "train_runs", "train_sample_files", "train_samples",
})
"""Every table the migrations create (views are never written to)."""

PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def ident(name: str) -> str:
    """``name`` as a quoted SQL identifier; ValueError unless it is a plain identifier."""
    if not isinstance(name, str) or not PLAIN_NAME.fullmatch(name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return f'"{name}"'


def table(name: str) -> str:
    """A catalog table's name, quoted; ValueError for any other name."""
    if name not in CATALOG_TABLES:
        raise ValueError(f"not a catalog table: {name!r}")
    return ident(name)


def name_literal(name: str) -> str:
    """A checked plain name as a string literal, for a view or pivot whose text must name it (a
    scorer's ``FILTER (WHERE scorer = 'aesthetic')``): parameters cannot appear in a view."""
    ident(name)
    return f"'{name}'"


def placeholders(n: int) -> str:
    """``?, ?, ...`` for an ``IN (...)`` list of ``n`` values (``NULL`` for none). A list of ``?``
    keeps DuckDB's primary-key index probe, which ``IN (SELECT unnest(?))`` does not (measured: 7 ms
    against 38 ms for 500 ids in 3 M rows)."""
    return ", ".join("?" * n) if n else "NULL"
