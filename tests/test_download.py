"""Downloading, probing and inputs against hostile servers, S3 and broken media.

Everything runs without Ray, on a loopback server whose routes misbehave on
purpose (errors, a flaky 500, slow drips, bodies without Content-Length) and on a moto S3 server.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from vidcorpus.catalog.store import Catalog
from vidcorpus.config import load_config
from vidcorpus.errors import DownloadError
from vidcorpus.ingest.download import DownloadStage, check_destination
from vidcorpus.ingest.extract import ExtractStage
from vidcorpus.ingest.probe import ProbeStage
from vidcorpus.ingest.sources import read_inputs
from vidcorpus.ingest.split_stage import SplitStage
from vidcorpus.media import encode_video, load_image_rgb
from vidcorpus.schemas import rows_to_table

INGEST = [DownloadStage, ProbeStage, SplitStage, ExtractStage]


# -- media ---------------------------------------------------------------------------------------
def _video_bytes(n: int = 24, size: tuple[int, int] = (64, 48)) -> bytes:
    rng = np.random.default_rng(n)
    frames = [np.full((size[1], size[0], 3), rng.integers(0, 256, 3), np.uint8) for _ in range(n)]
    for i, f in enumerate(frames):
        f[:, (i * 2) % size[0]:(i * 2) % size[0] + 8] = 255
    buf = io.BytesIO()
    encode_video(frames, 12, buf)
    return buf.getvalue()


def _jpeg_bytes(w: int = 64, h: int = 32, orientation: int | None = None) -> bytes:
    img = Image.new("RGB", (w, h), (200, 30, 30))
    img.paste((30, 30, 200), (0, 0, w // 4, h))  # a blue band on the left marks the orientation
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    img.save(buf, format="JPEG", exif=exif.tobytes())
    return buf.getvalue()


VIDEO = _video_bytes()
JPEG = _jpeg_bytes()


# -- a loopback server with programmable routes -----------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict = {}
    hits: dict = {}
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        path = self.path.split("?")[0]
        with self.lock:
            self.hits[path] = self.hits.get(path, 0) + 1
        route = self.routes.get(path)
        if route is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        try:
            route(self)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def reply(self, status: int, body: bytes = b"", headers: dict | None = None, length: bool = True):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def server():
    handler = type("H", (_Handler,), {"routes": {}, "hits": {}, "lock": threading.Lock()})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    srv.routes, srv.hits = handler.routes, handler.hits
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def static(body: bytes, status: int = 200, headers: dict | None = None):
    return lambda h: h.reply(status, body, headers)


def flaky(*responses):
    """Answers with the given (status, body) pairs in turn, then repeats the last."""
    calls = iter(responses)
    last = [responses[-1]]

    def route(h):
        status, body = next(calls, last[0])
        h.reply(status, body)
    return route


def drip(first: bytes, pause_s: float, n: int = 50):
    """Headers and a media prefix at once, then one byte every pause_s (never finishing quickly)."""
    def route(h):
        h.reply(200, first, {"Content-Length": str(len(first) + n)}, length=False)
        h.wfile.flush()
        for _ in range(n):
            time.sleep(pause_s)
            h.wfile.write(b"0")
            h.wfile.flush()
    return route


def unbounded(head: bytes, total: int):
    """A body without Content-Length (ends when the connection closes), bigger than the limit."""
    def route(h):
        h.reply(200, head, length=False)
        sent = len(head)
        while sent < total:
            h.wfile.write(b"\0" * 65536)
            sent += 65536
    return route


def _cfg(tmp_path, **fields):
    base = {"ingest.allow_private_addresses": True, "ingest.retries": 2, "ingest.backoff_s": 0.01,
            "ingest.connect_timeout_s": 2.0, "ingest.read_timeout_s": 0.5, "ingest.max_bytes": 200_000}
    return load_config(None, [], workdir=str(tmp_path / "work"), **(base | fields))


def _run(stages, rows, cfg) -> list[dict]:
    table = rows_to_table(rows)
    for stage in stages:
        table = stage(cfg)(table)
    return table.to_pylist()


def _commit(cfg, rows) -> Catalog:
    """What the runner's driver does with a batch of results."""
    cat = Catalog(cfg.catalog_path)
    cat.commit_results("run-1", rows)
    failed = {r["source_id"] for r in rows if r.get("error_class")}
    cat.mark_sources_done({r["source_id"] for r in rows} - failed)
    return cat


