"""A whole run on S3 (a moto server on loopback): inputs, staging, clips, shards and a release there.

Only the catalog is a local file. Ray is restarted first so that its workers inherit the AWS_*
variables that point at the moto server (on a real cluster the nodes carry their credentials).
"""

from __future__ import annotations

import pytest

from vidcorpus.catalog.store import Catalog

pytestmark = pytest.mark.slow


def test_full_run_with_inputs_staging_and_shards_on_s3(tmp_path, s3, model_cache):
    import ray

    from vidcorpus.config import load_config
    from vidcorpus.jobs.release import create_release, release_manifest
    from vidcorpus.jobs.curate.pipeline import run_pipeline
    from vidcorpus.shard_reader import sample_pipeline, specs_from_manifest
    from vidcorpus.synth import make_image, make_video

    local = tmp_path / "media"
    local.mkdir()
    videos = [make_video(i, local) for i in range(2)]
    image, _text = make_image(0, local)
    for path in [v.path for v in videos] + [image]:
        s3.put(path, f"bucket/raw/{path.rsplit('/', 1)[-1]}")

    ray.shutdown()
    cfg = load_config(None, ["ray.num_cpus=2", "shards.max_samples=4"], workdir="s3://bucket/corpus",
                      catalog=str(tmp_path / "catalog.duckdb"), inputs=["s3://bucket/raw/"],
                      **{"models.preset": "tiny", "models.cache_dir": model_cache, "filters.recipe": "demo_v1"})
    try:
        summary = run_pipeline(cfg, progress=False)
        again = run_pipeline(cfg, progress=False)
    finally:
        ray.shutdown()
    assert summary.failures == 0 and summary.sources_seen == 3
    assert again.sources_skipped == 3 and again.rows_committed == 0 and again.shards == []

    with Catalog(cfg.catalog_path, read_only=True) as cat:
        sources = cat.query_dicts("SELECT uri, source_path, status FROM sources")
        clips = cat.query_dicts("SELECT clip_id, clip_path, first_frame_path, kept FROM clips_wide")
        shards = cat.query_dicts("SELECT url, sha256, n FROM shards")
    assert {s["status"] for s in sources} == {"done"}
    assert all(s["uri"].startswith("s3://bucket/raw/") for s in sources)
    assert all(s["source_path"].startswith("s3://bucket/corpus/staging/") for s in sources)
    assert len(clips) == 1 + sum(len(v.shots) for v in videos)  # every shot and the image became a clip
    # only kept clips are encoded (filter before you encode); every clip has its first-frame JPEG there
    assert all(c["clip_path"].startswith("s3://bucket/corpus/") for c in clips if c["kept"])
    assert all(c["clip_path"] is None for c in clips if not c["kept"])
    assert all(c["first_frame_path"].startswith("s3://bucket/corpus/") for c in clips)
    assert shards and all(s["url"].startswith("s3://bucket/corpus/shards/") for s in shards)
    for s in shards:
        assert s3.exists(s["url"].removeprefix("s3://"))
    assert not list(tmp_path.glob("**/*.tar"))  # nothing landed on the local disk but the catalog

    release = create_release(cfg, "s3-demo", "demo_v1", progress=False)
    manifest, _root = release_manifest(cfg, "s3-demo")
    assert release.manifest_url.startswith("s3://bucket/corpus/releases/s3-demo/")
    streamed = sorted(s["__key__"] for s in sample_pipeline(specs_from_manifest(manifest), split=False))
    assert streamed == sorted(c["clip_id"] for c in clips if c["kept"])

    # the trainer streams the release from S3 (checksums from the manifest) and checkpoints to S3
    import math

    from vidcorpus.jobs.train import run_training

    tcfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"release": "s3-demo", "steps": 2})})
    trained = run_training(tcfg, progress=False)
    assert trained.steps == 2 and all(math.isfinite(x) for x in trained.losses)
    assert trained.checkpoint_dir.startswith("s3://bucket/corpus/train/")
    assert s3.ls(trained.checkpoint_dir.removeprefix("s3://"))
    # train_samples and the summary are read by DuckDB from the sample log's parts on S3
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        [n] = cat.query_dicts("SELECT count(*) AS rows, count(DISTINCT clip_id) AS clips, min(step) AS first, "
                              "max(step) AS last FROM train_samples WHERE run_id = ?", [trained.run_id])
    assert len(trained.losses) == 2 and n["rows"] > 0 and (n["first"], n["last"]) == (0, 1)
    assert n["clips"] == trained.distinct_clips > 0
