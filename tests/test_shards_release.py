"""Shards a trainer can trust: atomic publish, releases with manifests, verified reading, latent cache."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from test_catalog_shards import _clip_rows
from vidcorpus.catalog.store import Catalog
from vidcorpus.config import load_config
from vidcorpus.jobs.release import create_release, diff_releases, release_manifest
from vidcorpus.jobs.pack_shards import write_pending_shards
from vidcorpus.shard_reader import ShardChecksumError, sample_pipeline, specs_from_manifest
from vidcorpus.shards.release_files import ReleaseError, read_release_clips
from vidcorpus.shards.writer import stream_tar


def _decided(rows, recipe, keep):
    """The same rows decided by another recipe: kept where keep(row) holds."""
    out = []
    for r in rows:
        ok = keep(r)
        out.append(dict(r, recipe=recipe, kept=ok, reason=None if ok else "aesthetic<6"))
    return out


def _cfg(tmp_path, workdir=None, **sets):
    overrides = {"shards.max_samples": 2, **sets}
    return load_config(None, [f"{k}={v}" for k, v in overrides.items()],
                       workdir=workdir or str(tmp_path / "work"), catalog=str(tmp_path / "catalog.duckdb"))


def _keys(specs, keys=None):
    return sorted(s["__key__"] for s in sample_pipeline(specs, keys=keys, split=False))


def test_release_reuses_whole_shards_packs_the_rest_and_reads_back(tmp_path):
    cfg = _cfg(tmp_path)
    rows = _clip_rows(tmp_path, n=5, kept=(True, True, True, True, False))  # aesthetic = 4 + i
    with Catalog(cfg.catalog_path) as cat:
        cat.commit_results("run1", rows)
        pipeline_shards = write_pending_shards(cfg, cat, "run1", progress=False)
    assert [m["n"] for m in pipeline_shards] == [2, 2]  # clips 0,1 | 2,3

    # aesthetic >= 5 keeps clips 1..3: shard {2,3} is reused whole, clip 1 is packed anew
    s = create_release(cfg, "rel1", "r", select="aesthetic >= 5", progress=False)
    assert (s.n_clips, s.reused_shards, s.new_shards) == (3, 1, 1)
    manifest, root = release_manifest(cfg, "rel1")
    wanted = sorted(r["clip_id"] for r in rows[1:4])
    assert manifest["recipe"] == "r@1" and manifest["n_clips"] == 3 and manifest["n_shards"] == 2
    assert sum(b["samples"] for b in manifest["buckets"].values()) == 3
    assert manifest["score_histograms"]["aesthetic"]["n"] == 3
    assert sum(manifest["score_histograms"]["aesthetic"]["counts"]) == 3
    snapshot = read_release_clips(root)
    assert sorted(snapshot.column("clip_id").to_pylist()) == wanted
    assert set(snapshot.column("shard_id").to_pylist()) == {sh["shard_id"] for sh in manifest["shards"]}
    # streamed back through checksum verification: exactly the release's clips, each once
    assert _keys(specs_from_manifest(manifest)) == wanted
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        assert cat.release_clip_ids("rel1") == set(wanted)
        assert cat.release("rel1")["n_shards"] == 2
        # the new shard is an ordinary catalog shard (verify and `shards list` see it)
        assert cat.con.execute("SELECT count(*) FROM shards").fetchall()[0][0] == 3

    with pytest.raises(ReleaseError, match="immutable"):
        create_release(cfg, "rel1", "r", progress=False)
    with pytest.raises(ReleaseError, match="no clip has a decision under recipe 'nope'"):
        create_release(cfg, "rel2", "nope", progress=False)
    with pytest.raises(ReleaseError, match="not a valid predicate"):
        create_release(cfg, "rel2", "r", select="no_such_column > 1", progress=False)

    # the trainer's selection of a release: its shards with their manifest checksums, its clips only
    from vidcorpus.jobs.shard_selection import select_training_shards

    specs, keys, what = select_training_shards(cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"release": "rel1", "select": "aesthetic >= 6"})}))
    assert {sp.sha256 for sp in specs} == {sh["sha256"] for sh in manifest["shards"]}
    assert keys == {rows[2]["clip_id"], rows[3]["clip_id"]} and "rel1" in what


def test_release_diff_says_what_changed_and_why(tmp_path):
    cfg = _cfg(tmp_path)
    rows = _clip_rows(tmp_path, n=4, kept=(True, True, True, False))
    with Catalog(cfg.catalog_path) as cat:
        cat.commit_results("run1", rows)
        cat.commit_results("run1", _decided(rows, "strict@1", lambda r: r["scores"][0]["value"] >= 6))
    create_release(cfg, "base", "r@1", progress=False)
    time.sleep(0.01)
    (tmp_path / "x").mkdir()
    extra = _clip_rows(tmp_path / "x", n=1, kept=(True,))
    extra[0].update(source_id="f" * 16, clip_id="f" * 16 + "-0000000-0000009")
    with Catalog(cfg.catalog_path) as cat:  # a clip ingested after 'base', kept by both recipes
        cat.commit_results("run2", extra)
        cat.commit_results("run2", _decided(extra, "strict@1", lambda r: True))
    create_release(cfg, "strict", "strict", progress=False)

    d = diff_releases(cfg, "base", "strict")
    # r@1 kept clips 0,1,2 (aesthetic 4,5,6); strict@1 keeps aesthetic >= 6: clips 2, 3 and the new one
    assert d.dropped == {rows[0]["clip_id"]: "strict@1 drops it: aesthetic<6",
                         rows[1]["clip_id"]: "strict@1 drops it: aesthetic<6"}
    assert d.added[rows[3]["clip_id"]] == "r@1 drops it: aesthetic<4.5"
    assert d.added[extra[0]["clip_id"]].startswith("new since base") and len(d.added) == 2
    assert d.kept == 1
    summary = {(r["change"], r["why"]): r["clips"] for r in d.summary()}
    assert summary[("dropped", "strict@1 drops it: aesthetic<6")] == 2

    from typer.testing import CliRunner

    from vidcorpus.cli.app import app

    out = CliRunner().invoke(app, ["release", "diff", "base", "strict", "--catalog", cfg.catalog_path,
                                   "--workdir", cfg.workdir, "--format", "json"])
    assert out.exit_code == 0, out.output
    assert {r["clip_id"] for r in json.loads(out.output) if r["change"] == "dropped"} == {
        rows[0]["clip_id"], rows[1]["clip_id"]}
    where = ["--catalog", cfg.catalog_path, "--workdir", cfg.workdir]
    again = CliRunner().invoke(app, ["release", "create", "base", "--recipe", "r", *where])
    assert again.exit_code == 2 and "immutable" in again.output
    listing = CliRunner().invoke(app, ["release", "list", *where])
    assert listing.exit_code == 0 and "base" in listing.output and "strict" in listing.output


def test_tampered_shard_is_refused_before_any_sample_is_used(tmp_path):
    cfg = _cfg(tmp_path)
    rows = _clip_rows(tmp_path, n=4, kept=(True,) * 4)
    with Catalog(cfg.catalog_path) as cat:
        cat.commit_results("run1", rows)
        write_pending_shards(cfg, cat, "run1", progress=False)
    create_release(cfg, "rel", "r", progress=False)
    manifest, _ = release_manifest(cfg, "rel")
    specs = specs_from_manifest(manifest)
    victim = specs[-1].url
    data = bytearray(open(victim, "rb").read())
    data[len(data) // 2] ^= 0xFF  # one flipped bit in the middle of a member
    open(victim, "wb").write(bytes(data))

    with pytest.raises(ShardChecksumError, match="refused") as exc:
        _keys(specs)
    assert victim in str(exc.value)
    refused = []
    kept = _keys_skipping(specs, refused)
    assert refused == [victim] and len(kept) == 2  # the intact shard still serves its two clips

    # the trainer's stream refuses it too (never trains on a damaged shard)
    from vidcorpus.train.data import ClipStream

    with pytest.raises(ShardChecksumError):
        list(ClipStream(specs, cfg.train))


def _keys_skipping(specs, refused):
    pipe = sample_pipeline(specs, split=False, on_bad_shard="skip", on_error=lambda url, e: refused.append(url))
    return sorted(s["__key__"] for s in pipe)


def test_round_trip_on_s3(tmp_path, s3):
    import ray

    # Ray workers started by an earlier test predate this moto server's AWS_* variables: write here.
    ray.shutdown()
    cfg = _cfg(tmp_path, workdir="s3://bucket/corpus")
    rows = _clip_rows(tmp_path, n=3, kept=(True, True, True))
    with Catalog(cfg.catalog_path) as cat:
        cat.commit_results("run1", rows)
        written = write_pending_shards(cfg, cat, "run1", progress=False)
    assert all(m["url"].startswith("s3://bucket/corpus/shards/") for m in written)
    s = create_release(cfg, "s3rel", "r", progress=False)
    assert s.manifest_url == "s3://bucket/corpus/releases/s3rel/manifest.json" and s.reused_shards == 2
    manifest, _root = release_manifest(cfg, s.manifest_url)  # by URL, as a remote trainer would
    assert _keys(specs_from_manifest(manifest)) == sorted(r["clip_id"] for r in rows)
    # an upload that dies mid-way leaves no object behind
    def dying():
        yield {"__key__": "a", "bin": os.urandom(6 << 20)}
        raise RuntimeError("writer died")
    with pytest.raises(RuntimeError):
        stream_tar("s3://bucket/corpus/shards/x/partial.tar", dying())
    s3.invalidate_cache()
    assert not s3.exists("bucket/corpus/shards/x/partial.tar")


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from test_catalog_shards import _clip_rows
    from vidcorpus.catalog.store import Catalog
    from vidcorpus.config import load_config
    from vidcorpus.jobs.pack_shards import write_pending_shards
    import vidcorpus.shards.writer as writer
    cfg = load_config(None, ["shards.max_samples=2"], workdir=sys.argv[1], catalog=sys.argv[2])
    real_read, calls = writer.read_bytes, [0]
    def slow_read(url):
        calls[0] += 1
        if calls[0] == 3:  # second sample of the first shard: the tar is half written
            open(sys.argv[3], "w").write("mid-shard")
            time.sleep(600)
        return real_read(url)
    writer.read_bytes = slow_read
    with Catalog(cfg.catalog_path) as cat:
        write_pending_shards(cfg, cat, "run1", progress=False)
""")


