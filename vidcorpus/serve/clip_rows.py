"""A clip page's labels and shard from memory, read once per catalog state while those tables are small.

Each was an index probe per first clip page (~0.6 ms and ~0.35 ms of CPU at 1 M clips). Labels are
people's verdicts (thousands, not millions) and shards hold about a thousand clips each, so both
tables are read whole once per catalog state and grouped by key; a label is a commit, so the next
page reads them again (the cache is keyed by the catalog's stamp, ``CachedReads``). Above
``ROWS_IN_MEMORY`` rows a table stays a probe. The rows equal the probes' (``grid_queries.clip_labels``,
``grid_queries.clip_shard``, same order; tested).
"""

from __future__ import annotations

import duckdb

from vidcorpus.serve.grid_queries import clip_labels, clip_shard

ROWS_IN_MEMORY = 200_000
"""Rows of one table held in memory per catalog state; a larger table is probed per page."""


def _dicts(rel) -> list[dict]:
    names = [d[0] for d in rel.description]
    return [dict(zip(names, r)) for r in rel.fetchall()]


def _grouped(con: duckdb.DuckDBPyConnection, sql: str, key: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in _dicts(con.execute(sql)):
        out.setdefault(row.pop(key), []).append(row)
    return out


class ClipRows:
    """The labels and shards of one catalog state, each grouped by key when small enough."""

    def __init__(self, con: duckdb.DuckDBPyConnection, have: set[str]):
        self.have = have
        self.labels: dict[str, list[dict]] | None = None
        self.shards: dict[str, list[dict]] | None = None
        if "labels" in have and self._small(con, "labels"):
            self.labels = _grouped(con, "SELECT clip_id, label, reason, who, labeled_at, origin FROM labels "
                                        "ORDER BY clip_id, labeled_at DESC, label_id DESC", "clip_id")
        if "shards" in have and self._small(con, "shards"):
            self.shards = {r["shard_id"]: [r] for r in _dicts(con.execute("SELECT shard_id, url, sha256 FROM shards"))}

    @staticmethod
    def _small(con: duckdb.DuckDBPyConnection, table: str) -> bool:
        return con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0] <= ROWS_IN_MEMORY

    def labels_of(self, con: duckdb.DuckDBPyConnection, clip_id: str) -> list[dict]:
        if self.labels is None:
            return clip_labels(con, clip_id, self.have)
        return [dict(r) for r in self.labels.get(clip_id, [])]

    def shard_of(self, con: duckdb.DuckDBPyConnection, shard_id: str | None) -> list[dict]:
        if self.shards is None:
            return clip_shard(con, shard_id)
        return [dict(r) for r in self.shards.get(shard_id, [])] if shard_id else []
