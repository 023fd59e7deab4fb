"""The grid answered from numpy columns (vidcorpus/serve/grid_index.py) must show exactly what
DuckDB's ORDER BY shows: the same clips in the same order, ties broken by clip id, clips without
the score last both ways, NaN above every number, the same count; and what it cannot answer (a free
WHERE, an explicit clip set, a NaN bound, a slider on text) goes to DuckDB."""

from __future__ import annotations

import math
import random

import duckdb
import pytest

from vidcorpus.serve import grid_queries
from vidcorpus.serve.grid_index import GridColumns, answerable, grid_columns

SCORES = ["aesthetic", "motion", "ocr"]


def _catalog() -> duckdb.DuckDBPyConnection:
    """A clips_wide with ties, NULLs, NaN, +-inf, -0.0, integer columns, and holes in its row ids."""
    con = duckdb.connect()
    con.execute("CREATE TABLE clips_wide (clip_id VARCHAR PRIMARY KEY, source_id VARCHAR, media_type VARCHAR, "
                "kept BOOLEAN, reason VARCHAR, duration_s DOUBLE, width INTEGER, aesthetic DOUBLE, motion DOUBLE, "
                "ocr DOUBLE, caption VARCHAR)")
    rnd = random.Random(11)
    specials = [None, None, float("nan"), float("inf"), float("-inf"), -0.0, 0.0]
    rows = []
    for i in rnd.sample(range(900), 900):  # inserted out of id order
        kept = rnd.choice([True, True, False, None])
        rows.append((f"{rnd.choice('abc')}{i:04d}-x", f"s{i % 9}", rnd.choice(["video", "image"]), kept,
                     None if kept is not False else rnd.choice(["aesthetic<4", "motion<1"]),
                     rnd.choice([1.0, 2.0, 2.5, None]), rnd.choice([640, 1280, None]),
                     rnd.choice([1.0, 2.0, 3.0, 4.5]) if rnd.random() < 0.8 else rnd.choice(specials),
                     rnd.choice([0.5, 1.5, None]), rnd.choice([0.0, 0.25, 1.0, float("nan")]), "a caption"))
    con.executemany("INSERT INTO clips_wide VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    con.execute("DELETE FROM clips_wide WHERE clip_id LIKE 'b01%'")  # row ids with holes
    for name in ("height", "recipe", "short_caption", "clip_path", "first_frame_path", "shard_id", "uri"):
        con.execute(f"ALTER TABLE clips_wide ADD COLUMN {name} VARCHAR")  # the rest of the grid's columns
    return con


@pytest.fixture(scope="module")
def catalog() -> tuple[duckdb.DuckDBPyConnection, GridColumns]:
    con = _catalog()
    return con, grid_columns(con)


def _sql_page(con, q: grid_queries.GridQuery, limit: int, offset: int) -> tuple[list[dict], int]:
    where, params = q.sql(SCORES)
    ids = [r[0] for r in con.execute(f"SELECT clip_id FROM clips_wide WHERE {where} ORDER BY {q.order(SCORES)} "
                                     "LIMIT ? OFFSET ?", [*params, limit, offset]).fetchall()]
    return grid_queries.rows_by_id(con, ids, SCORES), grid_queries.capped_count(con, where, params)


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


QUERIES = [
    {},
    {"decision": "kept"},
    {"decision": "dropped", "reason": "motion<1"},
    {"decision": "undecided"},
    {"source": "s3"},
    {"source": "s-none"},
    {"reason": "no such reason"},
    {"ranges": {"aesthetic": (2.0, None)}},
    {"ranges": {"aesthetic": (None, 3.0)}},
    {"ranges": {"aesthetic": (-0.0, 4.5), "motion": (1.0, None)}},
    {"ranges": {"aesthetic": (float("-inf"), float("inf"))}},
    {"ranges": {"ocr": (0.25, None)}, "decision": "kept"},
    {"ranges": {"width": (700, None)}},
    {"ranges": {"duration_s": (None, 2.0)}, "source": "s1"},
]


@pytest.mark.parametrize("filters", QUERIES, ids=[str(q) for q in QUERIES])
def test_every_sort_and_page_equals_duckdbs_order_by(filters, catalog):
    con, columns = catalog
    for sort in ("aesthetic", "motion", "ocr", "duration_s", "width", "clip_id"):
        for descending in (False, True):
            q = grid_queries.GridQuery(sort=sort, descending=descending, **filters)
            assert answerable(q)
            for limit, offset in ((48, 0), (7, 300), (100, 780), (5, 5000)):
                got = columns.page(con, q, SCORES, limit, offset)
                want_rows, want_total = _sql_page(con, q, limit, offset)
                assert got is not None
                rows, total = got
                where = (filters, sort, descending, limit, offset)
                assert [r["clip_id"] for r in rows] == [r["clip_id"] for r in want_rows], where
                assert total == want_total, where
                for r, w in zip(rows, want_rows):  # what a card shows
                    assert (r["kept"], r["reason"], r["media_type"]) == (w["kept"], w["reason"], w["media_type"])
                    if sort in SCORES:
                        assert _same(r[sort], w[sort]), (where, r, w)


def test_the_kept_filter_masks_are_shared_by_later_queries_and_never_changed_by_one():
    """A decision, source or reason mask is kept per catalog state and reused; a query that combines
    it with other filters must not change it for the next query (every answer equals DuckDB's)."""
    con = _catalog()
    columns = grid_columns(con)
    sequence = [{"decision": "kept", "source": "s1"}, {"decision": "kept"}, {"source": "s1"},
                {"decision": "kept", "ranges": {"motion": (1.0, None)}, "source": "s1"}, {"decision": "kept"},
                {"source": "s1", "reason": "motion<1", "decision": "dropped"}, {"decision": "dropped"},
                {"reason": "motion<1"}, {"source": "s1"}]
    for filters in sequence * 2:
        q = grid_queries.GridQuery(sort="aesthetic", **filters)
        rows, total = columns.page(con, q, SCORES, 1000, 0)
        want_rows, want_total = _sql_page(con, q, 1000, 0)
        assert ([r["clip_id"] for r in rows], total) == ([r["clip_id"] for r in want_rows], want_total), filters


def test_the_count_is_capped_like_the_sql_count(monkeypatch):
    monkeypatch.setattr(grid_queries, "COUNT_CAP", 100)
    con = _catalog()
    q = grid_queries.GridQuery(sort="aesthetic", decision="kept")
    assert grid_columns(con).page(con, q, SCORES, 48, 0)[1] == _sql_page(con, q, 48, 0)[1] == 101


def test_what_the_columns_cannot_answer_goes_to_duckdb():
    con = _catalog()
    columns = grid_columns(con)
    assert not answerable(grid_queries.GridQuery(where="(kept AND motion > 1)"))
    assert not answerable(grid_queries.GridQuery(clip_ids=["a0001-x"]))
    assert not answerable(grid_queries.GridQuery(ranges={"aesthetic": (float("nan"), None)}))
    # a slider on a text column: DuckDB answers (and refuses it there, as before)
    assert columns.page(con, grid_queries.GridQuery(ranges={"clip_id": (1.0, None)}), SCORES, 48, 0) is None
    with pytest.raises(ValueError):  # unknown names are refused with the SQL path's message
        columns.page(con, grid_queries.GridQuery(sort="caption"), SCORES, 48, 0)
    with pytest.raises(ValueError):
        columns.page(con, grid_queries.GridQuery(ranges={"nope": (1.0, None)}), SCORES, 48, 0)


def test_an_empty_catalog_has_an_empty_grid():
    con = duckdb.connect()
    con.execute("CREATE TABLE clips_wide (clip_id VARCHAR, source_id VARCHAR, media_type VARCHAR, kept BOOLEAN, "
                "reason VARCHAR, aesthetic DOUBLE)")
    columns = grid_columns(con)
    assert columns.page(con, grid_queries.GridQuery(sort="aesthetic", decision="kept"), ["aesthetic"], 48, 0) == ([], 0)


def test_a_view_without_row_ids_leaves_the_grid_to_duckdb(tmp_path):
    """A snapshot's clips_wide is a view over Parquet: no row ids to align column reads by."""
    con = _catalog()
    con.execute(f"COPY clips_wide TO '{tmp_path / 'w.parquet'}'")
    view = duckdb.connect()
    view.execute(f"CREATE VIEW clips_wide AS SELECT * FROM read_parquet('{tmp_path / 'w.parquet'}')")
    assert grid_columns(view) is None
