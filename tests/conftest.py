"""Shared fixtures: synthetic media with known shots, a loopback HTTP server, a tiny-model cache."""

from __future__ import annotations

import http.server
import os
import threading
from pathlib import Path

import pytest

from parallel_scopes import (  # noqa: F401 (the hooks that split the suite between xdist workers)
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_configure_node,
    pytest_unconfigure,
    pytest_xdist_make_scheduler,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One intra-op thread for torch (OpenMP) in the test processes and in what they start (Ray workers,
# torchrun ranks and drivers inherit it; Ray gives its workers one such thread a CPU anyway): the tiny
# models' ops gain nothing from a second thread, and two xdist workers each running two OpenMP
# threads oversubscribe the 2-core CI box (tests/test_train.py's in-process runs took about 1.4x the
# CPU and 1.7x the time with two). Set before any test module imports torch; a value set outside wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> str:
    """One tiny-model cache for the whole session (built on first use, like a user's ~/.cache)."""
    path = os.environ.get("VIDCORPUS_TEST_CACHE") or str(tmp_path_factory.mktemp("model-cache"))
    os.environ["VIDCORPUS_CACHE"] = path
    return path


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict:
    from vidcorpus.synth import make_corpus

    return make_corpus(tmp_path_factory.mktemp("corpus"))


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder, plus a few paths that misbehave on purpose."""

    routes: dict = {}

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):  # noqa: N802
        route = self.routes.get(self.path.split("?")[0])
        if route is None:
            return super().do_GET()
        status, headers, body = route
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def http_server(tmp_path):
    """A loopback HTTP server over tmp_path/www; add misbehaving routes via server.routes."""
    root = tmp_path / "www"
    root.mkdir()
    handler = type("H", (_Handler,), {"routes": {}})

    def factory(*a, **kw):
        return handler(*a, directory=str(root), **kw)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), factory)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.root = Path(root)
    server.routes = handler.routes
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture()
def s3_credentials() -> dict:
    """The AWS credentials the `s3` fixture exports (a test module may override this fixture)."""
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing"}


@pytest.fixture()
def s3(monkeypatch, s3_credentials):
    """A moto S3 server on 127.0.0.1 with an empty bucket named `bucket`; AWS_* variables point at it."""
    from moto.server import ThreadedMotoServer

    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    import requests

    # moto keeps its buckets in process-wide state that outlives a server: start from nothing
    requests.post(f"http://{host}:{port}/moto-api/reset", timeout=10).raise_for_status()
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    for key, value in {**s3_credentials, "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL": f"http://{host}:{port}"}.items():
        monkeypatch.setenv(key, value)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir("bucket")
    yield fs
    s3fs.S3FileSystem.clear_instance_cache()
    srv.stop()


@pytest.fixture(scope="session")
def demo(tmp_path_factory, model_cache):
    """The demo, run once per test session (it starts a local Ray and builds the tiny models)."""
    from vidcorpus.jobs.demo import run_demo

    out = run_demo(tmp_path_factory.mktemp("demo"), steps=20, progress=False)
    yield out
    import ray

    ray.shutdown()


@pytest.fixture(scope="session")
def serve_built(tmp_path_factory, model_cache) -> dict:
    """A small real catalog with shards for the `vidcorpus serve` tests (tests/serve_corpus.py), built once."""
    from serve_corpus import build_serve_catalog

    return build_serve_catalog(tmp_path_factory.mktemp("serve"), model_cache)