# -- the loopback cases, each ending in the expected catalog state -----------------------------------
def test_every_server_behaviour_ends_in_the_expected_catalog_state(tmp_path, server):
    server.routes.update({
        "/good.mp4": static(VIDEO, headers={"Content-Type": "video/mp4"}),
        "/good.jpg": static(JPEG),
        "/gone.mp4": static(b"not here", 404),
        "/flaky.mp4": flaky((500, b"oops"), (200, VIDEO)),
        "/busy.mp4": static(b"busy", 503),
        "/drip.mp4": drip(VIDEO[:64], pause_s=2.0, n=3),
        "/huge.jpg": unbounded(JPEG[:64], 1_000_000),
        "/page.mp4": static(b"<!doctype html><html><body>a page</body></html>", headers={"Content-Type": "text/html"}),
        "/cut.mp4": static(VIDEO[: len(VIDEO) // 3]),
        "/ai.jpg": static(JPEG, headers={"X-Robots-Tag": "googlebot: noindex, otherbot: noimageai"}),
    })
    expected = {"good.mp4": None, "good.jpg": None, "gone.mp4": "http_4xx", "flaky.mp4": None,
                "busy.mp4": "http_5xx", "drip.mp4": "timeout", "huge.jpg": "too_large", "page.mp4": "not_media",
                "cut.mp4": "decode_error", "ai.jpg": "opted_out"}
    (tmp_path / "urls.txt").write_text("".join(f"{server.url}/{name}\n" for name in expected))
    cfg = _cfg(tmp_path, **{"ingest.threads": 4})
    t0 = time.time()
    rows = _run(INGEST, read_inputs([str(tmp_path / "urls.txt")]), cfg)
    assert time.time() - t0 < 30
    cat = _commit(cfg, rows)
    got = {r["uri"].rsplit("/", 1)[1]: (r["status"], r["error_class"]) for r in cat.query_dicts(
        "SELECT s.uri, s.status, f.error_class FROM sources s LEFT JOIN failures f USING (source_id)")}
    assert got == {name: ("failed" if cls else "done", cls) for name, cls in expected.items()}
    assert server.hits["/flaky.mp4"] == 2, "the 500 was retried once, then the 200 succeeded"
    assert server.hits["/gone.mp4"] == 1, "4xx is never retried"
    assert server.hits["/busy.mp4"] == 3, "5xx retried ingest.retries times"
    stages = dict(cat.con.execute("SELECT uri, stage FROM failures").fetchall())
    assert stages[f"{server.url}/cut.mp4"] in ("probe", "split", "extract")
    assert stages[f"{server.url}/gone.mp4"] == "download"
    src = {r["uri"].rsplit("/", 1)[1]: r for r in cat.query_dicts("SELECT * FROM sources")}
    assert src["good.mp4"]["sha256"] == hashlib.sha256(VIDEO).hexdigest() == src["flaky.mp4"]["sha256"]
    assert src["good.mp4"]["bytes"] == len(VIDEO) and src["good.mp4"]["width"] == 64
    assert src["good.jpg"]["media_type"] == "image" and src["good.jpg"]["height"] == 32
    clips = cat.query_dicts("SELECT clip_path FROM clips")
    assert len(clips) >= 3 and all(Path(c["clip_path"]).exists() for c in clips)
    staged = sorted(p.name for p in (tmp_path / "work" / "staging" / "sources").iterdir())
    assert not any(n.endswith(".part") for n in staged), staged  # failed downloads leave nothing behind
    cat.close()


def test_slow_drip_trips_the_total_deadline_when_each_byte_is_on_time(tmp_path, server):
    server.routes["/drip.mp4"] = drip(VIDEO[:64], pause_s=0.2, n=40)  # every read well within 0.5 s
    cfg = _cfg(tmp_path, **{"ingest.total_timeout_s": 1.0, "ingest.retries": 0})
    t0 = time.time()
    [row] = _run([DownloadStage], read_inputs([f"{server.url}/drip.mp4"]), cfg)
    assert row["error_class"] == "timeout" and "total_timeout" in row["error"]
    assert time.time() - t0 < 3


def test_declared_length_over_the_limit_is_refused_unread(tmp_path, server):
    server.routes["/big.mp4"] = static(VIDEO)
    [row] = _run([DownloadStage], read_inputs([f"{server.url}/big.mp4"]), _cfg(tmp_path, **{"ingest.max_bytes": 1000}))
    assert row["error_class"] == "too_large" and "declared" in row["error"]


def test_connection_refused_and_unresolvable_names(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rows = _run([DownloadStage], read_inputs([f"http://127.0.0.1:{port}/x.mp4", "http://no-such-host.invalid/x.mp4"]),
                _cfg(tmp_path, **{"ingest.retries": 1}))
    assert {r["uri"].split("/")[2]: r["error_class"] for r in rows} == {
        f"127.0.0.1:{port}": "connect", "no-such-host.invalid": "dns"}


# -- address safety ------------------------------------------------------------------------------
def test_names_that_resolve_to_private_addresses_are_refused(tmp_path, server, monkeypatch):
    real = socket.getaddrinfo

    def fake(host, *args, **kw):
        table = {"intranet.example": "10.1.2.3", "metadata.example": "169.254.169.254",
                 "public.example": "93.184.216.34", "v6.example": "::1"}
        if host in table:
            fam = socket.AF_INET6 if ":" in table[host] else socket.AF_INET
            return [(fam, socket.SOCK_STREAM, 6, "", (table[host], 0))]
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    for host in ("intranet.example", "metadata.example", "v6.example", "localhost"):
        with pytest.raises(DownloadError) as e:
            check_destination(f"http://{host}/a.mp4", allow_private=False)
        assert e.value.error_class == "blocked_address", host
    check_destination("http://public.example/a.mp4", allow_private=False)
    # through the stage: nothing reaches the server, neither directly nor via a public-looking redirect
    port = server.server_address[1]
    server.routes["/a.mp4"] = static(VIDEO)
    cfg = _cfg(tmp_path, **{"ingest.allow_private_addresses": False})
    [row] = _run([DownloadStage], read_inputs([f"http://localhost:{port}/a.mp4"]), cfg)
    assert row["error_class"] == "blocked_address" and not server.hits


def test_redirects_are_limited(tmp_path, server):
    for i in range(4):
        server.routes[f"/r{i}"] = static(b"", 302, {"Location": f"/r{i + 1}"})
    server.routes["/r4"] = static(VIDEO)
    ok = _run([DownloadStage], read_inputs([f"{server.url}/r0"]), _cfg(tmp_path, **{"ingest.max_redirects": 4}))
    assert ok[0]["error_class"] is None and ok[0]["sha256"] == hashlib.sha256(VIDEO).hexdigest()
    [row] = _run([DownloadStage], read_inputs([f"{server.url}/r0"]), _cfg(tmp_path, **{"ingest.max_redirects": 3}))
    assert row["error_class"] == "too_many_redirects"


# -- hashes and concurrency ----------------------------------------------------------------------
def test_expected_hash_is_verified(tmp_path, server):
    server.routes["/a.mp4"] = static(VIDEO)
    local = tmp_path / "b.jpg"
    local.write_bytes(JPEG)
    good, bad = hashlib.sha256(VIDEO).hexdigest(), "0" * 64
    (tmp_path / "l.csv").write_text(
        f"url,sha256\n{server.url}/a.mp4,{good.upper()}\n{server.url}/a.mp4?again,{bad}\n{local},{bad}\n")
    rows = _run([DownloadStage], read_inputs([str(tmp_path / "l.csv")]), _cfg(tmp_path))
    assert [r["error_class"] for r in rows] == [None, "hash_mismatch", "hash_mismatch"]
    assert not list((tmp_path / "work" / "staging" / "sources").glob("*.part"))


def test_per_host_concurrency_is_bounded(tmp_path, server):
    state = {"now": 0, "peak": 0}
    lock = threading.Lock()

    def slow(h):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.3)
        with lock:
            state["now"] -= 1
        h.reply(200, JPEG)

    for i in range(8):
        server.routes[f"/{i}.jpg"] = slow
    cfg = _cfg(tmp_path, **{"ingest.threads": 8, "ingest.max_per_host": 2})
    t0 = time.time()
    rows = _run([DownloadStage], read_inputs([f"{server.url}/{i}.jpg" for i in range(8)]), cfg)
    assert [r["error_class"] for r in rows] == [None] * 8
    assert state["peak"] == 2, state  # parallel, but never more than two at once
    assert time.time() - t0 >= 4 * 0.3


# -- S3 ------------------------------------------------------------------------------------------
def test_s3_prefix_is_listed_and_downloaded(tmp_path, s3):
    s3.pipe({"bucket/raw/a.mp4": VIDEO, "bucket/raw/sub/b.jpg": JPEG, "bucket/raw/notes.txt": b"x",
             "bucket/other/c.mp4": VIDEO})
    sources = read_inputs(["s3://bucket/raw/"])
    assert sorted(r["uri"] for r in sources) == ["s3://bucket/raw/a.mp4", "s3://bucket/raw/sub/b.jpg"]
    rows = _run([DownloadStage, ProbeStage], sources, _cfg(tmp_path))
    assert [r["error_class"] for r in rows] == [None, None]
    by = {r["uri"]: r for r in rows}
    assert by["s3://bucket/raw/a.mp4"]["sha256"] == hashlib.sha256(VIDEO).hexdigest()
    assert by["s3://bucket/raw/a.mp4"]["source_path"].startswith(str(tmp_path / "work" / "staging"))
    assert by["s3://bucket/raw/sub/b.jpg"]["media_type"] == "image" and by["s3://bucket/raw/sub/b.jpg"]["width"] == 64


# -- probing -------------------------------------------------------------------------------------
def _video_with_audio_and_rotation(path: Path) -> None:
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=12)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        v.set_display_rotation(-90)  # counter-clockwise -90: shown turned 90 degrees clockwise
        a = c.add_stream("aac", rate=16000)
        for i in range(12):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 20, np.uint8), format="rgb24")
            for p in v.encode(frame):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        samples = np.sin(np.linspace(0, 400, 16000, dtype=np.float32))[None]
        for k in range(0, 16000, 1024):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, k:k + 1024]), format="fltp", layout="mono")
            af.sample_rate, af.pts = 16000, k
            for p in a.encode(af):
                c.mux(p)
        for p in a.encode():
            c.mux(p)


