"""The catalog as system of record and the shard writer that hands clips to training."""

import hashlib
import tarfile

import pytest
import webdataset as wds

from vidcorpus.catalog.schema import LATEST_VERSION, MIGRATIONS
from vidcorpus.catalog.store import Catalog, CatalogError
from vidcorpus.config import load_config
from vidcorpus.ids import clip_id
from vidcorpus.media import encode_video
from vidcorpus.jobs.pack_shards import write_pending_shards
from vidcorpus.schemas import empty_row
from vidcorpus.shards.buckets import bucket_of
from vidcorpus.synth import _shapes_shot


def _clip_rows(tmp_path, n=3, kept=(True, True, False), fail_source=None):
    rows = []
    for i in range(n):
        sid = f"{i:016x}"
        path = tmp_path / f"c{i}.mp4"
        frames = _shapes_shot(10, seed=i)
        encode_video(frames, 24, str(path))
        first = tmp_path / f"c{i}.first.jpg"
        from vidcorpus.media import save_jpeg

        save_jpeg(frames[0], str(first))
        row = empty_row(source_id=sid, uri=f"https://example.com/{i}.mp4", text=f"text {i}", media_type="video",
                        width=320, height=192, fps=24.0, n_frames=10, duration_s=10 / 24,
                        clip_id=clip_id(sid, 0, 9), first_frame=0, last_frame=9, start_s=0.0, end_s=10 / 24,
                        clip_path=str(path), first_frame_path=str(first), recipe="r@1", kept=kept[i],
                        reason=None if kept[i] else "aesthetic<4.5")
        row["scores"] = [{"scorer": "aesthetic", "model": "m", "version": "1", "value": 4.0 + i}]
        row["captions"] = [{"version": "v1", "kind": "long", "text": f"caption {i}", "model": "m",
                            "prompt_version": "p1", "meta_json": "{}"}]
        if sid == fail_source:
            row.update(error_class="decode_error", error="boom", error_stage="extract")
        rows.append(row)
    return rows


def test_schema_migrates_on_open_and_readers_are_read_only(tmp_path):
    path = tmp_path / "c.duckdb"
    with pytest.raises(CatalogError, match="no catalog"):
        Catalog(path, read_only=True)
    with Catalog(path) as cat:
        assert cat.schema_version == LATEST_VERSION
    with Catalog(path) as cat:  # reopening applies nothing twice
        assert cat.con.execute("SELECT count(*) FROM schema_version").fetchall()[0][0] == len(MIGRATIONS)  # gaps allowed
    with Catalog(path, read_only=True) as ro:
        with pytest.raises(Exception):
            ro.con.execute("DELETE FROM clips")


def test_commit_is_idempotent_and_views_pivot_scores(tmp_path):
    rows = _clip_rows(tmp_path)
    with Catalog(tmp_path / "c.duckdb") as cat:
        cat.commit_results("run1", rows)
        cat.commit_results("run2", rows)  # a rerun of the same rows
        cat.mark_sources_done(r["source_id"] for r in rows)
        counts = {t: cat.con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]
                  for t in ("sources", "clips", "scores", "captions", "decisions")}
        assert counts == {"sources": 3, "clips": 3, "scores": 3, "captions": 3, "decisions": 3}
        wide = cat.query_dicts("SELECT clip_id, aesthetic, kept, reason, caption FROM clips_wide ORDER BY aesthetic")
        assert [w["aesthetic"] for w in wide] == [4.0, 5.0, 6.0]
        assert wide[2]["kept"] is False and wide[2]["reason"] == "aesthetic<4.5"
        assert cat.clip_ids_for("aesthetic >= 5 AND kept") == {rows[1]["clip_id"]}
        assert cat.done_source_ids() == {r["source_id"] for r in rows}


