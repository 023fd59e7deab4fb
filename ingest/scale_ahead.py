"""Decoded frames scaled on helper threads while the next ones decode, handed out in order.

PySceneDetect reads frames on one thread: decode, then FFmpeg's scaler makes the small BGR frame
the detectors see, then the next decode. At 720p that scaling (an area average of the whole
frame) is the decode thread's largest cost, larger than the 48x27 scaling of decoding alone
(bench/bench_shot_threads.py), so the decode thread, not the detectors, bounded detection. The
scaler releases the GIL; here each frame's scaling is submitted to a small pool as soon as the
frame is decoded, ``depth`` frames ahead of the one handed out. Each pool thread keeps its own
scaler context (``frame_seek.reformatter`` is per thread), so every array is the one the decode
thread would have made.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import cv2

# a quarter of the cores, 2 to 4: on a 16-core GPU host one stream's batches (ingest/detect_batches.py)
# kept the reading thread waiting with 2 (bench/profile_shot_gil.py); more only queue for the GIL
# (the cores this process may run on; a Ray task's fractional CPU share is not seen here)
SCALER_THREADS = max(2, min(4, len(os.sched_getaffinity(0)) // 4 if hasattr(os, "sched_getaffinity")
                            else (os.cpu_count() or 2) // 4))
# OpenCV's own threads once the pool exists (see scaler_pool); None leaves OpenCV's default (a measuring
# knob: bench/child_knobs/sitecustomize.py)
OPENCV_THREADS: int | None = 1
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def scaler_pool() -> ThreadPoolExecutor:
    """The process's pool of scaling threads (shared by every stream; created on first use).

    Creating it sets OpenCV's own threads to one for the process: this pool is the parallelism, and
    each batch's OpenCV calls (a colour conversion of 16 frames at once) otherwise wake OpenCV's
    pool of one thread a core under every pool thread. On a 16-core H100 host that made default +
    TransNetV2 at 360p 12 to 19% slower, with 27 to 46% more CPU a frame (docs/benchmarks.md, "sixth
    round"). The scorers' frame workers set the same (``filters/frame_decoder.py``)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            if OPENCV_THREADS is not None:
                cv2.setNumThreads(OPENCV_THREADS)
            _POOL = ThreadPoolExecutor(max_workers=SCALER_THREADS, thread_name_prefix="detect-scale")
        return _POOL


class ScaleAhead:
    """``(number, frame, future array)`` in decode order, up to ``depth`` decoded ahead.

    ``decode_next()`` returns ``(number, frame)`` for the next decoded frame or None at the end;
    ``scale(frame)`` is what the pool computes for each."""

    def __init__(self, decode_next: Callable[[], tuple[int, object] | None], scale: Callable, depth: int = 4):
        self._decode_next, self._scale, self._depth = decode_next, scale, depth
        self._ahead: deque[tuple[int, object, Future | None]] = deque()
        self._ended = False

    def next(self, scaled: bool) -> tuple[int, object, Future | None] | None:
        """The next frame, its number and (``scaled``) its array to come; None at the end."""
        if scaled:
            while len(self._ahead) < self._depth and not self._ended:
                got = self._decode_next()
                if got is None:
                    self._ended = True
                    break
                self._ahead.append((*got, scaler_pool().submit(self._scale, got[1])))
        if self._ahead:
            return self._ahead.popleft()
        got = None if self._ended else self._decode_next()
        if got is None:
            self._ended = True
            return None
        return (*got, None)
