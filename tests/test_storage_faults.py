"""Storage faults: S3 behind a fault-injecting loopback proxy (500/503, connection resets).

Writes are retried by the S3 client and still publish exactly the right bytes; a write that cannot
succeed leaves no visible object and no catalog row, and a rerun after the fault clears finishes.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from faultproxy import FaultProxy
from test_catalog_shards import _clip_rows
from vidcorpus.catalog.store import Catalog
from vidcorpus.config import load_config
from vidcorpus.jobs.release import create_release, release_manifest
from vidcorpus.jobs.pack_shards import write_pending_shards
from vidcorpus.shard_reader import sample_pipeline, specs_from_manifest


def _through(monkeypatch, url: str):
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    s3fs.S3FileSystem.clear_instance_cache()
    return s3fs.S3FileSystem()


def _cfg(tmp_path):
    return load_config(None, ["shards.max_samples=2"], workdir="s3://bucket/corpus",
                       catalog=str(tmp_path / "catalog.duckdb"))


@pytest.fixture()
def no_ray():
    import ray

    ray.shutdown()  # Ray workers of earlier tests would not see this test's endpoint


def test_writes_are_retried_through_5xx_and_resets(tmp_path, s3, monkeypatch, no_ray):
    def plan(n, method, path, query):
        if method in ("PUT", "POST", "GET", "HEAD") and n % 3 == 0:
            return (503, 500, "reset")[(n // 3) % 3]
        return None

    rows = _clip_rows(tmp_path, n=5, kept=(True,) * 5)
    cfg = _cfg(tmp_path)
    with FaultProxy(os.environ["AWS_ENDPOINT_URL"], plan) as proxy:
        _through(monkeypatch, proxy.url)
        with Catalog(cfg.catalog_path) as cat:
            cat.commit_results("run1", rows)
            written = write_pending_shards(cfg, cat, "run1", progress=False)
        create_release(cfg, "faulty", "r", progress=False)
        manifest, _root = release_manifest(cfg, "faulty")
        keys = sorted(s["__key__"] for s in sample_pipeline(specs_from_manifest(manifest), split=False))
        injected = {a for *_x, a in proxy.events if a is not None}
        assert proxy.faults() >= 6 and injected == {503, 500, "reset"}
    assert keys == sorted(r["clip_id"] for r in rows)
    for m in written:  # what landed is byte-exact, read past the proxy (the fixture's client)
        data = s3.cat(m["url"].removeprefix("s3://"))
        assert hashlib.sha256(data).hexdigest() == m["sha256"] and len(data) == m["bytes"]


def test_a_write_that_keeps_failing_leaves_nothing_and_a_rerun_finishes(tmp_path, s3, monkeypatch, no_ray):
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    rows = _clip_rows(tmp_path, n=2, kept=(True, True))
    cfg = _cfg(tmp_path)
    with Catalog(cfg.catalog_path) as cat:
        cat.commit_results("run1", rows)

    def shard_puts_fail(n, method, path, query):
        return 503 if method in ("PUT", "POST") and path.endswith(".tar") else None

    # Two botocore attempts per call instead of five (s3fs retries the call 5 times): the same retries
    # and give-up path, 10 backed-off failures instead of 25 (about 35 s less).
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    with FaultProxy(endpoint, shard_puts_fail) as proxy:
        _through(monkeypatch, proxy.url)
        with Catalog(cfg.catalog_path) as cat, pytest.raises(Exception):
            write_pending_shards(cfg, cat, "run1", progress=False)
        assert proxy.faults() >= 2  # the client retried before giving up
    monkeypatch.delenv("AWS_MAX_ATTEMPTS")
    fs = _through(monkeypatch, endpoint)
    assert not [p for p in fs.find("bucket/corpus") if p.endswith(".tar")]
    with Catalog(cfg.catalog_path) as cat:
        assert cat.con.execute("SELECT count(*) FROM shards").fetchall()[0][0] == 0
        again = write_pending_shards(cfg, cat, "run2", progress=False)
    assert len(again) == 1 and fs.exists(again[0]["url"].removeprefix("s3://"))
