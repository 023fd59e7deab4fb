"""`catalog verify`'s relative_path check: every stored location must be absolute or a URL.

A relative path resolves against the working directory of whoever reads it, so a catalog that
holds one works from one directory only (issue 21). The check lists each table and column that
holds a location; the command line makes new ones absolute (``vidcorpus/paths.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vidcorpus.catalog.sql_names import ident, table as sql_table
from vidcorpus.paths import is_relative_path

if TYPE_CHECKING:  # pragma: no cover
    from vidcorpus.catalog.store import Catalog

# (table, key column, location column)
LOCATION_COLUMNS = [
    ("sources", "source_id", "uri"),
    ("sources", "source_id", "source_path"),
    ("clips", "clip_id", "clip_path"),
    ("clips", "clip_id", "first_frame_path"),
    ("shards", "shard_id", "url"),
    ("embeddings", "clip_id", "url"),
    ("latent_shards", "shard_id", "url"),
    ("releases", "name", "manifest_url"),
    ("releases", "name", "catalog_snapshot"),
    ("train_runs", "run_id", "checkpoint"),
    ("train_sample_files", "run_id", "url"),
]


def relative_paths(cat: "Catalog", limit: int = 1000) -> list[dict]:
    """A problem per stored location that is a relative path (``check = relative_path``)."""
    present = {(r["table_name"], r["column_name"]) for r in cat.query_dicts(
        "SELECT table_name, column_name FROM information_schema.columns")}
    out: list[dict] = []
    for table, key, column in LOCATION_COLUMNS:
        if (table, column) not in present:
            continue
        # cheap pre-filter in SQL (not a URL, not starting with '/'), the exact test in Python
        k, col = ident(key), ident(column)
        rows = cat.query_dicts(
            f"SELECT {k} AS item, {col} AS location FROM {sql_table(table)} WHERE {col} IS NOT NULL "
            f"AND {col} <> '' AND NOT contains({col}, '://') AND NOT starts_with({col}, '/') "
            "ORDER BY 1 LIMIT ?", [limit])
        out += [{"check": "relative_path", "item": r["item"],
                 "detail": f"{table}.{column} is the relative path {r['location']!r}: readable only from the "
                           "directory that wrote it (pass absolute paths, or run from there)"}
                for r in rows if is_relative_path(r["location"])]
    return out
