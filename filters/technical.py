"""Technical scores: geometry, duration, sharpness, exposure, letterboxing and frozen frames.

Scores (all floats, appended to row["scores"] with model "opencv"):
  width, height, aspect (width/height), min_side, duration_s, fps  -- from the row where set, else measured
  blur          variance of the Laplacian of the luma, mean over sampled frames, at native resolution
                (LOWER = blurrier; it also grows with fine texture, so compare within a resolution)
  brightness    mean luma, 0..255, over sampled frames
  black_border  fraction of the frame area covered by near-black bars touching the edges
                (letterbox/pillarbox); a bar is a row/column where every channel stays below 20 in
                every frame (luma alone called a dark-blue sky a border: blue weighs 0.114 in it)
  frozen        fraction of consecutive sampled frame pairs that are identical (mean |diff| < 1 luma)
Images are one-frame clips: they get no duration_s, fps or frozen (the recipe's missing policy decides).
"""

from __future__ import annotations

from typing import ClassVar

import cv2
import numpy as np

from vidcorpus.errors import DecodeError
from vidcorpus.filters.scorers import sample_frames
from vidcorpus.filters.motion_frames import give_motion_frames, motion_frame_indices, motion_gray
from vidcorpus.filters.source_scoring import (frames_at, from_source, score_from_source, still_indices, technical_indices,
                                              write_stills)
from vidcorpus.image_clip import image_clip
from vidcorpus.media import is_image, read_frames
from vidcorpus.schemas import add_scores, score
from vidcorpus.nvdec import NvdecShare
from vidcorpus.stage import Resources, Stage

TECHNICAL_VERSION = "technical-v2"  # v2: black_border measures the brightest channel, not luma
TECHNICAL_MODEL = "opencv"
BLACK_LEVEL = 20  # a letterbox bar: every channel below this in every sampled frame
FROZEN_DIFF = 1.0  # mean absolute luma difference under which two sampled frames count as identical


def luma(frames: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 BT.601 luma of (N, H, W, 3) uint8 RGB frames (kept in uint8: the scores below
    read it with OpenCV's integer paths; a float32 copy and numpy's diff over it were half of the
    technical stage's CPU, bench/stage_cpu.py)."""
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])


def blur_score(gray: np.ndarray) -> float:
    return float(np.mean([cv2.Laplacian(g, cv2.CV_32F).var() for g in gray]))


def _edge_run(dark: np.ndarray) -> int:
    """Length of the run of True at the start of a 1-D mask."""
    idx = np.flatnonzero(~dark)
    return int(idx[0]) if idx.size else int(dark.size)


def black_border_fraction(frames: np.ndarray) -> float:
    """Area fraction of near-black bars at the edges (rows top/bottom, columns left/right).

    ``frames``: (N, H, W, 3) RGB. Black means every channel is dark: a saturated dark colour
    (deep blue has a luma of 0.114 x its blue) is picture, not border.
    """
    # per pixel, the brightest channel in any frame (a bar is dark in every frame; dark content
    # moments are not bars). Over frames first, then channels with np.maximum: numpy's max over a
    # last axis of 3 was two thirds of the technical stage's time at 720p (0.37 s against 6 ms).
    brightest = frames.max(axis=0)
    if brightest.ndim == 3:
        brightest = np.maximum(np.maximum(brightest[..., 0], brightest[..., 1]), brightest[..., 2])
    h, w = brightest.shape
    dark_rows = brightest.max(axis=1) < BLACK_LEVEL
    dark_cols = brightest.max(axis=0) < BLACK_LEVEL
    top = _edge_run(dark_rows)
    if top == h:
        return 1.0
    bottom = _edge_run(dark_rows[::-1])
    left = _edge_run(dark_cols)
    right = _edge_run(dark_cols[::-1])
    inner = (h - top - bottom) * (w - left - right)
    return float(1.0 - inner / (h * w))


