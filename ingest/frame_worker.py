"""A thread that consumes decoded frames in order, so their work overlaps the decoding.

Shot detection decodes each frame once and hands it to several readers. A reader whose work is
mostly outside the GIL (FFmpeg's scaler, a model call that waits on the GPU) would otherwise run
in series with the decoder on one thread: TransNetV2's 48x27 scaling and its model calls cost
the decode loop more than half its speed on an H100 host (docs/benchmarks.md, issue 23). Here
the decode thread only queues the frame (a reference, no copy); the worker does the rest, in
decode order, so what it computes is exactly what the same calls in the decode thread would.

The queue is bounded (``depth`` frames held at most), so memory does not grow when the worker is
the slower side: the decode then waits. An error in the worker is raised in the decode thread at
its next ``put`` or at ``close``.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

_DONE = object()


class FrameWorker:
    """``fn(item)`` for each item ``put``, in order, on one background thread."""

    def __init__(self, fn: Callable[[Any], None], depth: int = 32, name: str = "frame-worker"):
        self._fn = fn
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (item := self._queue.get()) is not _DONE:
            if self._error is None:  # after an error, items are only drained (the producer is told at its next put)
                try:
                    self._fn(item)
                except BaseException as e:  # noqa: BLE001 - handed to the producer's thread
                    self._error = e

    def put(self, item: Any) -> None:
        self._raise()
        self._queue.put(item)

    def close(self) -> None:
        """Wait until every item is done; raise the worker's error, if any. Idempotent."""
        if self._thread.is_alive():
            self._queue.put(_DONE)
            self._thread.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
