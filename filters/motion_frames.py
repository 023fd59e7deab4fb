"""The motion stage's frames: which ones, shrunk to grey, and their hand-over from the technical stage.

The motion stage compares each sampled frame with the frame right after it, shrunk to grey at
``filters.motion_width``. The technical stage's one decode of a source takes these frames too and
hands them over (``give_motion_frames``), so the motion stage, which runs right after it on the
same rows, decodes nothing (``filters/source_scoring.py`` reads unextracted clips from the source).
"""

from __future__ import annotations

from collections import OrderedDict

import cv2
import numpy as np

from vidcorpus.filters.scorers import clip_fps, sample_indices
from vidcorpus.source_frames import with_geometry


def resize_gray(frame: np.ndarray, width: int) -> np.ndarray:
    h, w = frame.shape[:2]
    height = max(2, round(h * width / w))
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    return cv2.resize(gray, (width, height), interpolation=cv2.INTER_AREA)


def motion_starts(row: dict, cfg) -> list[int]:
    fps, n = clip_fps(row, "")
    return sample_indices(n - 1, fps, cfg.filters.motion_fps, cfg.filters.max_sample_frames)


def motion_frame_indices(row: dict, cfg) -> list[int]:
    return sorted({j for i in motion_starts(row, cfg) for j in (i, i + 1)})


def motion_gray(row: dict, frames: dict[int, np.ndarray], cfg) -> dict[int, np.ndarray]:
    """The motion stage's frames of a clip, shrunk to grey at filters.motion_width (all it reads)."""
    return {i: resize_gray(frames[i], cfg.filters.motion_width) for i in motion_frame_indices(row, cfg) if i in frames}


# One decode for both CPU scorers: the technical stage's pass also takes the motion stage's frames
# (grey, motion_width wide: about 10 KB each) and leaves them here for the motion stage, which runs
# right after it on the same rows (Ray Data fuses the two task stages into one task, so in the
# same process; in-process callers too). A motion stage that finds no entry decodes the source
# itself. Bounded: the oldest entries go first.
_HANDOFF: "OrderedDict[tuple, dict[int, np.ndarray]]" = OrderedDict()
HANDOFF_MAX = 512


def _handoff_key(row: dict, cfg) -> tuple:
    f = cfg.filters
    return (row["clip_id"], row.get("source_path"), f.motion_fps, f.max_sample_frames, f.motion_width,
            row.get("clip_fps"), row.get("clip_frames"), row.get("clip_width"), row.get("clip_height"))


def give_motion_frames(row: dict, gray: dict[int, np.ndarray], cfg) -> None:
    _HANDOFF[_handoff_key(row, cfg)] = gray
    while len(_HANDOFF) > HANDOFF_MAX:
        _HANDOFF.popitem(last=False)


def take_motion_frames(row: dict, cfg) -> dict[int, np.ndarray] | None:
    return _HANDOFF.pop(_handoff_key(with_geometry(row, cfg.split), cfg), None)
