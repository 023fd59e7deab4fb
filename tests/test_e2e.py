"""The spine, end to end: the demo corpus through every stage, then training on its shards."""

import math
import tarfile

import pytest

from vidcorpus.catalog.store import Catalog

pytestmark = pytest.mark.slow


def _q(demo, sql):
    with Catalog(demo["config"].catalog_path, read_only=True) as cat:
        return cat.query_dicts(sql)


def test_funnel_is_consistent_stage_to_stage(demo):
    f = {r["stage"]: r["n"] for r in demo["funnel"]}
    truth = demo["truth"]
    n_sources = len(truth["videos"]) + len(truth["images"]) + len(truth["broken"]) + (1 if truth.get("real") else 0)
    assert f["sources"] == n_sources
    assert f["failed"] == len(truth["broken"])  # only the broken file fails
    expected_shots = sum(len(v["shots"]) for v in truth["videos"]) + len(truth["images"])
    if truth.get("real"):
        expected_shots += len(truth["real"]["cuts"]) + 1
    assert f["shots"] == expected_shots
    assert f["scored"] == f["shots"]
    assert 0 < f["kept"] <= f["shots"]
    assert f["captioned"] == f["kept"]
    assert f["sharded"] == f["kept"]
    assert 0 < f["trained_on"] <= f["sharded"]
    failure = _q(demo, "SELECT stage, error_class FROM failures")
    assert failure == [{"stage": "download", "error_class": "not_media"}]


def test_every_drop_has_a_reason_and_every_kept_clip_a_caption(demo):
    dropped = _q(demo, "SELECT clip_id, reason FROM clips_wide WHERE NOT kept")
    assert all(d["reason"] for d in dropped)
    kept = _q(demo, "SELECT clip_id, caption, short_caption FROM clips_wide WHERE kept")
    assert kept and all(k["caption"] and k["short_caption"] for k in kept)


def test_every_kept_clip_has_caption_qa_scores(demo):
    kept = {r["clip_id"] for r in _q(demo, "SELECT clip_id FROM clips_wide WHERE kept")}
    qa = _q(demo, "SELECT clip_id, scorer, version, value FROM scores WHERE scorer LIKE 'caption_%'")
    for name in ("caption_clip", "caption_clip_short", "caption_degenerate"):
        assert {r["clip_id"] for r in qa if r["scorer"] == name} == kept
    assert all(-1.0 <= r["value"] <= 1.0 for r in qa) and {r["version"] for r in qa} == {"v1/p1"}


def test_catalog_rows_equal_shard_members(demo):
    shards = _q(demo, "SELECT shard_id, url, n FROM shards")
    members = _q(demo, "SELECT shard_id, clip_id FROM shard_members")
    kept = {r["clip_id"] for r in _q(demo, "SELECT clip_id FROM clips_wide WHERE kept")}
    assert {m["clip_id"] for m in members} == kept
    assert len(members) == len(kept)  # each kept clip in exactly one shard
    for s in shards:
        keys = {n.split(".", 1)[0] for n in tarfile.open(s["url"]).getnames()}
        assert keys == {m["clip_id"] for m in members if m["shard_id"] == s["shard_id"]}
        assert len(keys) == s["n"]


def test_shots_match_known_boundaries(demo):
    truth = demo["truth"]
    clips = _q(demo, "SELECT c.first_frame, c.last_frame, s.uri FROM clips c JOIN sources s USING (source_id) "
                     "WHERE c.media_type = 'video' ORDER BY s.uri, c.first_frame")
    for video in truth["videos"]:
        got = [(c["first_frame"], c["last_frame"]) for c in clips if c["uri"].endswith("/" + video["name"])]
        assert len(got) == len(video["shots"]), video["name"]
        if video["fades"]:
            (f0, f1), = video["fades"]
            assert f0 - 3 <= got[0][1] < f0 and f1 < got[1][0] <= f1 + 3  # the fade's frames leave the clips
            continue
        for (a, b), (x, y) in zip(got, video["shots"]):
            assert abs(a - x) <= 1 and abs(b - y) <= 1, (video["name"], got, video["shots"])


