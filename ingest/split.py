"""Shot detection with PySceneDetect: one source row becomes one row per single shot."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import ClassVar

import fsspec

from vidcorpus.errors import DecodeError
from vidcorpus.ids import clip_id, image_clip_id
from vidcorpus.stage import Resources, Stage


@contextlib.contextmanager
def local_copy(url: str):
    """A local path for libraries that need one; remote files are copied to a temp file."""
    fs, path = fsspec.core.url_to_fs(url)
    if fs.protocol in ("file", ("file", "local")) or "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        yield path
        return
    suffix = os.path.splitext(path)[1]
    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
        fs.get_file(path, tmp.name)
        yield tmp.name


def detect_shots(path: str, cfg) -> list[tuple[int, int]]:
    """Inclusive (first_frame, last_frame) of each shot, hard cuts and (optionally) fades."""
    from scenedetect import AdaptiveDetector, ContentDetector, HistogramDetector, SceneManager, open_video

    try:
        video = open_video(path, backend="pyav")
    except Exception as e:  # noqa: BLE001 - scenedetect wraps many decoder errors
        raise DecodeError(f"cannot open for shot detection: {e}") from e
    manager = SceneManager()
    if cfg.detector == "adaptive":
        manager.add_detector(AdaptiveDetector(adaptive_threshold=cfg.adaptive_threshold, min_scene_len=cfg.min_shot_frames))
    elif cfg.detector == "content":
        manager.add_detector(ContentDetector(threshold=cfg.content_threshold, min_scene_len=cfg.min_shot_frames))
    else:
        manager.add_detector(HistogramDetector(threshold=cfg.histogram_threshold, min_scene_len=cfg.min_shot_frames))
    if cfg.fade_detection and cfg.detector != "histogram":
        manager.add_detector(HistogramDetector(threshold=cfg.histogram_threshold, min_scene_len=cfg.min_shot_frames))
    manager.detect_scenes(video, show_progress=False)
    total = video.frame_number  # frames decoded
    cuts = sorted({start.frame_num for start, _end in manager.get_scene_list(start_in_scene=True)[1:]})
    cuts = _merge_close(cuts, cfg.min_shot_frames)
    bounds = [0, *[c for c in cuts if 0 < c < total], total]
    segments = [(a, b - 1) for a, b in zip(bounds, bounds[1:]) if b > a]
    # A short segment between two detected cuts is the transition itself (a fade or dissolve seen by
    # both detectors), not a shot: training on half-blended frames teaches the model dissolves.
    inner = range(1, len(segments) - 1)
    return [s for i, s in enumerate(segments) if i not in inner or s[1] - s[0] + 1 >= cfg.transition_max_frames]


def _merge_close(cuts: list[int], min_gap: int) -> list[int]:
    """Two detectors can report the same transition a few frames apart: keep the first."""
    merged: list[int] = []
    for c in cuts:
        if not merged or c - merged[-1] >= min_gap:
            merged.append(c)
    return merged


def split_long(first: int, last: int, fps: float, max_seconds: float) -> list[tuple[int, int]]:
    """Cut a shot longer than max_seconds into near-equal pieces."""
    n = last - first + 1
    max_frames = max(1, int(max_seconds * fps))
    if n <= max_frames:
        return [(first, last)]
    pieces = -(-n // max_frames)
    size = -(-n // pieces)
    return [(s, min(s + size - 1, last)) for s in range(first, last + 1, size)]


class SplitStage(Stage):
    """Source rows in, clip rows out (clip_id, frame range, times)."""

    name: ClassVar[str] = "split"
    resources: ClassVar[Resources] = Resources(cpus=0.5)

    def process_row(self, row: dict) -> list[dict]:
        if row["media_type"] == "image":
            return [dict(row, clip_id=image_clip_id(row["source_id"]), first_frame=0, last_frame=0, start_s=0.0, end_s=0.0)]
        cfg = self.config.split
        with local_copy(row["source_path"]) as path:
            shots = detect_shots(path, cfg)
        if not shots:
            raise DecodeError("no decodable frames")
        fps = row["fps"] or 25.0
        clips = []
        for first, last in shots:
            for a, b in split_long(first, last, fps, cfg.max_clip_seconds):
                clips.append(dict(row, clip_id=clip_id(row["source_id"], a, b), first_frame=a, last_frame=b,
                                  start_s=a / fps, end_s=(b + 1) / fps))
        return clips
