"""The grid's standard filters and sorts answered from memory, once per catalog state.

A grid query that nobody asked before (a slider at a new value, another sort) is a top-N over every
clip: ~30 ms of CPU at 1 M clips in DuckDB, the largest cost of the server under load
(docs/benchmarks.md). Here the columns those queries touch are read once per catalog state into
numpy arrays, rows in ``clip_id`` order: the clip ids, the decision, source, drop reason and media
type (as codes), and, when first asked for, a numeric column and its order per direction. A query
is then a mask over the rows (one comparison per filter) and a walk down the presorted order until
the page's rows are found: a few ms at 1 M clips. The card needs only what is loaded, so a page
costs no catalog read at all.

The answer equals ``grid_queries.ordered_ids`` + ``rows_by_id`` exactly (tested against them): the
order is ``"col" ASC|DESC NULLS LAST, clip_id``; a NaN score counts as larger than any number (as
in DuckDB: it passes every ``>=`` and fails every ``<=``, and sorts after +inf); NULL fails every
comparison and sorts last both ways. A free SQL ``WHERE``, an explicit clip set, a slider on a
non-numeric column or a NaN bound go to DuckDB (``answerable`` says which).

Memory: ids (~40 bytes a clip) and codes are read at once; each numeric column costs 8 bytes a clip
(9 with NULLs) and each order 4 (int32), read when first used: at 1 M clips 65 MB to start and 305
MB with 15 scores sorted both ways (measured, docs/benchmarks.md); about 10x at 10 M. Orders beyond
``ORDER_BUDGET_BYTES`` are dropped least recently used first (recomputed when asked for again). The whole object belongs to
one catalog stamp (``CachedReads``): a commit makes the next page build a new one.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vidcorpus.catalog.sql_names import ident
from vidcorpus.serve import grid_queries

ORDER_BUDGET_BYTES = 1 << 30
MASKS_BUDGET_BYTES = 64 << 20
"""Equality masks (decision, source, reason) kept per catalog state, one byte per clip each: 64 at 1 M clips."""
"""Presorted orders kept per catalog state (int32 per clip each: 256 orders at 1 M clips, 26 at 10 M)."""


@dataclass
class NumericColumn:
    """One numeric column, rows in clip_id order."""

    values: np.ndarray          # float64; NULL read as NaN (``null`` tells them apart)
    null: np.ndarray | None     # True where NULL (None when no row is)
    nan: np.ndarray | None      # True where a real NaN (None when no row is)


def answerable(q: grid_queries.GridQuery) -> bool:
    """Whether the grid query uses only what this index holds (else DuckDB answers it)."""
    if q.where or q.clip_ids is not None:
        return False
    bounds = [b for lo_hi in q.ranges.values() for b in lo_hi if b is not None]
    return not any(math.isnan(b) for b in bounds)


def grid_columns(con: duckdb.DuckDBPyConnection) -> GridColumns | None:
    """The columns of the catalog's current state, or None when ``clips_wide`` has no row ids to
    align later reads by (a snapshot's view over Parquet): DuckDB answers every grid query then."""
    try:
        # DuckDB's own clip_id order (the SQL's tie-break), as row ids: 2.3 s at 10 M clips where
        # sorting and reordering the id strings in Arrow took 7
        by_id = con.sql("SELECT rowid FROM clips_wide ORDER BY clip_id").to_arrow_table()["rowid"].to_numpy()
        table = con.sql("SELECT rowid, clip_id, kept, source_id, reason, media_type FROM clips_wide").to_arrow_table()
    except duckdb.BinderException:
        return None
    return GridColumns(table, by_id)


class GridColumns:
    """The grid's filterable and sortable columns of one catalog state, as numpy arrays."""

    def __init__(self, table: pa.Table, by_id: np.ndarray):
        """``table``: clips_wide's rowid, clip_id, kept, source_id, reason and media_type, as read;
        ``by_id``: the row ids in clip_id order (row ``i`` of these arrays is the ``i``-th clip id)."""
        self.n = table.num_rows
        rowids = table["rowid"].to_numpy()
        size = int(max(rowids.max(), by_id.max())) + 1 if self.n else 0
        self._row_of_rowid = np.zeros(size, dtype=np.int64)
        self._row_of_rowid[by_id] = np.arange(self.n)
        read_at = np.zeros(size, dtype=np.int64)
        read_at[rowids] = np.arange(self.n)
        self._read_at = read_at[by_id]  # row -> its position in ``table`` (and in ``ids``)
        self.ids: pa.Array = table["clip_id"].combine_chunks()  # as read: a page takes its few ids
        self.kept = pc.fill_null(table["kept"].cast(pa.int8()), -1).to_numpy()[self._read_at]  # 1, 0, -1 undecided
        self.codes: dict[str, tuple[np.ndarray, list, dict]] = {}
        for name in ("source_id", "reason", "media_type"):
            encoded = table[name].combine_chunks().dictionary_encode()
            names = encoded.dictionary.to_pylist()
            codes = pc.fill_null(encoded.indices, -1).to_numpy().astype(np.int32)
            self.codes[name] = (codes[self._read_at], names, {v: i for i, v in enumerate(names)})
        self._lock = threading.Lock()
        self._numeric: dict[str, NumericColumn | None] = {}
        self._orders: OrderedDict[tuple[str, bool], np.ndarray] = OrderedDict()
        self._computing: dict[tuple[str, bool], threading.Lock] = {}
        self._masks: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self.loads = 0  # columns and orders computed (a page that caused one was read from the catalog)

    def numeric(self, con: duckdb.DuckDBPyConnection, name: str) -> NumericColumn | None:
        """The column (read on first use), or None when it is not numeric (DuckDB answers then)."""
        with self._lock:
            if name not in self._numeric:
                self._numeric[name] = self._read_numeric(con, name)
                self.loads += 1
            return self._numeric[name]

    def _read_numeric(self, con: duckdb.DuckDBPyConnection, name: str) -> NumericColumn | None:
        table = con.sql(f"SELECT rowid, {ident(name)} FROM clips_wide").to_arrow_table()
        col = table[name].combine_chunks()
        if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
            return None
        rows = self._row_of_rowid[table["rowid"].to_numpy()]
        values = np.empty(self.n, dtype=np.float64)
        values[rows] = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
        null = None
        if col.null_count:
            null = np.zeros(self.n, dtype=bool)
            null[rows] = col.is_null().to_numpy(zero_copy_only=False)
        nan = np.isnan(values)
        if null is not None:
            nan &= ~null
        return NumericColumn(values, null, nan if nan.any() else None)

    def order(self, con: duckdb.DuckDBPyConnection, name: str, descending: bool) -> np.ndarray | None:
        """Row numbers in ``"name" ASC|DESC NULLS LAST, clip_id`` order (None: not numeric)."""
        if name == "clip_id":
            rows = np.arange(self.n, dtype=np.int32)
            return rows[::-1] if descending else rows
        col = self.numeric(con, name)
        if col is None:
            return None
        if descending:  # derived from the ascending order in one pass (a sort costs ~100 ms at 1 M clips)
            ascending = self._order(name, False, lambda: _sorted_rows(col, False))
            return self._order(name, True, lambda: _sorted_rows(col, True, ascending))
        return self._order(name, False, lambda: _sorted_rows(col, False))

    def _order(self, name: str, descending: bool, compute) -> np.ndarray:
        key = (name, descending)
        with self._lock:
            computing = self._computing.setdefault(key, threading.Lock())
        with computing:  # fifty requests for the same new order compute it once
            with self._lock:
                if key in self._orders:
                    self._orders.move_to_end(key)
                    return self._orders[key]
            order = compute()
            with self._lock:
                self._orders[key] = order
                self.loads += 1
                while sum(o.nbytes for o in self._orders.values()) > ORDER_BUDGET_BYTES and len(self._orders) > 1:
                    self._orders.popitem(last=False)
            return order

    def ready(self, q: grid_queries.GridQuery) -> bool:
        """Whether every column and order the query needs is loaded (``prepare`` loads them)."""
        with self._lock:
            names = [*q.ranges, *([] if q.sort == "clip_id" else [q.sort])]
            if any(name not in self._numeric for name in names):
                return False
            if q.sort == "clip_id" or self._numeric[q.sort] is None:
                return True
            return (q.sort, q.descending) in self._orders

    def prepare(self, con: duckdb.DuckDBPyConnection, q: grid_queries.GridQuery) -> None:
        """Load what ``q`` needs (in the background for a large catalog, ``warmer``)."""
        for name in q.ranges:
            self.numeric(con, name)
        self.order(con, q.sort, q.descending)

    def mask(self, con: duckdb.DuckDBPyConnection, q: grid_queries.GridQuery) -> np.ndarray | None | bool:
        """True per row that passes the query's filters (None: every row; False: DuckDB must answer).
        Read only: it may be a kept mask (``_equal_mask``)."""
        masks: list[np.ndarray] = []
        for name, (lo, hi) in q.ranges.items():
            col = self.numeric(con, name)
            if col is None:
                return False
            if lo is not None:
                m = col.values >= lo  # NULL (NaN here) fails
                masks.append(m | col.nan if col.nan is not None else m)  # a real NaN passes, as in DuckDB
            if hi is not None:
                masks.append(col.values <= hi)  # NULL and NaN fail
        if q.decision:
            masks.append(self._equal_mask("kept", {"kept": 1, "dropped": 0, "undecided": -1}[q.decision]))
        for name, value in (("source_id", q.source), ("reason", q.reason)):
            if value:
                masks.append(self._equal_mask(name, self.codes[name][2].get(value, -2)))
        if len(masks) <= 1:
            return masks[0] if masks else None
        mask = np.logical_and(masks[0], masks[1])  # a new array: the kept masks stay as they are
        for m in masks[2:]:
            np.logical_and(mask, m, out=mask)
        return mask

    def _equal_mask(self, name: str, code: int) -> np.ndarray:
        """Rows whose decision (``kept``) or source, reason code equals ``code``: the same for every page
        of this catalog state, so kept (a few per state: decisions, the sources and reasons asked for)."""
        key = (name, code)
        with self._lock:
            found = self._masks.get(key)
            if found is not None:
                self._masks.move_to_end(key)
        if found is None:
            found = (self.kept if name == "kept" else self.codes[name][0]) == code
            found.flags.writeable = False
            with self._lock:
                self._masks[key] = found
                while len(self._masks) > 1 and len(self._masks) * self.n > MASKS_BUDGET_BYTES:
                    self._masks.popitem(last=False)
        return found

    def page(self, con: duckdb.DuckDBPyConnection, q: grid_queries.GridQuery, scores: list[str], limit: int,
             offset: int) -> tuple[list[dict], int] | None:
        """The page's rows (what a card shows) and the capped count, or None when DuckDB must answer."""
        q.sql(scores)  # the same checks (names, decision) and errors as the SQL path
        q.order(scores)
        mask = self.mask(con, q)
        order = self.order(con, q.sort, q.descending) if mask is not False else None
        if order is None:
            return None
        need = offset + limit
        if mask is None:
            count, picked = self.n, order[offset:need]
        else:
            count = int(np.count_nonzero(mask))
            picked = _first_matches(mask, order, min(need, count), count)[offset:need]
        return self.rows(con, picked, q.sort if q.sort in scores else None), min(count, grid_queries.COUNT_CAP + 1)

    def rows_of_rowids(self, rowids: np.ndarray) -> np.ndarray:
        """These arrays' rows of clips_wide row ids read in the same catalog state."""
        return self._row_of_rowid[rowids]

    def clip_ids(self, rows: np.ndarray) -> list[str]:
        """The clip ids of these rows."""
        return self.ids.take(pa.array(self._read_at[rows], type=pa.int64())).to_pylist()

    def rows(self, con: duckdb.DuckDBPyConnection, picked: np.ndarray, sort_score: str | None) -> list[dict]:
        """A card's fields (``_card.html``: id, media type, decision, reason, the sorted score)."""
        ids = self.clip_ids(picked)
        media_codes, media_names, _ = self.codes["media_type"]
        reason_codes, reason_names, _ = self.codes["reason"]
        col = self.numeric(con, sort_score) if sort_score else None
        # each field of the page's rows as one list (indexing numpy per row and field costs ~2 us each)
        fields = zip(ids, self.kept[picked].tolist(), media_codes[picked].tolist(), reason_codes[picked].tolist(),
                     col.values[picked].tolist() if col is not None else [None] * len(ids),
                     col.null[picked].tolist() if col is not None and col.null is not None else [False] * len(ids))
        out = []
        for clip_id, kept, media, reason, value, null in fields:
            r = {"clip_id": clip_id, "kept": None if kept < 0 else bool(kept),
                 "media_type": media_names[media] if media >= 0 else None,
                 "reason": reason_names[reason] if reason >= 0 else None}
            if col is not None:
                r[sort_score] = None if null else value
            out.append(r)
        return out


def _sorted_rows(col: NumericColumn, descending: bool, ascending: np.ndarray | None = None) -> np.ndarray:
    """Rows by value (ties by row number, i.e. clip_id), NaN as the largest value, NULL last.
    Descending is derived from ``ascending`` (this column's ascending order) when given."""
    values = col.values
    nan_rows = np.flatnonzero(col.nan) if col.nan is not None else np.zeros(0, dtype=np.int64)
    null_rows = np.flatnonzero(col.null) if col.null is not None else np.zeros(0, dtype=np.int64)
    if ascending is not None:
        ranked = _reverse_keeping_ties(ascending[:len(values) - len(nan_rows) - len(null_rows)], values)
    else:
        plain = np.ones(len(values), dtype=bool)
        for m in (col.null, col.nan):
            if m is not None:
                plain &= ~m
        rows = np.flatnonzero(plain)
        ranked = rows[np.argsort(values[rows], kind="stable")]  # -0.0 == 0.0: ties stay in id order
        if descending:
            ranked = _reverse_keeping_ties(ranked, values)
    parts = (nan_rows, ranked, null_rows) if descending else (ranked, nan_rows, null_rows)
    return np.concatenate(parts).astype(np.int32)


def _reverse_keeping_ties(ranked: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``ranked`` (rows by value, ties by row) reversed, each run of equal values kept in row order."""
    n = len(ranked)
    if n == 0:
        return ranked
    rev = ranked[::-1]
    v = values[rev]
    starts_here = np.empty(n, dtype=bool)
    starts_here[0] = True
    np.not_equal(v[1:], v[:-1], out=starts_here[1:])  # -0.0 == 0.0: one run, as DuckDB ties them
    starts = np.flatnonzero(starts_here)
    ends = np.append(starts[1:], n)
    run = np.cumsum(starts_here) - 1
    out = np.empty_like(rev)
    out[starts[run] + ends[run] - 1 - np.arange(n)] = rev  # mirror each position inside its run
    return out


def _first_matches(mask: np.ndarray, order: np.ndarray, need: int, count: int) -> np.ndarray:
    """Positions in ``order`` of its first ``need`` rows that pass ``mask`` (a walk in growing chunks)."""
    if need <= 0:
        return order[:0]
    n = len(order)
    chunk = min(n, int(need * n / max(1, count) * 1.25) + 4096)  # the expected stretch, with slack
    while True:
        hits = np.flatnonzero(mask[order[:chunk]])
        if len(hits) >= need or chunk >= n:
            return order[hits]
        chunk = min(n, chunk * 4)
