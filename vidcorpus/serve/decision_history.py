"""Each clip's decisions under every recipe version (the clip page's history) from memory, per catalog state.

Its index probe (``decisions WHERE clip_id = ?``, migration 15) was ~0.8 ms of CPU of a first clip
page at 1 M clips, the largest after the clip's own row. Here every decision is read once per
catalog state (in the background, like the sources' timelines: ``CachedReads.decisions``), grouped
by the clip's row of the grid's columns (``grid_index``: rows in DuckDB's clip_id order, found by a
binary search over the ids); a page takes its slice. The rows equal the probe's
(``grid_queries.clip_decisions``, same order; tested). Above ``DECISIONS_IN_MEMORY`` decisions, or if
the ids' order is not the byte order a search needs, the probe answers.
"""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import pyarrow as pa

from vidcorpus.serve.grid_index import GridColumns
from vidcorpus.serve.timelines import grouped

DECISIONS_IN_MEMORY = 3_000_000
"""Decisions held per catalog state (~60 bytes each with the ids' search array); more: a probe per page."""


class DecisionHistory:
    """The decisions of one catalog state (the state of ``columns``), by clip."""

    def __init__(self, con: duckdb.DuckDBPyConnection, columns: GridColumns):
        self._ids: np.ndarray | None = None
        if con.execute("SELECT count(*) FROM decisions").fetchall()[0][0] > DECISIONS_IN_MEMORY:
            return
        ids = np.array(columns.clip_ids(np.arange(columns.n)), dtype=np.bytes_)  # row order: DuckDB's id order
        if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
            return  # not byte order (a collation): a search would miss
        table = con.sql("SELECT w.rowid AS wide_rowid, d.recipe, d.kept, d.reason, d.decided_at "
                        "FROM decisions d JOIN clips_wide w USING (clip_id)").to_arrow_table()
        rows = columns.rows_of_rowids(table["wide_rowid"].to_numpy())
        self._order, self._starts = grouped(rows, columns.n)
        self._table = table.drop_columns(["wide_rowid"]).combine_chunks()  # (a take over many chunks: ms)
        self._ids = ids

    def of(self, clip_id: str) -> list[dict] | None:
        """The clip's decisions by time (then recipe); None when the probe must answer."""
        if self._ids is None:
            return None
        key = clip_id.encode()
        row = int(np.searchsorted(self._ids, key))
        if row >= len(self._ids) or self._ids[row] != key:
            return None
        picked = self._order[self._starts[row + 1]:self._starts[row + 2]]
        found = self._table.take(pa.array(picked)).to_pylist()
        return sorted(found, key=lambda d: (d["decided_at"] is None, d["decided_at"] or dt.datetime.min, d["recipe"]))