def test_probe_records_bitrate_audio_and_rotation(tmp_path):
    _video_with_audio_and_rotation(tmp_path / "r.mp4")
    (tmp_path / "silent.mp4").write_bytes(VIDEO)
    rows = _run([DownloadStage, ProbeStage], read_inputs([str(tmp_path / "r.mp4"), str(tmp_path / "silent.mp4")]),
                _cfg(tmp_path))
    by = {Path(r["uri"]).name: r for r in rows}
    r, s = by["r.mp4"], by["silent.mp4"]
    assert r["error_class"] is None, r["error"]
    assert (r["has_audio"], r["audio_codec"], r["rotation"]) == (True, "aac", 90)
    assert (s["has_audio"], s["audio_codec"], s["rotation"]) == (False, None, 0)
    assert r["bitrate"] and s["bitrate"] and 1_000 < s["bitrate"] < 10_000_000
    cat = _commit(_cfg(tmp_path), rows)
    assert cat.query_dicts("SELECT has_audio, audio_codec, rotation FROM sources WHERE uri LIKE '%r.mp4'") == [
        {"has_audio": True, "audio_codec": "aac", "rotation": 90}]
    cat.close()


def test_a_codec_without_decoder_is_unsupported_codec(tmp_path):
    # The container names EVC (MPEG-5), which this FFmpeg demuxes but has no decoder for.
    i = VIDEO.index(b"avc1", VIDEO.index(b"stsd"))
    (tmp_path / "evc.mp4").write_bytes(VIDEO[:i] + b"evc1" + VIDEO[i + 4:])
    [row] = _run([DownloadStage, ProbeStage], read_inputs([str(tmp_path / "evc.mp4")]), _cfg(tmp_path))
    assert (row["error_class"], row["error_stage"]) == ("unsupported_codec", "probe")


