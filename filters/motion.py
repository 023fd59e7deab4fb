"""Motion scores from dense optical flow (OpenCV Farneback), for dropping static or shaky clips.

At about filters.motion_fps (at least three points per clip when it has them) a frame and the
frame right after it are downscaled to filters.motion_width pixels wide (aspect kept); for each pair:
  per-pair motion  = mean per-pixel flow magnitude / frame interval (1/fps)
Adjacent frames keep displacements small: Farneback underestimates large ones (a pan of 14 px
between frames 0.5 s apart read as 3 px here), which would make fast clips look slow.
Scores (model "farneback"):
  motion         mean over pairs of per-pair motion, in PIXELS PER SECOND AT motion_width
                 (so 128 px/s at the default width means content crossing the whole frame in 1 s)
  motion_static  1.0 if motion < filters.motion_static_threshold, else 0.0
  motion_jitter  mean change of the global motion (per-pair median flow vector, px/s) between
                 consecutive sample points, px/s: ~0 for still shots and steady pans, high for shake
                 (0.0 when a clip has only one pair)
  motion_jittery 1.0 if motion_jitter > filters.motion_jitter_threshold, else 0.0
Images have no motion: the stage leaves them unscored and the recipe's missing policy decides.
"""

from __future__ import annotations

from typing import ClassVar

import cv2
import numpy as np

from vidcorpus.errors import DecodeError
from vidcorpus.filters.scorers import clip_fps, sample_pairs
from vidcorpus.filters.motion_frames import (motion_frame_indices, motion_gray, motion_starts, resize_gray,
                                             take_motion_frames)
from vidcorpus.filters.source_scoring import from_source, score_from_source
from vidcorpus.media import is_image
from vidcorpus.schemas import add_scores, score
from vidcorpus.nvdec import NvdecShare
from vidcorpus.stage import Resources, Stage

MOTION_VERSION = "motion-v1"
MOTION_MODEL = "farneback"


def motion_scores(pairs: list[tuple[np.ndarray, np.ndarray]], dt: float, width: int,
                  static_threshold: float, jitter_threshold: float = float("inf")) -> dict[str, float]:
    """Score name -> value from (frame, later frame) pairs `dt` seconds apart; needs one pair."""
    gray = [(resize_gray(a, width), resize_gray(b, width)) for a, b in pairs]
    return motion_scores_gray(gray, dt, static_threshold, jitter_threshold)


def motion_scores_gray(pairs: list[tuple[np.ndarray, np.ndarray]], dt: float, static_threshold: float,
                       jitter_threshold: float = float("inf")) -> dict[str, float]:
    """``motion_scores`` of pairs already shrunk to grey at motion_width (``resize_gray``)."""
    if not pairs:
        raise DecodeError("motion needs at least two frames")
    speeds, global_flow = [], []
    for a, b in pairs:
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        speeds.append(float(np.linalg.norm(flow, axis=2).mean()) / dt)
        global_flow.append(np.median(flow.reshape(-1, 2), axis=0) / dt)
    motion = float(np.mean(speeds))
    jitter = float(np.mean(np.linalg.norm(np.diff(global_flow, axis=0), axis=1))) if len(global_flow) > 1 else 0.0
    return {"motion": motion, "motion_static": float(motion < static_threshold), "motion_jitter": jitter,
            "motion_jittery": float(jitter > jitter_threshold)}


class MotionStage(NvdecShare, Stage):
    """Optical-flow motion scores per video clip (CPU); images pass through unscored."""

    name: ClassVar[str] = "motion"
    resources: ClassVar[Resources] = Resources(cpus=0.5)
    # a source's clips come together (the splitter emits them in one block): one decode of the source;
    # clips of a source split over batches still continue one decode (vidcorpus/source_frames.py)
    whole_blocks: ClassVar[bool] = True

    def process_rows(self, rows: list[dict]) -> list[dict]:
        """Clips without a file read their pairs from the source (filters/source_scoring.py): from
        the technical stage's decode when it ran on these rows in this process, else decoding."""
        deferred = [r for r in rows if from_source(r)]
        others = [r for r in rows if not from_source(r)]
        out = [r for row in others for r in self.safe_call(self.process_row, row)]
        handed = {r["clip_id"]: g for r in deferred if (g := take_motion_frames(r, self.config)) is not None}
        out += [r for row in deferred if row["clip_id"] in handed
                for r in self.safe_call(lambda x: self._score_gray(x, handed[x["clip_id"]]), row)]
        return out + score_from_source(self, [r for r in deferred if r["clip_id"] not in handed],
                                       lambda r: motion_frame_indices(r, self.config), self._score_source_frames)

    def _score_source_frames(self, row: dict, frames: dict) -> dict:
        return self._score_gray(row, motion_gray(row, frames, self.config))

    def _score_gray(self, row: dict, gray: dict) -> dict:
        cfg = self.config.filters
        fps, _n = clip_fps(row, "")
        pairs = [(gray[i], gray[i + 1]) for i in motion_starts(row, self.config) if i in gray and i + 1 in gray]
        values = motion_scores_gray(pairs, 1.0 / fps, cfg.motion_static_threshold, cfg.motion_jitter_threshold)
        return add_scores(row, [score(k, v, MOTION_MODEL, MOTION_VERSION) for k, v in values.items()])

    def process_row(self, row: dict) -> dict:
        if is_image(row):
            return row
        if not row.get("clip_path"):
            raise DecodeError("row has no clip_path")
        cfg = self.config.filters
        pairs, dt = sample_pairs(row, cfg.motion_fps, cfg.max_sample_frames)
        values = motion_scores(pairs, dt, cfg.motion_width, cfg.motion_static_threshold, cfg.motion_jitter_threshold)
        return add_scores(row, [score(k, v, MOTION_MODEL, MOTION_VERSION) for k, v in values.items()])
