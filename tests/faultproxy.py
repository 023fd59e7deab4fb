"""A loopback HTTP proxy that injects storage faults in front of a moto S3 server (tests only).

Each request is numbered; ``plan(n, method, path, query)`` answers None (forward it), an HTTP
status (answer with an S3-style error body instead of forwarding), "reset" (close the connection
without a response, with an RST) or ("stall", seconds) (wait, then forward). Every decision is
recorded in ``events`` so tests can say how many faults were injected.
"""

from __future__ import annotations

import http.client
import http.server
import socket
import struct
import threading
import time
from typing import Callable
from urllib.parse import urlsplit

Plan = Callable[[int, str, str, str], object]
HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


class FaultProxy:
    def __init__(self, upstream: str, plan: Plan):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.plan = plan
        self.events: list[tuple[int, str, str, object]] = []
        self._n = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path, _, query = self.path.partition("?")
                with proxy._lock:
                    proxy._n += 1
                    n = proxy._n
                action = proxy.plan(n, self.command, path, query)
                proxy.events.append((n, self.command, self.path, action))
                if action == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if isinstance(action, tuple) and action[0] == "stall":
                    time.sleep(action[1])
                elif isinstance(action, int):
                    code = "SlowDown" if action == 503 else "InternalError"
                    payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                               f"<Message>injected fault</Message></Error>").encode()
                    self.send_response(action)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                conn.request(self.command, self.path, body=body if body or self.command in ("PUT", "POST") else None,
                             headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                # HEAD answers carry the object's length, not the (empty) body's
                length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def faults(self) -> int:
        return sum(1 for e in self.events if e[3] is not None)