def test_writer_killed_mid_shard_leaves_no_visible_shard_and_no_rows(tmp_path):
    rows = _clip_rows(tmp_path, n=4, kept=(True,) * 4)
    ref, run = _cfg(tmp_path / "ref"), _cfg(tmp_path / "run")
    for cfg in (ref, run):
        with Catalog(cfg.catalog_path) as cat:
            cat.commit_results("run1", rows)
    with Catalog(ref.catalog_path) as cat:
        expected = {(m["shard_id"], m["sha256"]) for m in write_pending_shards(ref, cat, "run1", progress=False)}

    marker = tmp_path / "marker"
    env = dict(os.environ, PYTHONPATH=os.path.dirname(__file__) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, run.workdir, run.catalog_path, str(marker)], env=env)
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the writer never reached the middle of a shard"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    shard_dir = tmp_path / "run" / "work" / "shards"
    files = [p.name for p in shard_dir.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith(".tar")] and [f for f in files if ".part-" in f]
    with Catalog(run.catalog_path) as cat:
        assert cat.con.execute("SELECT count(*) FROM shards").fetchall()[0][0] == 0
        got = {(m["shard_id"], m["sha256"]) for m in write_pending_shards(run, cat, "run2", progress=False)}
    assert got == expected  # the rerun publishes exactly the uninterrupted run's shards, byte for byte
    assert not [p for p in shard_dir.rglob("*") if ".part-" in p.name]


