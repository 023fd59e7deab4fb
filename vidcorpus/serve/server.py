"""Start the app under uvicorn: checks first (bind, token, catalog), then serve until stopped."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time

import uvicorn

from vidcorpus.serve.app import ServeSettings, make_app
from vidcorpus.serve.security import check_bind
from vidcorpus.storage import is_url, local_path


def media_roots(workdir: str, catalog: str, extra: list[str] | None = None) -> list[str]:
    """Where clip files and shards may be served from: the workdir, the catalog's folder, any extra."""
    roots = [workdir]
    if not is_url(catalog):
        roots.append(os.path.dirname(os.path.abspath(local_path(catalog))))
    return roots + list(extra or [])


SETTINGS_ENV = "VIDCORPUS_SERVE_SETTINGS"
"""How ``serve --workers N`` hands its settings to its worker processes."""


def serve(settings: ServeSettings, port: int, log_level: str = "warning", workers: int = 1) -> None:
    """Serve until interrupted. Refuses (security.Refused) a non-loopback bind without a token.

    ``workers`` > 1 runs that many processes on one listening socket: a page's Python (templates,
    HTTP) holds its process's GIL, so one process uses about one core however many requests wait.
    Each worker has its own read connection, caches and grid columns (memory x N); they share the
    file read-only, and a label or a job waits for all of them through the writer's marker
    (``catalog/store.py``), as for any reader."""
    check_bind(settings.host, settings.token)
    app = make_app(settings)  # opens the catalog once (migrations, labels table) and closes it
    if workers <= 1:
        uvicorn.run(app, host=settings.host, port=port, log_level=log_level, access_log=False,
                    timeout_graceful_shutdown=5)
        return
    app.state.access.close()
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    env = {**os.environ, SETTINGS_ENV: json.dumps(dataclasses.asdict(settings))}
    code = f"from vidcorpus.serve.server import _worker; _worker({sock.fileno()}, {log_level!r})"
    def stop(signum, frame):  # `kill` stops the workers too, as Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    children = [subprocess.Popen([sys.executable, "-c", code], env=env, pass_fds=[sock.fileno()])
                for _ in range(workers)]
    try:
        while all(c.poll() is None for c in children):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for c in children:
            if c.poll() is None:
                c.terminate()  # uvicorn shuts down gracefully on SIGTERM
        for c in children:
            try:
                c.wait(timeout=10)
            except subprocess.TimeoutExpired:
                c.kill()
        sock.close()


def _worker(fd: int, log_level: str) -> None:
    """One worker process of ``serve --workers N``: the app on the parent's listening socket."""
    app = make_app(ServeSettings(**json.loads(os.environ.pop(SETTINGS_ENV))))
    uvicorn.Server(uvicorn.Config(app, fd=fd, log_level=log_level, access_log=False,
                                  timeout_graceful_shutdown=5)).run()
