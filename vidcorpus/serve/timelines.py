"""Each source's timeline (the clip page's "where every frame went") from memory, per catalog state.

At 1 M clips a first clip page spent about a third of its CPU (~2.2 ms of ~7.5) on its source's
timeline: three index probes (the source's row, its clips, its dropped segments), and with 100,000
sources a page seldom shares its source with one rendered before. The grid's columns (``grid_index``)
already hold every clip's id, source, decision and drop reason in clip_id order; this adds each
clip's first and last frame, the rows grouped by source, the sources' rows and the dropped segments
grouped the same way, read once per catalog state (in the background: ``CachedReads.timeline``).
A timeline is then a slice. Its rows equal the SQL's (``grid_queries.TIMELINE_*_SQL``, same order;
tested) and ``grid_queries.timeline_of_rows`` draws both. Above ``SEGMENTS_IN_MEMORY`` dropped segments
those stay a probe; a source the columns do not know (none of its clips) is left to the SQL.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vidcorpus.serve import grid_queries
from vidcorpus.serve.grid_index import GridColumns

SEGMENTS_IN_MEMORY = 2_000_000
"""Dropped segments held in memory per catalog state (~40 bytes each); more: one probe per page."""


def grouped(codes: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions grouped by code (-1: none), each group in its original order: group ``c`` is
    ``order[starts[c + 1]:starts[c + 2]]``."""
    shifted = codes.astype(np.int64) + 1
    order = np.argsort(shifted, kind="stable").astype(np.int32 if len(codes) < 2**31 else np.int64)  # (memory)
    starts = np.concatenate([[0], np.cumsum(np.bincount(shifted, minlength=groups + 1))])
    return order, starts


def _codes_of(ids: pa.ChunkedArray | pa.Array, names: list) -> np.ndarray:
    """Each id's code among ``names`` (the grid's source dictionary), -1 for an id not among them."""
    found = pc.index_in(ids.cast(pa.string()), value_set=pa.array(names, type=pa.string()))
    return pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)


class SourceTimelines:
    """Every source's timeline rows of one catalog state (the state of ``columns``)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, columns: GridColumns, have: set[str]):
        self.columns = columns
        codes, names, self._code_of = columns.codes["source_id"]
        self._rows, self._starts = grouped(codes, len(names))  # each source's rows, in clip_id order
        frames = con.sql("SELECT rowid, first_frame, last_frame FROM clips_wide").to_arrow_table()
        at = np.empty(columns.n, dtype=np.int64)  # row -> its position in ``frames``
        at[columns.rows_of_rowids(frames["rowid"].to_numpy())] = np.arange(frames.num_rows)
        at = pa.array(at)
        self._first = frames["first_frame"].take(at).combine_chunks()
        self._last = frames["last_frame"].take(at).combine_chunks()
        sources = con.sql("SELECT source_id, uri, n_frames, fps, duration_s FROM sources").to_arrow_table()
        self._sources = sources.combine_chunks()  # (the columns of grid_queries.TIMELINE_SOURCE_SQL)
        self._source_row = np.full(len(names), -1, dtype=np.int64)
        source_codes = _codes_of(sources["source_id"], names)
        known = source_codes >= 0
        self._source_row[source_codes[known]] = np.flatnonzero(known)
        self._segments: pa.Table | None = None
        if "dropped_segments" in have and con.execute(
                "SELECT count(*) FROM dropped_segments").fetchall()[0][0] <= SEGMENTS_IN_MEMORY:
            segments = con.sql("SELECT source_id, first_frame, last_frame, reason, detector FROM dropped_segments "
                               "ORDER BY source_id, first_frame, last_frame, reason, detector").to_arrow_table()
            self._segment_rows, self._segment_starts = grouped(_codes_of(segments["source_id"], names), len(names))
            self._segments = segments.drop_columns(["source_id"]).combine_chunks()
        self._have_segments = "dropped_segments" in have

    def timeline(self, con: duckdb.DuckDBPyConnection, source_id: str) -> dict | None:
        """The source's timeline, as ``grid_queries.timeline`` draws it; None when the SQL must answer."""
        code = self._code_of.get(source_id)
        if code is None:
            return None
        rows = self._rows[self._starts[code + 1]:self._starts[code + 2]]
        at = pa.array(rows)
        kept = self.columns.kept[rows].tolist()
        reason_codes, reason_names, _ = self.columns.codes["reason"]
        clips = [{"clip_id": clip_id, "first_frame": first, "last_frame": last,
                  "kept": None if k < 0 else bool(k), "reason": reason_names[r] if r >= 0 else None}
                 for clip_id, first, last, k, r in zip(self.columns.clip_ids(rows), self._first.take(at).to_pylist(),
                                                       self._last.take(at).to_pylist(), kept,
                                                       reason_codes[rows].tolist())]
        clips.sort(key=lambda c: (c["first_frame"] is None, c["first_frame"] or 0))  # stable: ties in id order
        r = int(self._source_row[code])
        src = self._sources.slice(r, 1).to_pylist()[0] if r >= 0 else None
        if self._segments is not None:
            picked = self._segment_rows[self._segment_starts[code + 1]:self._segment_starts[code + 2]]
            segments = self._segments.take(pa.array(picked)).to_pylist()
        elif self._have_segments:
            rel = con.execute(grid_queries.TIMELINE_SEGMENTS_SQL, [source_id])
            names = [d[0] for d in rel.description]
            segments = [dict(zip(names, row)) for row in rel.fetchall()]
        else:
            segments = []
        return grid_queries.timeline_of_rows(source_id, src, clips, segments)