def frozen_fraction(gray: np.ndarray) -> float | None:
    """Share of consecutive sampled frame pairs whose mean absolute luma difference is under
    FROZEN_DIFF (exact: integer sums of uint8 differences)."""
    if len(gray) < 2:
        return None
    pixels = gray[0].size
    diffs = [cv2.sumElems(cv2.absdiff(a, b))[0] / pixels for a, b in zip(gray[:-1], gray[1:])]
    return float(np.mean(np.asarray(diffs) < FROZEN_DIFF))


def technical_scores(row: dict, frames: np.ndarray) -> dict[str, float]:
    """Score name -> value for one clip given its sampled frames."""
    h, w = frames.shape[1:3]
    width = float(row.get("clip_width") or row.get("width") or w)
    height = float(row.get("clip_height") or row.get("height") or h)
    gray = luma(frames)
    out = {
        "width": width,
        "height": height,
        "aspect": width / height,
        "min_side": min(width, height),
        "blur": blur_score(gray),
        "brightness": float(gray.mean(dtype=np.float64)),
        "black_border": black_border_fraction(frames),
    }
    if not is_image(row):
        if row.get("start_s") is not None and row.get("end_s") is not None and row["end_s"] > row["start_s"]:
            out["duration_s"] = float(row["end_s"] - row["start_s"])
        elif row.get("duration_s"):
            out["duration_s"] = float(row["duration_s"])
        if row.get("clip_fps") or row.get("fps"):
            out["fps"] = float(row.get("clip_fps") or row["fps"])
        frozen = frozen_fraction(gray)
        if frozen is not None:
            out["frozen"] = frozen
    return out


class TechnicalStage(NvdecShare, Stage):
    """Per-clip technical measurements (CPU, OpenCV), from frames sampled at about filters.motion_fps.

    Video clips without a file are read from their source (filters/source_scoring.py), which also
    writes their first-frame JPEG and stills; an image gets its clip file here (a JPEG, as before)."""

    name: ClassVar[str] = "technical"
    resources: ClassVar[Resources] = Resources(cpus=0.5)
    # a source's clips come together (the splitter emits them in one block): one decode of the source;
    # clips of a source split over batches still continue one decode (vidcorpus/source_frames.py)
    whole_blocks: ClassVar[bool] = True

    def process_rows(self, rows: list[dict]) -> list[dict]:
        deferred = [r for r in rows if from_source(r)]
        others = [r for r in rows if not from_source(r)]
        out = [r for row in others for r in self.safe_call(self.process_row, row)]
        # the motion stage's frames come from the same decode (handed over in-process)
        return out + score_from_source(self, deferred, lambda r: sorted({*technical_indices(r, self.config),
                                                                          *still_indices(r, self.config),
                                                                          *motion_frame_indices(r, self.config)}),
                                       self._score_source_frames)

    def _score_source_frames(self, row: dict, frames: dict) -> dict:
        give_motion_frames(row, motion_gray(row, frames, self.config), self.config)
        row = write_stills(row, frames, self.config)
        _idx, sampled = frames_at(frames, technical_indices(row, self.config))
        values = technical_scores(row, sampled)
        return add_scores(row, [score(k, v, TECHNICAL_MODEL, TECHNICAL_VERSION) for k, v in values.items()])

    def process_row(self, row: dict) -> dict:
        if is_image(row) and not row.get("clip_path") and row.get("source_path"):
            row = image_clip(row, self.config)  # images are cheap to "extract": every image keeps its file
        if not row.get("clip_path"):
            raise DecodeError("row has no clip_path")
        cfg = self.config.filters
        if is_image(row):
            frames = read_frames(row["clip_path"], n=1)
        else:
            frames, _dt = sample_frames(row, cfg.motion_fps, cfg.max_sample_frames)
        values = technical_scores(row, frames)
        return add_scores(row, [score(k, v, TECHNICAL_MODEL, TECHNICAL_VERSION) for k, v in values.items()])
