"""Reliability and security (issue 11): bad inputs, hostile sources and paths, a full disk, S3 stalls.

All of it without Ray (the kill tests with Ray are in tests/test_kill_points.py): each bad input
must end as a classified failure row, each fault as a clear error that leaves nothing partial and
a rerun that equals an uninterrupted run.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import socket
import struct
import subprocess
import time
from fractions import Fraction
from pathlib import Path

import av
import fsspec
import numpy as np
import pytest
from fsspec.implementations.local import LocalFileSystem

from test_catalog_shards import _clip_rows
from test_download import INGEST, VIDEO, _run, server, static  # noqa: F401 - server is a fixture
from vidcorpus.catalog.store import Catalog
from vidcorpus.config import load_config
from vidcorpus.errors import StorageFullError
from vidcorpus.ingest.download import DownloadStage
from vidcorpus.ingest.sources import read_inputs
from vidcorpus.jobs.pack_shards import write_pending_shards
from vidcorpus.shards.writer import write_shard


def _cfg(tmp_path, workdir=None, catalog=None, **fields):
    base = {"ingest.allow_private_addresses": True, "ingest.retries": 2, "ingest.backoff_s": 0.01,
            "ingest.connect_timeout_s": 2.0, "ingest.read_timeout_s": 0.5, "ingest.max_bytes": 200_000}
    return load_config(None, [], workdir=workdir or str(tmp_path / "work"), catalog=catalog, **(base | fields))


@pytest.fixture()
def no_ray():
    import ray

    ray.shutdown()  # shards would be written by Ray workers of earlier tests, which lack this test's file system


# -- bad inputs -----------------------------------------------------------------------------------
def _mjpeg_avi(width: int, height: int) -> bytes:
    """A small MJPEG AVI whose container and JPEG headers declare width x height (the data is 64x48)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="avi") as c:
        s = c.add_stream("mjpeg", rate=12)
        s.width, s.height, s.pix_fmt = 64, 48, "yuvj420p"
        for i in range(6):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 40, np.uint8), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    data = bytearray(buf.getvalue())
    sof = b"\xff\xc0\x00\x11\x08"  # each frame's JPEG start-of-frame: height, width
    i = data.find(sof)
    while i >= 0:
        data[i + 5:i + 9] = struct.pack(">HH", height, width)
        i = data.find(sof, i + 1)
    i = data.index(b"strf")
    data[i + 12:i + 20] = struct.pack("<ii", width, height)  # BITMAPINFOHEADER biWidth, biHeight
    i = data.index(b"avih")
    data[i + 40:i + 48] = struct.pack("<II", width, height)  # MainAVIHeader dwWidth, dwHeight
    return bytes(data)