def test_training_ran_on_shard_samples_with_finite_loss(demo):
    training = demo["training"]
    assert training.steps == 20
    assert all(math.isfinite(x) for x in training.losses)
    trained = {r["clip_id"] for r in _q(demo, "SELECT clip_id FROM train_samples")}
    sharded = {r["clip_id"] for r in _q(demo, "SELECT clip_id FROM shard_members")}
    assert trained and trained <= sharded
    [run] = _q(demo, "SELECT steps, final_loss FROM train_runs WHERE stage = 'base'")  # the demo's refiner run aside
    assert run["steps"] == 20 and math.isfinite(run["final_loss"])


def test_rerun_adds_nothing(demo):
    from vidcorpus.jobs.curate.pipeline import run_pipeline

    tables = ("sources", "clips", "scores", "captions", "decisions", "shards", "shard_members")
    before = {t: _q(demo, f"SELECT count(*) AS n FROM {t}")[0]["n"] for t in tables}
    summary = run_pipeline(demo["config"], progress=False)
    after = {t: _q(demo, f"SELECT count(*) AS n FROM {t}")[0]["n"] for t in tables}
    assert after == before
    # only the broken file is tried again, and it fails again: one more attempt, no new row
    assert summary.shards == [] and summary.rows_committed == len(demo["truth"]["broken"])
    assert summary.sources_skipped == demo["funnel"][0]["n"] - len(demo["truth"]["broken"])
    assert _q(demo, "SELECT attempts FROM failures") == [{"attempts": 2}]


def test_demo_finishes_in_time(demo):
    assert demo["seconds"] < 300


