"""Run the serve app on a free loopback port in a thread (the tests' server), and read its pages."""

from __future__ import annotations

import re
import threading
import time


class ThreadServer:
    """uvicorn serving ``app`` on 127.0.0.1 in a daemon thread; ``url`` once started."""

    def __init__(self, app):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def card_ids(html: str) -> list[str]:
    """Clip ids of the grid's cards, in page order."""
    return re.findall(r'<figure class="card [a-z]+" data-clip="([0-9a-z-]+)"', html)