def _long_video(path: Path, seconds: int, fps: Fraction = Fraction(1, 60)) -> None:
    """A real video `seconds` long at a very low frame rate (hours of stream time, few frames)."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), (i * 7) % 256, np.uint8), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _undeclared_duration(data: bytes) -> bytes:
    """The same mp4 with the durations in its headers zeroed (mvhd, tkhd, mdhd: version 0 boxes)."""
    out = bytearray(data)
    for box, offset in ((b"mvhd", 20), (b"tkhd", 24), (b"mdhd", 20)):
        i = out.index(box)
        out[i + offset:i + offset + 4] = b"\0\0\0\0"
    return bytes(out)


def test_every_bad_input_is_a_classified_failure_row(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "zero.mp4").write_bytes(b"")
    (d / "page.mp4").write_text("<!doctype html><html><body>hello</body></html>")
    (d / "notes.mp4").write_text("just some text\n" * 10)
    (d / "truncated.mp4").write_bytes(VIDEO[: len(VIDEO) // 3])
    corrupt = bytearray(VIDEO)  # frames damaged in the middle of the stream, headers intact
    mdat = corrupt.index(b"mdat")
    mid = mdat + (len(corrupt) - mdat) // 2
    corrupt[mid:mid + 600] = np.random.default_rng(1).integers(0, 256, 600, dtype=np.uint8).tobytes()
    (d / "corrupt_mid.mp4").write_bytes(bytes(corrupt))
    (d / "huge_declared.avi").write_bytes(_mjpeg_avi(16000, 12000))  # 192 M pixels declared
    (d / "absurd_declared.avi").write_bytes(_mjpeg_avi(60000, 60000))  # beyond what FFmpeg accepts
    _long_video(d / "five_hours.mp4", 5 * 3600)  # 300 frames, one a minute
    _long_video(d / "three_minutes.mp4", 180, Fraction(1, 2))
    (d / "three_minutes_undeclared.mp4").write_bytes(_undeclared_duration((d / "three_minutes.mp4").read_bytes()))
    names = sorted(p.name for p in d.iterdir())
    cfg = _cfg(tmp_path, **{"ingest.max_duration_s": 120.0})
    t0 = time.time()
    rows = _run(INGEST, read_inputs([str(d / n) for n in names]), cfg)
    assert time.time() - t0 < 60, "no input may hang the job"
    by: dict[str, list] = {}
    for r in rows:
        by.setdefault(Path(r["uri"]).name, []).append(r)
    classes = {n: {r["error_class"] for r in rs} for n, rs in by.items()}
    assert classes["zero.mp4"] == {"empty_file"}
    assert classes["page.mp4"] == classes["notes.mp4"] == {"not_media"}
    assert classes["truncated.mp4"] == {"decode_error"}
    assert classes["huge_declared.avi"] == {"too_large"}
    assert classes["absurd_declared.avi"] == {"decode_error"}
    assert classes["five_hours.mp4"] == {"too_long"}, by["five_hours.mp4"][0]["error"]
    assert classes["three_minutes.mp4"] == {"too_long"}  # declared: refused by the probe
    assert classes["three_minutes_undeclared.mp4"] == {"too_long"}, by["three_minutes_undeclared.mp4"][0]
    assert [r["error_stage"] for r in by["three_minutes_undeclared.mp4"]] == ["split"]  # found while decoding
    # corrupt frames mid-stream: either clips of what decodes, or a classified failure; never a crash
    assert all(r["error_class"] in (None, "decode_error") for r in by["corrupt_mid.mp4"])
    assert all(r["clip_path"] and Path(r["clip_path"]).stat().st_size > 0
               for r in by["corrupt_mid.mp4"] if r["error_class"] is None)
    with Catalog(cfg.catalog_path) as cat:  # the whole batch commits: nothing lost, each a failure row
        cat.commit_results("r1", rows)
        n_failed = cat.con.execute("SELECT count(DISTINCT source_id) FROM failures").fetchall()[0][0]
    assert n_failed == sum(1 for n in names if None not in classes[n])


def test_a_hanging_source_times_out_and_the_others_finish(tmp_path, server):
    def hang(h):  # accepts the request and never answers
        time.sleep(5)

    server.routes.update({"/hang.mp4": hang, "/ok.mp4": static(VIDEO)})
    cfg = _cfg(tmp_path, **{"ingest.retries": 1, "ingest.threads": 2})
    t0 = time.time()
    rows = _run([DownloadStage], read_inputs([f"{server.url}/hang.mp4", f"{server.url}/ok.mp4"]), cfg)
    assert {r["uri"].rsplit("/", 1)[1]: r["error_class"] for r in rows} == {"hang.mp4": "timeout", "ok.mp4": None}
    assert server.hits["/hang.mp4"] == 2 and time.time() - t0 < 4  # one retry, each after the 0.5 s read timeout


# -- SSRF: redirects to private destinations --------------------------------------------------------
def test_a_public_host_redirecting_to_a_private_address_is_refused(tmp_path, server, monkeypatch):
    """The first hop resolves to a public address; its redirect to loopback or to a name that resolves to
    a private address is checked before it is followed, so nothing is fetched from there."""
    real = socket.getaddrinfo
    port = server.server_address[1]

    def resolver(host, port_arg, *args, **kw):
        if host == "cdn.example":  # public to the SSRF check; the connection itself reaches the test server
            ip = "93.184.216.34" if port_arg is None else "127.0.0.1"
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port_arg or 0))]
        if host == "intranet.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port_arg or 0))]
        return real(host, port_arg, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    server.routes.update({
        "/to-loopback.mp4": static(b"", 302, {"Location": f"http://127.0.0.1:{port}/secret.mp4"}),
        "/to-intranet.mp4": static(b"", 301, {"Location": f"http://intranet.example:{port}/secret.mp4"}),
        "/to-file.mp4": static(b"", 302, {"Location": "file:///etc/passwd"}),
        "/fine.mp4": static(VIDEO),
        "/secret.mp4": static(VIDEO),
    })
    cfg = _cfg(tmp_path, **{"ingest.allow_private_addresses": False})
    urls = [f"http://cdn.example:{port}/{n}" for n in ("to-loopback.mp4", "to-intranet.mp4", "to-file.mp4", "fine.mp4")]
    rows = _run([DownloadStage], read_inputs(urls), cfg)
    got = {r["uri"].rsplit("/", 1)[1]: r["error_class"] for r in rows}
    assert got == {"to-loopback.mp4": "blocked_address", "to-intranet.mp4": "blocked_address",
                   "to-file.mp4": "bad_scheme", "fine.mp4": None}, rows
    assert "/secret.mp4" not in server.hits
    (tmp_path / "schemes.txt").write_text("ftp://example.com/a.mp4\ngopher://example.com/a.mp4\ndict://example.com/a\n")
    rows = _run([DownloadStage], read_inputs([str(tmp_path / "schemes.txt")]), cfg)
    assert [r["error_class"] for r in rows] == ["bad_scheme"] * 3, rows


# -- paths from input -------------------------------------------------------------------------------
def test_no_key_or_path_from_input_escapes_its_directory(tmp_path, server):
    server.routes["/v.mp4"] = static(VIDEO)
    hostile = [f"{server.url}/../../../../etc/v.mp4", f"{server.url}/%2e%2e/%2e%2e/v.mp4",
               f"{server.url}/v.mp4?name=../../x", f"{server.url}/a%00b.mp4", f"{server.url}//abs/v.mp4"]
    cfg = _cfg(tmp_path)
    rows = _run(INGEST, read_inputs(hostile), cfg)
    staging = (tmp_path / "work" / "staging").resolve()
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and all(p.resolve().is_relative_to(staging) for p in written), written
    for r in rows:  # staged under the source id (hex), clips under the clip id
        for key in ("source_path", "clip_path", "first_frame_path"):
            if r.get(key):
                assert Path(r[key]).resolve().is_relative_to(staging), (key, r[key])
    # a row whose ids did not come from vidcorpus (a hand-made or hostile input) cannot steer a path
    for bad in ("../escape", "/abs/path", "a\0b", "..", "a/b"):
        row = dict(rows[0], source_id=bad, error_class=None, error=None, error_stage=None)
        [out] = _run([DownloadStage], [row], cfg)
        assert out["error_class"] == "bad_input", out
        clip = {"clip_id": bad, "media_type": "video", "clip_path": rows[-1]["clip_path"], "first_frame_path": None}
        with pytest.raises(ValueError, match="not a safe"):
            write_shard("b", [clip], str(tmp_path / "shards"), "v1")
    assert not (tmp_path / "escape").exists() and not (tmp_path / "work" / "staging" / "escape.part").exists()
    assert not (tmp_path / "shards").exists() or not [p for p in (tmp_path / "shards").rglob("*") if p.is_file()]


# -- full disk --------------------------------------------------------------------------------------
class FullFS(LocalFileSystem):
    """A local file system whose writes fail with ENOSPC once `budget` bytes were written in total."""

    protocol = ("fullfs",)
    root_marker = "/"
    budget = 0
    written = 0

    def __init__(self, *args, **kw):
        super().__init__(*args, **(kw | {"auto_mkdir": True}))

    @classmethod
    def _strip_protocol(cls, path):
        return LocalFileSystem._strip_protocol(str(path).removeprefix("fullfs://"))

    def _open(self, path, mode="rb", **kw):
        f = super()._open(path, mode, **kw)
        if "w" not in mode and "a" not in mode:
            return f
        write = f.write

        def limited(data):
            if FullFS.written + len(data) > FullFS.budget:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            FullFS.written += len(data)
            return write(data)

        f.write = limited
        return f


fsspec.register_implementation("fullfs", FullFS, clobber=True)


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()} if root.exists() else {}


def _shard_rows(cfg) -> list:
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        return sorted(cat.con.execute("SELECT shard_id, sha256, n FROM shards").fetchall())


def test_a_full_shard_store_is_a_clear_error_then_a_rerun_equals_an_uninterrupted_run(tmp_path, monkeypatch, no_ray):
    rows = _clip_rows(tmp_path, n=4, kept=(True,) * 4)

    def cfg_for(name, workdir):
        return load_config(None, ["shards.max_samples=2"], workdir=workdir, catalog=str(tmp_path / f"{name}.duckdb"))

    clean = cfg_for("clean", str(tmp_path / "clean"))
    with Catalog(clean.catalog_path) as cat:
        cat.commit_results("r1", rows)
        reference = write_pending_shards(clean, cat, "r1", progress=False)
    assert len(reference) == 2
    full_root = tmp_path / "full"
    monkeypatch.setattr(FullFS, "budget", reference[0]["bytes"] + 1000)  # room for one shard, not two
    monkeypatch.setattr(FullFS, "written", 0)
    full = cfg_for("full", f"fullfs://{full_root}")
    with Catalog(full.catalog_path) as cat:
        cat.commit_results("r1", rows)
        with pytest.raises(StorageFullError, match="no space left.*free space and run again"):
            write_pending_shards(full, cat, "r1", progress=False)
    published = [p for p in full_root.rglob("*") if p.is_file()]
    assert len(published) == 1 and len(_shard_rows(full)) == 1, "the shard that fitted is whole and recorded"
    assert hashlib.sha256(published[0].read_bytes()).hexdigest() == _shard_rows(full)[0][1]
    monkeypatch.setattr(FullFS, "budget", 1 << 40)  # space freed: the rerun writes only what is missing
    with Catalog(full.catalog_path) as cat:
        again = write_pending_shards(full, cat, "r2", progress=False)
    assert len(again) == 1
    assert _shard_rows(full) == _shard_rows(clean)
    assert sorted(_tree(full_root).values()) == sorted(_tree(tmp_path / "clean" / "shards").values())


def test_a_full_staging_store_stops_the_job_with_nothing_partial(tmp_path, server, monkeypatch):
    server.routes.update({f"/{i}.mp4": static(VIDEO) for i in range(3)})
    urls = [f"{server.url}/{i}.mp4" for i in range(3)]
    monkeypatch.setattr(FullFS, "budget", len(VIDEO) + len(VIDEO) // 2)  # one source and a half fit
    monkeypatch.setattr(FullFS, "written", 0)
    root = tmp_path / "stage"
    cfg = _cfg(tmp_path, workdir=f"fullfs://{root}", catalog=str(tmp_path / "c.duckdb"), **{"ingest.threads": 1})
    with pytest.raises(StorageFullError, match="no space left"):
        _run([DownloadStage], read_inputs(urls), cfg)
    left = sorted(p.name for p in (root / "staging" / "sources").iterdir())
    assert len(left) == 1 and not left[0].endswith(".part"), left  # the whole one; the cut one is removed
    monkeypatch.setattr(FullFS, "budget", 1 << 40)
    rows = _run([DownloadStage], read_inputs(urls), cfg)
    assert [r["error_class"] for r in rows] == [None] * 3
    assert {r["sha256"] for r in rows} == {hashlib.sha256(VIDEO).hexdigest()}


def _can_mount_tmpfs(path: Path) -> bool:
    if os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(path)], capture_output=True)
    return ok


def test_a_really_full_filesystem_under_the_shard_store(tmp_path, no_ray):
    """The honest fault: a tiny tmpfs (root and mount only; skipped elsewhere)."""
    mnt = tmp_path / "mnt"
    if not _can_mount_tmpfs(mnt):
        pytest.skip("needs root and mount to create a small tmpfs")
    rows = _clip_rows(tmp_path, n=4, kept=(True,) * 4)
    clean = load_config(None, ["shards.max_samples=2"], workdir=str(tmp_path / "clean"), catalog=str(tmp_path / "c.duckdb"))
    with Catalog(clean.catalog_path) as cat:
        cat.commit_results("r1", rows)
        reference = write_pending_shards(clean, cat, "r1", progress=False)
    size_kb = (reference[0]["bytes"] * 3 // 2) // 1024 + 8  # room for one shard and a half
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mnt)], check=True)
    try:
        full = load_config(None, ["shards.max_samples=2"], workdir=str(mnt / "work"), catalog=str(tmp_path / "f.duckdb"))
        with Catalog(full.catalog_path) as cat:
            cat.commit_results("r1", rows)
            with pytest.raises(StorageFullError, match="No space left on device|no space left"):
                write_pending_shards(full, cat, "r1", progress=False)
        files = [p for p in mnt.rglob("*") if p.is_file()]
        assert [p.suffix for p in files] == [".tar"] and len(_shard_rows(full)) == 1, files  # no .part left
        subprocess.run(["mount", "-o", "remount,size=16m", str(mnt)], check=True)
        with Catalog(full.catalog_path) as cat:
            write_pending_shards(full, cat, "r2", progress=False)
        assert _shard_rows(full) == _shard_rows(clean)
        assert sorted(_tree(mnt / "work" / "shards").values()) == sorted(_tree(tmp_path / "clean" / "shards").values())
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# -- S3 stalls ------------------------------------------------------------------------------------
def test_s3_stalls_longer_than_the_client_timeout_are_retried(tmp_path, s3, monkeypatch, no_ray):
    from faultproxy import FaultProxy
    from test_storage_faults import _cfg as s3_cfg, _through

    monkeypatch.setitem(fsspec.config.conf, "s3", {"config_kwargs": {"read_timeout": 1, "connect_timeout": 1,
                                                                     "retries": {"max_attempts": 6}}})
    stalled: set[str] = set()

    def plan(n, method, path, query):  # the first write of each shard stalls past the read timeout
        if method in ("PUT", "POST") and path.endswith(".tar") and path not in stalled:
            stalled.add(path)
            return ("stall", 2.5)
        return None

    rows = _clip_rows(tmp_path, n=4, kept=(True,) * 4)
    cfg = s3_cfg(tmp_path)
    with FaultProxy(os.environ["AWS_ENDPOINT_URL"], plan) as proxy:
        endpoint = os.environ["AWS_ENDPOINT_URL"]
        _through(monkeypatch, proxy.url)
        t0 = time.time()
        with Catalog(cfg.catalog_path) as cat:
            cat.commit_results("run1", rows)
            written = write_pending_shards(cfg, cat, "run1", progress=False)
        stalls = [e for e in proxy.events if isinstance(e[3], tuple)]
        assert len(stalls) == 2 and time.time() - t0 < 30
        for _n, _method, url, _action in stalls:  # the client gave up on the stalled write and sent it again
            assert sum(1 for e in proxy.events if e[2] == url and e[1] in ("PUT", "POST")) >= 2, proxy.events
    fs = _through(monkeypatch, endpoint)
    assert len(written) == 2
    for m in written:
        data = fs.cat(m["url"].removeprefix("s3://"))
        assert hashlib.sha256(data).hexdigest() == m["sha256"] and len(data) == m["bytes"]


def test_a_full_store_during_a_run_ends_the_command_with_a_clear_error(tmp_path, monkeypatch):
    """However deep Ray wraps it (RayTaskError keeps the worker's exception as `.cause`)."""
    from typer.testing import CliRunner

    from vidcorpus.jobs.curate import pipeline
    from vidcorpus.cli.app import app

    class Wrapped(RuntimeError):  # the shape of a Ray task error
        def __init__(self, cause):
            super().__init__("task failed")
            self.cause = cause

    def full(*_a, **_kw):
        raise Wrapped(OSError(errno.ENOSPC, "No space left on device", "/staging/sources/x.part"))

    monkeypatch.setattr(pipeline, "_process", full)
    monkeypatch.setattr(pipeline, "resolve_models", lambda m, **_kw: m)
    monkeypatch.setattr(pipeline, "preflight_pipeline", lambda m, *_a: None)
    (tmp_path / "urls.txt").write_text("https://example.com/a.mp4\n")
    result = CliRunner().invoke(app, ["ingest", str(tmp_path / "urls.txt"), "--workdir", str(tmp_path / "w"),
                                      "--no-progress"])
    assert result.exit_code == 4, result.output
    assert "storage full" in result.output and "/staging/sources/x.part" in result.output
    with Catalog(tmp_path / "w" / "catalog.duckdb", read_only=True) as cat:  # the run is recorded as failed
        assert cat.con.execute("SELECT status FROM runs").fetchall() == [("failed",)]
