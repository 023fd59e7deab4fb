"""clips_wide has one definition (catalog/wide_spec.py, issue 24): the table the driver maintains
write by write equals a full rebuild from the long tables, row for row and column for column, after
the commands a user runs; and every column it has is defined there."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from test_corpus_state import q, vc, ws  # noqa: F401  (ws: a copy of the session's demo catalog)

from vidcorpus.catalog import wide_spec
from vidcorpus.catalog.schema import CLIP_COLUMNS, wide_view_sql
from vidcorpus.catalog.store import Catalog
from vidcorpus.jobs.report.scope import load_report_data


def _stored_and_rebuilt(path: str) -> tuple[list[str], list[str], list[dict], list[dict]]:
    """(clips_wide's columns, the rebuild's columns, the stored rows, the rebuilt rows), by clip id."""
    with Catalog(path, read_only=True) as cat:
        scorers = [r[0] for r in cat.con.execute("SELECT DISTINCT scorer FROM scores").fetchall()]
        stored = cat.query("SELECT * FROM clips_wide ORDER BY clip_id")
        rebuilt = cat.query(f"SELECT * FROM ({wide_view_sql(scorers)}) ORDER BY clip_id")
        return stored.column_names, rebuilt.column_names, stored.to_pylist(), rebuilt.to_pylist()


def test_maintained_clips_wide_equals_a_full_rebuild_after_run_redecide_caption_shard_release_train(ws):  # noqa: F811
    # the demo catalog was written by run, caption, shards and train; then a re-decision that keeps
    # more clips, sync (captions, clip files, shards of the newly kept), a release, a training run,
    # a stricter re-decision and dedup
    vc(ws, "run", ws.inputs, "--no-progress")
    vc(ws, "filter", "apply", ws.lenient)
    vc(ws, "sync", "--no-progress")
    vc(ws, "release", "create", "wide-check")
    vc(ws, "train", "--steps", "1", "--no-progress", "-o", str(ws.tmp / "train"))
    vc(ws, "filter", "apply", ws.strict)
    vc(ws, "filter", "dedup")

    stored_cols, rebuilt_cols, stored, rebuilt = _stored_and_rebuilt(ws.catalog)
    assert sorted(stored_cols) == sorted(rebuilt_cols)  # no column only one side has
    assert len(stored) == len(rebuilt) > 0
    for mine, fresh in zip(stored, rebuilt):
        assert mine == fresh, {k: (mine[k], fresh.get(k)) for k in mine if mine[k] != fresh.get(k)}

    # the comparison is not vacuous: every column holds a value somewhere, and what each derived
    # column is about happened (several recipes decided each clip, shards, training, short captions)
    empty = [c for c in stored_cols if all(r[c] is None for r in stored)]
    assert empty == []
    assert {r["recipe"] for r in stored} == {"strict_v1@1"}
    assert len({r["recipe"] for r in q(ws, "SELECT DISTINCT recipe FROM decisions")}) >= 3
    for flag in ("kept", "captioned", "trained"):
        assert {r[flag] for r in stored} == {True, False}, flag
    assert any(r["shard_url"] and r["short_caption"] for r in stored)


def test_every_clips_wide_column_is_a_clip_column_a_scorer_or_defined_in_the_spec(tmp_path):
    with Catalog(tmp_path / "c.duckdb") as cat:
        now = dt.datetime(2026, 1, 1, 12)
        cat.commit_fragments("r1", {
            "sources": pa.table({"source_id": ["s1"], "uri": ["https://a.example.com/1.mp4"], "status": ["done"]}),
            "clips": pa.table({"clip_id": ["s1-a"], "source_id": ["s1"], "duration_s": [2.0]}),
            "scores": pa.table({"clip_id": ["s1-a"], "scorer": ["aesthetic"], "model": ["m"], "version": ["1"],
                                "value": [5.0], "written_at": [now]}),
            "decisions": pa.table({"clip_id": ["s1-a"], "recipe": ["r@1"], "kept": [True], "reason": pa.array([None], pa.string()),
                                   "decided_at": [now]})})
        wide = [r[0] for r in cat.con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'clips_wide'").fetchall()]
        clips = {r[0] for r in cat.con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'clips'").fetchall()}
        derived = set(wide) - clips - {"aesthetic"}
        assert derived == set(wide_spec.FIXED_NAMES)
        assert set(wide) - {"aesthetic"} <= CLIP_COLUMNS  # a scorer of a derived column's name stays in the long table
        # a clip with only a score and a decision: its other flags are FALSE, not NULL, in the table
        # and in the rebuild; training sets its flag
        flags = "SELECT scored, captioned, trained, kept, caption FROM clips_wide"
        assert cat.query_dicts(flags) == [{"scored": True, "captioned": False, "trained": False, "kept": True,
                                           "caption": None}]
        assert cat.verify(deep=True) == []
        cat.record_training("t1", "base", "kept", 1, 0.1, str(tmp_path / "ck"), [], "{}", dt.datetime(2026, 1, 1),
                            [(0, "s1-a")])
        assert cat.query_dicts(flags) == [{"scored": True, "captioned": False, "trained": True, "kept": True, "caption": None}]
        assert cat.verify(deep=True) == []


def test_the_report_reads_a_scorer_named_like_a_clip_column_as_the_pivot_would(tmp_path):
    t0, t1 = dt.datetime(2026, 1, 1), dt.datetime(2026, 1, 2)
    with Catalog(tmp_path / "c.duckdb") as cat:
        cat.commit_fragments("r1", {
            "sources": pa.table({"source_id": ["s1"], "uri": ["https://a.example.com/1.mp4"], "status": ["done"]}),
            "clips": pa.table({"clip_id": ["s1-a", "s1-b"], "source_id": ["s1", "s1"], "duration_s": [2.0, 3.0]}),
            # "width" is a clip column: that scorer stays in the long table, the newest value counts
            "scores": pa.table({"clip_id": ["s1-a", "s1-a", "s1-b"], "scorer": ["width", "width", "aesthetic"],
                                "model": ["m"] * 3, "version": ["2", "1", "1"], "value": [7.0, 3.0, 5.0],
                                "written_at": [t1, t0, t0]})})
        assert "width" not in [c for c in cat.query("SELECT * FROM clips_wide LIMIT 0").column_names
                               if c not in CLIP_COLUMNS]
        data = load_report_data(cat)
        assert set(data.scores) == {"width", "aesthetic"}
        rows = data.rows(f"SELECT clip_id, {data.scores['width']} AS w, {data.scores['aesthetic']} AS a "
                         "FROM report_clips ORDER BY clip_id")
        assert rows == [{"clip_id": "s1-a", "w": 7.0, "a": None}, {"clip_id": "s1-b", "w": None, "a": 5.0}]
