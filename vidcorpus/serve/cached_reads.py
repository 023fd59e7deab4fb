"""The grid's and the clip page's catalog reads, each done once per catalog state where it can be.

At a million clips the expensive part of a grid page was ordering every matching clip (a top-N
over the whole table, ~30 ms of CPU). The grid's standard filters and sorts (score sliders,
decision, source, drop reason, sort by any score) are now answered from numpy columns read once per
catalog state (``grid_index``: a few ms, no catalog read). A free SQL ``WHERE`` or an explicit clip
set still goes to DuckDB: the first ``ORDER_DEPTH`` ids of each such query's order are kept
(``StampedCache``) and a later page of it is a slice. The filter bar's choices, the score columns,
the table names, the parsed recipe in force, each source's timeline and rendered grid and clip
pages are likewise kept per catalog state. Everything is keyed by ``CatalogAccess.stamp``, so a
commit (a label, a job's) invalidates it all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable

import duckdb
from markupsafe import Markup

from vidcorpus.recipe_model import Recipe
from vidcorpus.serve import labels as labels_mod
from vidcorpus.serve import grid_queries
from vidcorpus.serve.cache import StampedCache
from vidcorpus.serve.clip_rows import ClipRows
from vidcorpus.serve.decision_history import DecisionHistory
from vidcorpus.serve.grid_index import GridColumns, answerable, grid_columns
from vidcorpus.serve.timelines import SourceTimelines
from vidcorpus.serve.warmer import SYNC_MAX_CLIPS, Warmer

ORDER_DEPTH = 2400
"""Ids kept per grid query: 50 pages of 48 (deeper pages are ordered per request)."""
ID_SEP = "\x1f"  # the ids of one order, kept as one string (a list of 2400 str objects is 3x larger)


@dataclass(frozen=True)
class CatalogFacts:
    """What every page needs to know about the catalog's shape, read once per catalog state."""

    scores: list[str]
    tables: set[str]
    recipe: Recipe | None
    label_counts: dict[str, int]