def test_latent_cache_is_keyed_by_encoder_weights(tmp_path, model_cache, caplog):
    import numpy as np
    import torch

    from vidcorpus.jobs.encode import encode_latent_cache
    from vidcorpus.jobs.models import resolve_models
    from vidcorpus.shards.latents import LatentParams

    cfg = _cfg(tmp_path, **{"models.cache_dir": model_cache})
    rows = _clip_rows(tmp_path, n=3, kept=(True,) * 3)
    with Catalog(cfg.catalog_path) as cat:
        cat.commit_results("run1", rows)
        write_pending_shards(cfg, cat, "run1", progress=False)
    params = LatentParams(height=32, width=32, frames=4, fps=8, caption_version="v1")
    quiet = dict(progress=False)
    first = encode_latent_cache(cfg, params, select="TRUE", **quiet)
    assert (first.encoded, first.reused, first.samples) == (2, 0, 3)
    again = encode_latent_cache(cfg, params, select="TRUE", **quiet)
    assert (again.cache_key, again.encoded, again.reused) == (first.cache_key, 0, 2)

    with Catalog(cfg.catalog_path, read_only=True) as cat:
        entries = cat.query_dicts("SELECT shard_id, url, n FROM latent_shards")
    sidecar = [s for e in entries for s in sample_pipeline([e["url"]], split=False)]
    assert sorted(s["__key__"] for s in sidecar) == sorted(r["clip_id"] for r in rows)
    lat = np.load(__import__("io").BytesIO(sidecar[0]["latent.npy"]))
    assert lat.shape[0] == 4 and lat.shape[-2:] == (4, 4) and lat.dtype == np.float16

    # New encoder weights (a fine-tuned VAE, say): a new key, nothing stale reused, old entries kept.
    import shutil

    from diffusers import AutoencoderKL

    src = resolve_models(cfg.models).i2vgen
    tuned = tmp_path / "tuned-i2vgen"
    shutil.copytree(src, tuned)
    vae = AutoencoderKL.from_pretrained(tuned / "vae")
    with torch.no_grad():
        next(vae.parameters()).add_(0.01)
    vae.save_pretrained(tuned / "vae")
    cfg2 = cfg.model_copy(update={"models": cfg.models.model_copy(update={"i2vgen": str(tuned)})})
    other = encode_latent_cache(cfg2, params, select="TRUE", **quiet)
    assert other.cache_key != first.cache_key and (other.encoded, other.reused) == (2, 0)
    # other parameters (resolution) are a different key too
    assert encode_latent_cache(cfg, LatentParams(32, 48, 4, 8, "v1"), select="TRUE", **quiet).encoded == 2
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        assert cat.con.execute("SELECT count(DISTINCT cache_key), count(*) FROM latent_shards").fetchall()[0] == (3, 6)

    # Training with the same encoders, bucket, frames, fps and caption reads the sidecars; with a
    # bucket nobody encoded, `require` refuses and names the fix.
    from vidcorpus.jobs.encode import LatentCacheMissing
    from vidcorpus.jobs.train import run_training

    tcfg = _cfg(tmp_path, **{"models.cache_dir": model_cache, "train.height": 32, "train.width": 32,
                             "train.steps": 2, "train.latent_cache": "require"})
    assert LatentParams.for_training(tcfg) == params
    caplog.set_level(logging.INFO, logger="vidcorpus.jobs.train")
    summary = run_training(tcfg, output=str(tmp_path / "run"), progress=False)
    said = [r.getMessage() for r in caplog.records if r.name == "vidcorpus.jobs.train"]  # what `vidcorpus train` prints
    assert summary.steps == 2 and f"cached latents {first.cache_key}" in said[0]
    with pytest.raises(LatentCacheMissing, match="shards encode"):
        run_training(_cfg(tmp_path, **{"models.cache_dir": model_cache, "train.height": 48, "train.width": 32,
                                       "train.latent_cache": "require"}), output=str(tmp_path / "run2"),
                     progress=False)


def test_follow_selection_sees_shards_sealed_after_the_start(tmp_path):
    from vidcorpus.jobs.train import follow_selection

    cfg = _cfg(tmp_path, **{"train.select": "kept", "train.latent_cache": "off"})
    rows = _clip_rows(tmp_path, n=4, kept=(True,) * 4)
    with Catalog(cfg.catalog_path) as cat:
        cat.commit_results("run1", rows[:2])
        write_pending_shards(cfg, cat, "run1", progress=False)
    refresh = follow_selection(cfg)
    specs, keys = refresh()
    assert len(specs) == 1 and keys == {r["clip_id"] for r in rows[:2]}
    with Catalog(cfg.catalog_path) as cat:  # an ingest run seals another shard while training goes on
        cat.commit_results("run2", rows[2:])
        write_pending_shards(cfg, cat, "run2", progress=False)
    specs2, keys2 = refresh()
    assert len(specs2) == 2 and keys2 == {r["clip_id"] for r in rows}
    assert all(s.sha256 for s in specs2)  # still verified before use
    with pytest.raises(ValueError, match="release is fixed"):
        follow_selection(_cfg(tmp_path, **{"train.release": "r1"}))
