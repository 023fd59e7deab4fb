"""Shot detection fed a batch of frames at a time: one hand-over between threads per batch, not per frame.

PySceneDetect's ``SceneManager`` decodes on one thread and runs the detectors on another, handing
over each frame through a queue; the scaler pool, TransNetV2's feeder and the flash watch each took
their frames one at a time too. Below 720p a frame decodes in a fraction of what those hand-overs
cost: every one is a lock and, on an idle many-core host, a sleeping thread to wake, and the
threads then queue for the GIL. On an H100 host detection ran at 0.37 of decoding alone on 360p
footage (docs/benchmarks.md, ``shot_speed_resolution_h100``).

Here the decoding thread collects ``batch`` decoded frames and submits them as ONE task to the
scaler pool, which makes everything the readers need from them, outside the decoding thread and
mostly outside the GIL (FFmpeg's scaler and OpenCV release it): the detectors' small BGR frames
with their HSV planes, HSV sums against the frame before, luma histograms and their correlation
with the frame before's (``DetectionFrame``) and the flash watch's luma grids. TransNetV2 gets the
same small BGR frames (frames of the default size of its own when ``split.downscale`` is set), a
batch at a time, and shrinks them to its 48x27 input itself (``transnet_input.model_frames``). The reading thread then runs the detectors on each prepared batch in
decode order, one batch per pool thread behind the decoding. Every value is the one the per-frame
path computes (the same calls on the same frames), so the cuts are the same
(tests/test_detect_batches.py). Measured on H100 hosts (docs/benchmarks.md, "Shot detection read
in batches", its second round and the fourth): default + TransNetV2 at 0.50 to 0.60 of decoding
alone at 360p (0.36 before the batches), 0.63 to 0.78 at 540p. At 360p on a GPU node the decoding
and the scaling run in a child process instead (``ingest/decode_process.py``, the fifth round).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from vidcorpus.ingest import scale_ahead
from vidcorpus.ingest.scale_ahead import scaler_pool
from vidcorpus.ingest.thumbnails import THUMB_H, THUMB_W, luma_grid
from vidcorpus.media import detection_frame

AHEAD: int | None = None  # batches submitted and not yet consumed (None: one per pool thread); in flight: AHEAD + 1
FRAME_BUDGET = 8_000_000  # decoded pixels a batch aims at: 16 frames at 360p, 8 at 720p, 2 (the floor) at 4K
MAX_BATCH = 16
GRID_SHAPE = (4 * THUMB_H, 4 * THUMB_W)  # a luma grid's (thumbnails.luma_grid)


class DetectionFrame(np.ndarray):
    """A detector's BGR frame that carries what the exact detectors would compute from it:
    ``hsv`` and, against the frame at position ``hsv_delta_from``, the summed absolute difference
    of each HSV plane (``ingest/exact_scores.py``'s content score), ``luma_hist`` (the histogram
    detector's) and its correlation with the histogram of the frame at ``luma_correl_from``. The
    reading thread then makes no OpenCV call of its own: each gives the GIL up and, while the pool
    runs, waits to get it back (on an H100 host that wait was most of the detectors' time)."""

    hsv: np.ndarray | None = None
    hsv_delta: tuple[float, float, float] | None = None
    hsv_delta_from: int | None = None
    luma_hist: np.ndarray | None = None
    luma_correl: float | None = None
    luma_correl_from: int | None = None


@dataclass(frozen=True)
class BatchPlan:
    """What each batch of decoded frames is turned into (decided once per stream)."""

    size: tuple[int, int] | None  # the detectors' frame (w, h); None when no detector reads frames
    turn: int  # clockwise degrees that make the frames upright
    hsv: bool
    hist_bins: int | None  # luma histogram bins, None: no histogram detector
    transnet_size: tuple[int, int] | None  # the frame (w, h) TransNetV2 shrinks to its 48x27; None: no TransNetV2
    grids: bool  # the flash watch's luma grids


@dataclass
class BatchTimes:
    """Seconds the reading thread spent decoding (or waiting for a decoding child's batches), waiting
    for prepared batches and running the detectors, and the pool's seconds preparing them; a decoding
    child's seconds decoding, waiting for a free slot and for its scaling (bench/profile_shot_gil.py
    sets ``TIMES``)."""

    frames: int = 0
    decode_s: float = 0.0
    wait_s: float = 0.0
    consume_s: float = 0.0
    prepare_s: float = 0.0
    child_decode_s: float = 0.0
    child_wait_free_s: float = 0.0
    child_wait_scaled_s: float = 0.0


TIMES: BatchTimes | None = None  # when set, every detect_batched adds its times here


@dataclass
class PreparedBatch:
    numbers: list[int]  # per frame: frames read once it is (the stream's count)
    frames: list | None
    transnet: np.ndarray | None  # the detectors' frames again, for TransNetV2 (it shrinks them)
    grids: list | None
    seconds: float = 0.0  # the pool thread's time making it


def plan_for(video, detectors: list, transnet_stream=None, flashes=None) -> BatchPlan:
    """What the readers of ``video`` need from each frame: the exact detectors' HSV frames and
    histograms (``ingest/exact_scores.py``), any detector's frames, TransNetV2's, the flash watch's."""
    # inside: scenedetect only in the workers that detect shots
    from vidcorpus.ingest.exact_scores import ExactContextualHistogramDetector, _ExactContentScore

    hist = [d._bins for d in detectors if isinstance(d, ExactContextualHistogramDetector)]
    # inside: transnet_input imports torch lazily; the size only
    from vidcorpus.ingest.transnet_input import source_frame

    return BatchPlan(video.frame_size if detectors else None, video.turn,
                     hsv=any(isinstance(d, _ExactContentScore) for d in detectors),
                     hist_bins=hist[0] if hist else None,
                     transnet_size=source_frame(*video.coded_size, video.turn)[:2] if transnet_stream is not None else None,
                     grids=flashes is not None)


class Scratch:
    """Batch-sized arrays of one stream, handed out again once nothing refers to them any more.

    Why: a fresh array of a batch (16 frames at 256x144: 1.8 MB) is above malloc's threshold for
    keeping freed memory, so each one came from the kernel page by page: on the pool, 27 page
    faults and about 110 µs of a frame's preparing (a third of it), the copy into the stacked
    batch holding the GIL meanwhile. An array is free when its reference count shows only this
    list: a detector or a later batch that still reads a frame of it holds a view, and a view holds
    its base array."""

    def __init__(self, keep: int = 8):
        self._arrays: list[np.ndarray] = []
        self._keep = keep
        self._lock = threading.Lock()  # the pool's threads take from one stream's scratch

    def take(self, shape: tuple[int, ...], dtype=np.uint8) -> np.ndarray:
        """A uint8 array of ``shape`` that no one else refers to (contents undefined); other types: a fresh one."""
        if dtype != np.uint8:
            return np.empty(shape, dtype)
        with self._lock:
            for array in self._arrays:  # (a plain loop: enumerate's reused tuple would hold a reference)
                if array.shape == shape and sys.getrefcount(array) == 3:  # the list, ``array``, the call's argument
                    return array
            array = np.empty(shape, np.uint8)
            if len(self._arrays) < self._keep:
                self._arrays.append(array)
            return array


def batches_ahead() -> int:
    """Batches submitted and not yet consumed: one a pool thread unless ``AHEAD`` says otherwise."""
    return AHEAD or scale_ahead.SCALER_THREADS


def batch_frames(width: int, height: int) -> int:
    return max(2, min(MAX_BATCH, FRAME_BUDGET // max(1, width * height)))


def prepare(decoded: list[tuple[int, object]], plan: BatchPlan, previous: Future | None = None,
            scratch: Scratch | None = None) -> PreparedBatch:
    """Everything the readers take from ``decoded`` ((count, av.VideoFrame) in decode order); runs on
    a pool thread. ``previous``: the batch submitted just before, whose last HSV frame the first
    frame's content sums are measured against (it started first: the pool takes tasks in order).
    ``scratch``: the stream's reusable batch arrays (None: fresh ones)."""
    started = time.perf_counter()
    scratch = scratch or Scratch(keep=0)
    bgr, transnet, grids = scale_batch([f for _n, f in decoded], plan, scratch.take)
    return _finish([n for n, _f in decoded], bgr, transnet, grids, plan, previous, scratch, started)


def prepare_copied(numbers: list[int], bgr: np.ndarray | None, transnet: np.ndarray | None, grids: np.ndarray | None,
                   plan: BatchPlan, previous: Future | None, scratch: Scratch, copied_out=None) -> PreparedBatch:
    """``prepare`` of a batch that ``scale_batch`` made in the decoding process (``ingest/decode_process.py``):
    its arrays, in a shared slot the process writes the next batches into, are copied out first, then
    ``copied_out()`` (the slot is free)."""
    started = time.perf_counter()

    def copied(array: np.ndarray | None) -> np.ndarray | None:
        if array is None:
            return None
        out = scratch.take(array.shape, array.dtype)
        np.copyto(out, array)
        return out

    bgr, transnet, grids = copied(bgr), copied(transnet), copied(grids)
    if copied_out is not None:
        copied_out()
    return _finish(numbers, bgr, transnet, grids, plan, previous, scratch, started)


def batch_layout(plan: BatchPlan, n: int) -> list[tuple[tuple[int, ...], type] | None]:
    """(shape, dtype) of the arrays ``scale_batch`` makes of ``n`` frames, in its order: the detectors'
    frames, TransNetV2's when it reads another size, the luma grids; None for each the plan leaves out
    (the decoding process's ring lays its slots out by it)."""
    return [((n, plan.size[1], plan.size[0], 3), np.uint8) if plan.size is not None else None,
            ((n, plan.transnet_size[1], plan.transnet_size[0], 3), np.uint8)
            if plan.transnet_size is not None and plan.transnet_size != plan.size else None,  # else it reads bgr
            ((n, *GRID_SHAPE), np.float32) if plan.grids else None]


def scale_batch(frames: list, plan: BatchPlan, take) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """FFmpeg's part of a batch (``av.VideoFrame``s): the arrays of ``batch_layout`` (TransNetV2's None
    where it reads the detectors'), each in an array that ``take(shape, dtype)`` gives. On a pool
    thread, or in the decoding process."""
    bgr_of, transnet_of, grids_of = batch_layout(plan, len(frames))
    bgr = _scaled(frames, plan.size, plan.turn, take(*bgr_of)) if bgr_of else None
    transnet = _scaled(frames, plan.transnet_size, plan.turn, take(*transnet_of)) if transnet_of else None
    grids = np.stack([luma_grid(f) for f in frames], out=take(*grids_of)) if grids_of else None
    return bgr, transnet, grids


def _finish(numbers: list[int], bgr: np.ndarray | None, transnet: np.ndarray | None, grids: np.ndarray | None,
            plan: BatchPlan, previous: Future | None, scratch: Scratch, started: float) -> PreparedBatch:
    out = PreparedBatch(numbers, None, None, None if grids is None else list(grids))
    if bgr is not None:
        out.frames = _detection_frames(bgr, numbers, plan, previous, scratch)
    if plan.transnet_size is not None:  # (transnet_input.model_frames shrinks them where the model runs)
        out.transnet = bgr if transnet is None else transnet
    out.seconds = time.perf_counter() - started
    return out


def _scaled(frames: list, size: tuple[int, int], turn: int, out: np.ndarray) -> np.ndarray:
    """``out``: the (n, h, w, 3) upright BGR frames of ``size`` (``media.detection_frame``)."""
    w, h = size
    return np.stack([detection_frame(f, w, h, turn) for f in frames], out=out)


def _detection_frames(bgr: np.ndarray, numbers: list[int], plan: BatchPlan, previous: Future | None,
                      scratch: Scratch) -> list:
    """The detectors' frames (views of the batch ``bgr``) with what the exact detectors compute."""
    # inside: the exact detectors' histogram (imports scenedetect, as the detectors themselves do)
    from vidcorpus.ingest.exact_scores import luma_histogram_of

    n, h, w, _ = bgr.shape
    tall = lambda a: a.reshape(-1, w, 3)  # noqa: E731 - a batch as one image: one call (per-pixel, so the same values)
    hsv = yuv = sums = None
    if plan.hsv:
        hsv = scratch.take((n, h, w, 3))
        cv2.cvtColor(tall(bgr), cv2.COLOR_BGR2HSV, dst=tall(hsv))
        if n > 1:  # the content score's sums of each frame against the one before: one absdiff, one sum per plane
            diff = scratch.take((n - 1, h, w, 3))
            cv2.absdiff(tall(hsv[1:]), tall(hsv[:-1]), dst=tall(diff))
            sums = cv2.reduce(diff.reshape(n - 1, h * w, 3), 1, cv2.REDUCE_SUM, dtype=cv2.CV_64F)
    if plan.hist_bins is not None:
        yuv = scratch.take((n, h, w, 3))
        cv2.cvtColor(tall(bgr), cv2.COLOR_BGR2YUV, dst=tall(yuv))
    out = []
    for i in range(n):
        frame = bgr[i].view(DetectionFrame)
        if hsv is not None:
            frame.hsv = hsv[i]
            if i > 0:  # integers below 2**53: the same doubles as exact_scores' sumElems of one frame's difference
                frame.hsv_delta, frame.hsv_delta_from = tuple(sums[i - 1, 0].tolist()), numbers[i] - 2
        if yuv is not None:
            frame.luma_hist = luma_histogram_of(yuv[i], bins=plan.hist_bins)
            if i > 0:
                _correl(frame, out[i - 1].luma_hist, numbers[i])
        out.append(frame)
    if previous is not None and (hsv is not None or yuv is not None):  # last: the batch before may still be running
        last = previous.result().frames[-1]
        if hsv is not None:
            _sums(out[0], last.hsv, numbers[0])
        if yuv is not None:
            _correl(out[0], last.luma_hist, numbers[0])
    return out


def _sums(frame: DetectionFrame, last_hsv: np.ndarray, number: int) -> None:
    """The content score's HSV sums of ``frame`` (read as frame ``number``) against the frame before."""
    frame.hsv_delta = cv2.sumElems(cv2.absdiff(frame.hsv, last_hsv))[:3]
    frame.hsv_delta_from = number - 2  # positions are counts minus one


def _correl(frame: DetectionFrame, last_hist: np.ndarray, number: int) -> None:
    """The histogram detector's correlation of ``frame`` (read as frame ``number``) with the frame before."""
    frame.luma_correl = cv2.compareHist(last_hist, frame.luma_hist, cv2.HISTCMP_CORREL)
    frame.luma_correl_from = number - 2


def read_batch(video, count: int, end_frame: int | None, start: int) -> tuple[list[tuple[int, object]], bool]:
    """Up to ``count`` frames of ``video`` (``advance()``: (count read, av.VideoFrame)) and whether it
    ended: its last frame read, or ``end_frame`` (exclusive) reached from ``start``."""
    decoded = []
    while len(decoded) < count:
        # SceneManager reads a frame before it checks the end: at least one is read
        if end_frame is not None and video.decoded >= end_frame and video.decoded > start:
            return decoded, True
        got = video.advance()
        if got is None:
            return decoded, True
        decoded.append(got)
    return decoded, False


class BatchFeed(Protocol):
    """Where ``detect_batched``'s batches come from: decoded here (``_DecodeHere``) or in a child
    process (``decode_process.ChildFeed``)."""

    ended: bool  # no batch left to submit

    def submit(self, pool, plan: BatchPlan, previous: Future | None, scratch: Scratch) -> Future | None:
        """The next batch's preparing (a ``PreparedBatch`` to come), submitted to ``pool``; None: none left."""

    def consumed(self, future: Future, batch: PreparedBatch) -> None:
        """``future``'s ``batch`` was taken: what it held may be reused, the stream's position moves."""

    def close(self) -> None:
        """The pass ended, or failed: let go of what the feed holds."""


class _DecodeHere:
    """Batches decoded on the calling thread and scaled on the pool (``prepare``)."""

    def __init__(self, video, end_frame: int | None, per_batch: int):
        self.video, self.end_frame, self.per_batch = video, end_frame, per_batch
        self.start, self.ended = video.decoded, False

    def submit(self, pool, plan: BatchPlan, previous: Future | None, scratch: Scratch) -> Future | None:
        """The next batch's preparing, submitted; None when no frame was left."""
        decoded, self.ended = read_batch(self.video, self.per_batch, self.end_frame, self.start)
        return pool.submit(prepare, decoded, plan, previous, scratch) if decoded else None

    def consumed(self, future: Future, batch: PreparedBatch) -> None:
        """Nothing to give back: ``advance`` moved the stream."""

    def close(self) -> None:
        """Nothing held."""


def detect_batched(video, detectors: list, end_frame: int | None, plan: BatchPlan, transnet_stream=None,
                   flashes=None, feed: BatchFeed | None = None) -> None:
    """Read ``video`` (an ``ingest/scaled_stream.ScaledStream``) from where it stands to ``end_frame``
    (exclusive; None: its end), feeding ``detectors`` (PySceneDetect's, each frame in order with its
    position), ``transnet_stream`` and ``flashes``; then the detectors' ``post_process``. The
    detectors' cuts are what they return (``ingest/cut_evidence.record_cuts`` keeps them).
    ``feed``: where the batches come from (None: decoded here; ``ingest/decode_process.py``: in a child)."""
    # inside: scenedetect only in the workers that detect shots
    from scenedetect import FrameTimecode

    pool, pending, scratch = scaler_pool(), deque(), Scratch()
    ahead, per_batch = batches_ahead(), batch_frames(*video.coded_size)
    feed = feed or _DecodeHere(video, end_frame, per_batch)
    last = None  # the batch submitted last (the next one's content sums start from its last frame)
    fps = video.frame_rate

    def consume(batch: PreparedBatch) -> None:
        if batch.transnet is not None:
            transnet_stream.push_arrays(batch.transnet)
        if batch.grids is not None:
            flashes.push_grids(batch.grids)
        for n, frame in zip(batch.numbers, batch.frames or ()):
            position = FrameTimecode(n - 1, fps=fps)
            for detector in detectors:
                detector.process_frame(position, frame)

    times = TIMES
    clock = time.perf_counter
    try:
        while pending or not feed.ended:
            while not feed.ended and len(pending) < ahead:
                t0 = clock()
                future = feed.submit(pool, plan, last, scratch)
                if future is not None:
                    last = future
                    pending.append(future)
                if times is not None:
                    times.decode_s += clock() - t0
            if pending:
                t0 = clock()
                future = pending[0]
                batch = future.result()
                pending.popleft()  # (after: an interrupted wait leaves it to the finally's)
                feed.consumed(future, batch)
                t1 = clock()
                consume(batch)
                if times is not None:
                    times.wait_s += t1 - t0
                    times.consume_s += clock() - t1
                    times.prepare_s += batch.seconds
                    times.frames += len(batch.numbers)
    finally:
        for future in pending:  # an error: let the pool finish what it holds before the stream closes
            future.cancel() or future.exception()
        feed.close()
    end_position = FrameTimecode(max(0, video.decoded - 1), fps=fps)  # SceneManager's (0 when none read)
    for detector in detectors:
        detector.post_process(end_position)
