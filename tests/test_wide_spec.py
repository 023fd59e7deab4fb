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
        # a clip that only ever had a score: its flags are FALSE, not NULL, in the table and in the rebuild
        cat.record_training("t1", "base", "kept", 1, 0.1, str(tmp_path / "ck"), [], "{}", dt.datetime(2026, 1, 1),
                            [(0, "s1-a")])
        row = cat.query_dicts("SELECT scored, captioned, trained, kept, caption FROM clips_wide")
        assert row == [{"scored": True, "captioned": False, "trained": True, "kept": True, "caption": None}]
        assert cat.verify(deep=True) == []