def test_failed_sources_are_retried_and_their_failures_cleared(tmp_path):
    bad = f"{1:016x}"
    with Catalog(tmp_path / "c.duckdb") as cat:
        rows = _clip_rows(tmp_path, fail_source=bad)
        cat.commit_results("run1", rows, failed_before={bad})
        cat.mark_sources_done({r["source_id"] for r in rows} - {bad})
        assert cat.failed_source_ids() == {bad}
        assert cat.failed_source_ids("decode_error") == {bad} and not cat.failed_source_ids("timeout")
        assert bad not in cat.done_source_ids()
        assert cat.query_dicts("SELECT error_class, n FROM failures_by_class") == [{"error_class": "decode_error", "n": 1}]
        # the rerun succeeds for that source
        fixed = _clip_rows(tmp_path)
        cat.commit_results("run2", [fixed[1]])
        cat.mark_sources_done({bad})
        assert bad in cat.done_source_ids()
        assert cat.con.execute("SELECT count(*) FROM failures").fetchall()[0][0] == 0


def test_shards_hold_every_kept_clip_once_and_match_the_catalog(tmp_path):
    cfg = load_config(None, [], workdir=str(tmp_path / "work"), **{"shards.max_samples": 1})
    rows = _clip_rows(tmp_path)
    with Catalog(cfg.catalog_path) as cat:
        cat.commit_results("run1", rows)
        written = write_pending_shards(cfg, cat, "run1", progress=False)
        assert len(written) == 2  # two kept clips, one sample per shard
        assert write_pending_shards(cfg, cat, "run2", progress=False) == []  # nothing twice
        members = cat.query_dicts("SELECT m.clip_id, s.url, s.sha256, s.bytes FROM shard_members m JOIN shards s USING (shard_id)")
    assert sorted(m["clip_id"] for m in members) == sorted(r["clip_id"] for r in rows if r["kept"])
    for m in members:
        data = open(m["url"], "rb").read()
        assert hashlib.sha256(data).hexdigest() == m["sha256"] and len(data) == m["bytes"]
        names = tarfile.open(m["url"]).getnames()
        assert sorted(names) == sorted(f"{m['clip_id']}.{e}" for e in ("mp4", "first.jpg", "json", "txt"))
        [sample] = list(wds.WebDataset(m["url"], shardshuffle=False).decode())
        assert sample["__key__"] == m["clip_id"]
        assert sample["txt"].startswith("caption ")
        assert sample["json"]["scores"][0]["scorer"] == "aesthetic"
        assert sample["json"]["source_text"] if "source_text" in sample["json"] else sample["json"]["text"]


def test_buckets_separate_media_resolution_aspect_and_length():
    assert bucket_of({"media_type": "video", "width": 1280, "height": 720, "n_frames": 100}) == "video-720p-16x9-f128"
    assert bucket_of({"media_type": "video", "width": 640, "height": 480, "n_frames": 20}) == "video-480p-4x3-f32"
    assert bucket_of({"media_type": "image", "width": 512, "height": 512}) == "image-480p-1x1"


def test_wide_view_keeps_clip_columns_when_a_score_has_the_same_name(tmp_path):
    rows = _clip_rows(tmp_path)
    for r in rows:
        r["scores"].append({"scorer": "width", "model": "technical", "version": "1", "value": 999.0})
    with Catalog(tmp_path / "c.duckdb") as cat:
        cat.commit_results("run1", rows)
        columns = [d[0] for d in cat.con.execute("SELECT * FROM clips_wide LIMIT 0").description]
        assert "aesthetic" in columns and columns.count("width") == 1
        assert not [c for c in columns if c.endswith("_1")]
        assert {r["width"] for r in cat.query_dicts("SELECT width FROM clips_wide")} == {320}


def test_a_later_keep_clears_the_earlier_drop_reason(tmp_path):
    """DuckDB's arg_max skips NULLs: the latest decision's NULL reason must still win (arg_max_null)."""
    rows = _clip_rows(tmp_path, kept=(False, False, False))
    with Catalog(tmp_path / "c.duckdb") as cat:
        cat.commit_results("run1", rows)
        cat.commit_results("run2", [dict(r, recipe="other@1", kept=True, reason=None) for r in rows])
        live = cat.query_dicts("SELECT clip_id, recipe, kept, reason FROM clips_wide ORDER BY clip_id")
        assert {(w["recipe"], w["kept"], w["reason"]) for w in live} == {("other@1", True, None)}
        cat.rebuild_wide()  # the recompute from the long tables agrees
        assert cat.query_dicts("SELECT clip_id, recipe, kept, reason FROM clips_wide ORDER BY clip_id") == live