def test_demo_trains_on_a_release_of_exactly_the_kept_clips(demo):
    import hashlib

    from vidcorpus.jobs.release import release_manifest

    manifest, _root = release_manifest(demo["config"], "demo")
    kept = {r["clip_id"] for r in _q(demo, "SELECT clip_id FROM clips_wide WHERE kept")}
    members = {r["clip_id"] for r in _q(demo, "SELECT clip_id FROM release_members WHERE name = 'demo'")}
    assert members == kept and manifest["n_clips"] == len(kept)
    for shard in manifest["shards"]:
        with open(shard["url"], "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == shard["sha256"]
    trained = {r["clip_id"] for r in _q(demo, "SELECT clip_id FROM train_samples")}
    assert trained and trained <= members
    assert _q(demo, "SELECT stage, select_sql FROM train_runs ORDER BY stage") == [
        {"stage": "base", "select_sql": "release demo where kept"},
        {"stage": "refiner", "select_sql": "release demo where kept"}]  # both stages train on the release
def test_run_records_recipe_embeddings_and_duplicate_scores(demo):
    import pyarrow.parquet as pq

    [recipe] = _q(demo, "SELECT recipe, sha256 FROM recipes")
    assert recipe["recipe"] == "demo_v1@1" and len(recipe["sha256"]) == 64
    assert {r["recipe"] for r in _q(demo, "SELECT DISTINCT recipe FROM decisions")} == {"demo_v1@1"}
    clips = {r["clip_id"] for r in _q(demo, "SELECT clip_id FROM clips")}
    index = _q(demo, "SELECT clip_id, url, dim, content_sha256 FROM embeddings")
    assert {r["clip_id"] for r in index} == clips  # every clip's embedding is stored and indexed
    for url in {r["url"] for r in index}:
        t = pq.read_table(url)
        assert set(t.column("clip_id").to_pylist()) <= clips and t.schema.field("embedding").type.list_size == index[0]["dim"]
    dup = _q(demo, "SELECT clip_id, scorer, value FROM scores WHERE scorer IN ('dup_exact', 'dup_sim')")
    assert {(r["clip_id"], r["scorer"]) for r in dup} == {(c, s) for c in clips for s in ("dup_exact", "dup_sim")}
    assert all(-1.0 <= r["value"] <= 1.0 for r in dup)


def test_demo_ends_with_an_exported_pipeline_and_a_sampled_video(demo):
    import av
    from diffusers import I2VGenXLPipeline

    from vidcorpus.catalog.schema import LATEST_VERSION
    from vidcorpus.train.checkpoint import read_state
    from vidcorpus.train.sample_log import read_samples

    pipe = I2VGenXLPipeline.from_pretrained(demo["export_dir"])
    assert type(pipe.unet).__name__ == "I2VGenXLUNet"
    with av.open(demo["sample_mp4"]) as c:
        n = sum(1 for _ in c.decode(video=0))
    assert n == demo["config"].train.num_frames
    state = read_state(demo["training"].checkpoint_dir)
    data = state["data"]
    assert data["release"] == "demo" and data["run_id"] == demo["training"].run_id
    [latest] = _q(demo, "SELECT run_id FROM runs WHERE started_at <= (SELECT min(started_at) FROM train_runs) "
                        "ORDER BY started_at DESC LIMIT 1")  # the newest pipeline run when training started
    assert data["catalog"]["schema_version"] == LATEST_VERSION and data["catalog"]["latest_run_id"] == latest["run_id"]
    assert "step_keys" not in state and state["samples"]["through_step"] == 20  # the cursor, not the history
    log = read_samples(demo["training"].run_dir)
    assert set(log["step"].to_pylist()) == set(range(20))  # the clip ids consumed, by step, in the sample log


def test_training_resumes_from_the_demo_checkpoint(demo, tmp_path):
    import shutil

    from vidcorpus.catalog.store import Catalog
    from vidcorpus.train.checkpoint import read_state
    from vidcorpus.jobs.train import run_training

    cfg = demo["config"]
    catalog = tmp_path / "catalog.duckdb"  # a copy: the session's demo catalog stays as the other tests expect
    shutil.copy(cfg.catalog_path, catalog)
    cfg = cfg.model_copy(update={"catalog": str(catalog), "train": cfg.train.model_copy(update={"steps": 23})})
    before = read_state(demo["training"].checkpoint_dir)
    summary = run_training(cfg, output=str(tmp_path / "run"), progress=False,
                           resume=demo["training"].checkpoint_dir)
    assert summary.run_id == demo["training"].run_id and summary.steps == 23
    state = read_state(summary.checkpoint_dir)
    assert state["resumed_from"] == demo["training"].checkpoint_dir
    assert before["samples"]["through_step"] == 20 and state["samples"]["through_step"] == 23
    old, new = _log_rows(demo["training"].run_dir), _log_rows(str(tmp_path / "run"))
    assert new[:len(old)] == old  # history kept (brought into the new run directory), then 3 new steps
    assert {s for s, _k in new} == set(range(23))
    with Catalog(str(catalog), read_only=True) as cat:
        [run] = cat.query_dicts("SELECT steps FROM train_runs WHERE stage = 'base'")
        recorded = cat.query_dicts("SELECT step, clip_id FROM train_samples WHERE run_id = ?", [summary.run_id])
        files = cat.query_dicts("SELECT first_step, end_step, rows FROM train_sample_files WHERE run_id = ? "
                                "ORDER BY first_step", [summary.run_id])
    assert run["steps"] == 23
    assert sorted((r["step"], r["clip_id"]) for r in recorded) == sorted(set(new))  # exact: every row once
    assert [(f["first_step"], f["end_step"]) for f in files] == [(0, 20), (20, 23)] and sum(f["rows"] for f in files) == len(new)


def _log_rows(run_dir: str) -> list[tuple[int, str]]:
    from vidcorpus.train.sample_log import read_samples

    t = read_samples(run_dir)
    return list(zip(t["step"].to_pylist(), t["clip_id"].to_pylist()))