def test_exif_orientation_is_applied_to_sizes_and_pixels(tmp_path):
    data = _jpeg_bytes(64, 32, orientation=6)  # stored landscape, displayed portrait
    (tmp_path / "o.jpg").write_bytes(data)
    [row] = _run([DownloadStage, ProbeStage], read_inputs([str(tmp_path / "o.jpg")]), _cfg(tmp_path))
    assert (row["width"], row["height"], row["rotation"]) == (32, 64, 90)
    arr = load_image_rgb(io.BytesIO(data))
    assert arr.shape == (64, 32, 3)
    assert arr[2, 16, 2] > 150 and arr[-3, 16, 2] < 100, "the blue left band is on top after a clockwise turn"


def _png_declaring(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def test_decompression_bombs_are_too_large(tmp_path):
    (tmp_path / "bomb.png").write_bytes(_png_declaring(30_000, 30_000))  # Pillow's own limit
    (tmp_path / "big.png").write_bytes(_png_declaring(3000, 3000))  # only our configured limit
    rows = _run([DownloadStage, ProbeStage], read_inputs([str(tmp_path / "bomb.png"), str(tmp_path / "big.png")]),
                _cfg(tmp_path, **{"ingest.max_pixels": 4_000_000}))
    assert [r["error_class"] for r in rows] == ["too_large", "too_large"]
    [row] = _run([DownloadStage, ProbeStage], read_inputs([str(tmp_path / "bomb.png")]),
                 _cfg(tmp_path, **{"ingest.max_pixels": 10**12}))
    assert row["error_class"] == "too_large" and "bomb" in row["error"].lower()


# -- CLI: re-queue only one error class ------------------------------------------------------------
def test_ingest_retry_failed_requeues_only_that_class(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from vidcorpus.jobs.curate import pipeline
    from vidcorpus.cli.app import app

    (tmp_path / "urls.txt").write_text("".join(f"https://example.com/{n}.mp4\n" for n in ("a", "b", "c")))
    sources = read_inputs([str(tmp_path / "urls.txt")])
    work = tmp_path / "work"
    with Catalog(work / "catalog.duckdb") as cat:
        rows = [dict(sources[0], error_class="timeout", error="slow", error_stage="download"),
                dict(sources[1], error_class="http_4xx", error="404", error_stage="download")]
        cat.commit_results("r0", rows + [sources[2]])
        cat.mark_sources_done([sources[2]["source_id"]])
    queued: list[list[str]] = []
    # Stop at the boundary to Ray: record which sources the job would process.
    monkeypatch.setattr(pipeline, "_process", lambda cfg, cat, run_id, todo, *a: queued.append([r["uri"] for r in todo]))
    monkeypatch.setattr(pipeline, "resolve_models", lambda m, **_kw: m)
    monkeypatch.setattr(pipeline, "preflight_pipeline", lambda m, *_a: None)
    cli = CliRunner()
    base = ["ingest", str(tmp_path / "urls.txt"), "--workdir", str(work), "--no-progress"]
    for extra in (["--retry-failed", "--error-class", "timeout"], ["--retry-failed"], []):
        result = cli.invoke(app, base + extra)
        assert result.exit_code == 0, result.output
    assert queued == [["https://example.com/a.mp4"], ["https://example.com/a.mp4", "https://example.com/b.mp4"],
                      ["https://example.com/a.mp4", "https://example.com/b.mp4"]]
    bad = cli.invoke(app, base + ["--error-class", "timeout"])
    assert bad.exit_code == 2 and "--retry-failed" in bad.output


# Resume after SIGKILL of the driver (at download, scoring, catalog commit and shard write) and after
# Ray workers are killed mid-task: tests/test_kill_points.py.