class CachedReads:
    """The server's caches (one set per app), all keyed by the catalog's stamp."""

    def __init__(self, warmer: Warmer | None = None) -> None:
        self.warmer = warmer  # loads a large catalog's grid columns in the background (None: in the request)
        self.facts_cache = StampedCache(max_entries=8)
        self.option_lists = StampedCache(max_entries=64)  # the filter bar's <option>s per choice
        # one string per query (~80 kB at ORDER_DEPTH ids): room for the queries people page through
        # beside one-off slider values, which would push them out of a smaller cache
        self.orders = StampedCache(max_entries=512)
        self.pages = StampedCache(max_entries=256)      # rendered pages, ~60 kB each
        self.clip_pages = StampedCache(max_entries=512)  # rendered clip pages, ~10 to 50 kB each
        self.columns = StampedCache(max_entries=3)      # the grid's columns (grid_index), timelines, decisions
        self.timelines = StampedCache(max_entries=1024)  # per source: shared by its clips' pages

    def facts(self, con: duckdb.DuckDBPyConnection, stamp: Hashable) -> CatalogFacts:
        def read() -> CatalogFacts:
            return CatalogFacts(scores=grid_queries.score_columns(con), tables=grid_queries.tables(con),
                                recipe=grid_queries.recorded_recipe(con), label_counts=labels_mod.label_counts(con))

        return self.facts_cache.get(stamp, "facts", read)[0]

    def facets(self, con: duckdb.DuckDBPyConnection, stamp: Hashable, scores: list[str]) -> dict:
        """The filter bar's choices (sources, reasons, score ranges): a scan of the whole table."""
        return self.facts_cache.get(stamp, ("facets", tuple(scores)), lambda: grid_queries.facets(con, scores))[0]

    def options(self, stamp: Hashable, name: str, values: list[str], selected: str) -> Markup:
        """A filter's ``<option>`` list (up to 200 sources), escaped once per catalog state and choice."""
        def build() -> Markup:
            return Markup("").join(Markup('<option value="{0}" {1}>{0}</option>').format(
                v, "selected" if v == selected else "") for v in values)

        return self.option_lists.get(stamp, (name, selected), build)[0]

    def timeline(self, con: duckdb.DuckDBPyConnection, stamp: Hashable, source_id: str, have: set[str]) -> dict:
        """Where every frame of a source went (the clip page's timeline): from memory once the grid's
        columns and ``SourceTimelines`` are loaded (the latter in the background), else three probes
        whose answer is kept per source."""
        timelines = self.source_timelines(stamp, have)
        answer = timelines.timeline(con, source_id) if timelines is not None else None
        if answer is not None:
            return answer
        return self.timelines.get(stamp, source_id, lambda: grid_queries.timeline(con, source_id, have))[0]

    def source_timelines(self, stamp: Hashable, have: set[str]) -> SourceTimelines | None:
        """This state's ``SourceTimelines`` if loaded (else None: see ``_loaded``)."""
        return self._loaded(stamp, "timelines", lambda c, columns: SourceTimelines(c, columns, have))

    def decisions(self, con: duckdb.DuckDBPyConnection, stamp: Hashable, clip_id: str) -> list[dict]:
        """The clip's decision history: from memory once loaded (``decision_history``), else a probe."""
        history = self._loaded(stamp, "decisions", DecisionHistory)
        found = history.of(clip_id) if history is not None else None
        return found if found is not None else grid_queries.clip_decisions(con, clip_id)

    def _loaded(self, stamp: Hashable, key: str, build: Callable[[duckdb.DuckDBPyConnection, GridColumns], Any]):
        """What ``build`` makes from this state's grid columns, if made; else None, and it is made in
        the background once the columns are loaded (no page waits for it). A build that fails leaves
        ``False`` (the SQL answers for this state; no build again)."""
        loaded = self.columns.peek(stamp, key)
        if loaded is not None or self.warmer is None:
            return loaded or None
        columns = self.columns.peek(stamp, "grid")
        if columns is not None:
            def load(c: duckdb.DuckDBPyConnection) -> None:
                def make():
                    try:
                        return build(c, columns)
                    except Exception:  # noqa: BLE001 - e.g. no memory: the probes answer, as before
                        return False

                self.columns.get(stamp, key, make)

            self.warmer.want(stamp, (key, stamp), load)
        return None

    def clip_rows(self, con: duckdb.DuckDBPyConnection, stamp: Hashable, have: set[str]) -> ClipRows:
        """This state's labels and shards by key (``clip_rows``)."""
        return self.facts_cache.get(stamp, "clip_rows", lambda: ClipRows(con, have))[0]

    def grid(self, con: duckdb.DuckDBPyConnection, stamp: Hashable, q: grid_queries.GridQuery,
             scores: list[str]) -> tuple[list[dict], int, str]:
        """One page of clips, how many match (capped as ``grid_queries.grid``), and how it was made:
        ``index`` (from the columns in memory), ``order`` (a slice of a known order), ``miss`` (read)."""
        limit = max(1, min(grid_queries.MAX_PER_PAGE, q.per_page))
        offset = (max(1, q.page) - 1) * limit
        if answerable(q) and self.warmer is not None and self._large(con, stamp):
            answer = self._grid_warm(con, stamp, q, scores, limit, offset)
            if answer is not None:
                return answer
        elif answerable(q):
            columns, known = self.columns.get(stamp, "grid", lambda: grid_columns(con))
            loads = columns.loads if columns is not None else 0
            answer = columns.page(con, q, scores, limit, offset) if columns is not None else None
            if answer is not None:
                return *answer, ("index" if known and columns.loads == loads else "miss")
        return self._grid_sql(con, stamp, q, scores, limit, offset)

    def _large(self, con: duckdb.DuckDBPyConnection, stamp: Hashable) -> bool:
        count, _ = self.facts_cache.get(stamp, "clips",
                                        lambda: con.execute("SELECT count(*) FROM clips_wide").fetchall()[0][0])
        return count > SYNC_MAX_CLIPS

    def _grid_warm(self, con: duckdb.DuckDBPyConnection, stamp: Hashable, q: grid_queries.GridQuery, scores: list[str],
                   limit: int, offset: int) -> tuple[list[dict], int, str] | None:
        """From memory when the query's columns are loaded; else None (DuckDB answers) and they load."""
        q.sql(scores)  # names checked before anything is loaded for them
        q.order(scores)
        columns = self.columns.peek(stamp, "grid")
        if columns is None:
            self.warmer.want(stamp, ("grid", stamp), lambda c: self.columns.get(stamp, "grid", lambda: grid_columns(c)))
            return None
        if not columns.ready(q):
            key = ("prepare", stamp, tuple(sorted(q.ranges)), q.sort, q.descending)
            self.warmer.want(stamp, key, lambda c: columns.prepare(c, q))
            return None
        answer = columns.page(con, q, scores, limit, offset)
        return None if answer is None else (*answer, "index")

    def _grid_sql(self, con: duckdb.DuckDBPyConnection, stamp: Hashable, q: grid_queries.GridQuery, scores: list[str],
                  limit: int, offset: int) -> tuple[list[dict], int, str]:
        """The grid in DuckDB (a free WHERE, an explicit clip set): the first ``ORDER_DEPTH`` ids of each
        query's order are kept, so a later page of it is a slice."""
        where, params = q.sql(scores)
        order = q.order(scores)
        if offset + limit > ORDER_DEPTH:
            rows, total = grid_queries.grid(con, q, scores)
            return rows, total, "miss"
        key = (where, _hashable(params), order)
        joined, hit = self.orders.get(stamp, ("order", key),
                                      lambda: ID_SEP.join(grid_queries.ordered_ids(con, q, scores, ORDER_DEPTH, 0)))
        ids = joined.split(ID_SEP) if joined else []
        if len(ids) < ORDER_DEPTH:
            total = len(ids)
        else:
            total = self.orders.get(stamp, ("count", key), lambda: grid_queries.capped_count(con, where, params))[0]
        return grid_queries.rows_by_id(con, ids[offset:offset + limit], scores), total, ("order" if hit else "miss")


def _hashable(params: list) -> tuple:
    return tuple(tuple(p) if isinstance(p, list) else p for p in params)
