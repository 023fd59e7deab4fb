"""Helpers shared by the scorer stages, and the import point of the stages themselves.

The stages live in one module each (technical.py, motion.py, clip_scores.py); importing them from
here (``from vidcorpus.filters.scorers import MotionStage``) is lazy so no module loads torch
unless it scores with a model.
"""

from __future__ import annotations

import math

import fsspec
import numpy as np

from vidcorpus.errors import DecodeError
from vidcorpus.media import IMAGE_EXTS, decode_indices, probe_video

__all__ = ["ClipScoreStage", "MotionStage", "TechnicalStage", "add_scores", "is_image", "sample_frames", "sample_pairs",
           "score"]


def score(scorer: str, value: float, model: str, version: str) -> dict:
    """One entry of row["scores"]; non-finite values are a bug in the scorer, not data."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"score {scorer} is not finite: {value}")
    return {"scorer": scorer, "model": model, "version": version, "value": value}


def add_scores(row: dict, new: list[dict]) -> dict:
    """Row with `new` appended; older entries of the same scorers are replaced (re-scoring a clip)."""
    names = {s["scorer"] for s in new}
    kept = [s for s in (row.get("scores") or []) if s["scorer"] not in names]
    return dict(row, scores=kept + new)


def is_image(row: dict) -> bool:
    if row.get("media_type") == "image":
        return True
    path = (row.get("clip_path") or "").lower()
    return any(path.endswith(ext) for ext in IMAGE_EXTS)


def clip_fps(row: dict, path: str) -> tuple[float, int]:
    """(fps, frame count) of the clip file: from the row when extraction recorded them, else probed."""
    fps = row.get("clip_fps") or row.get("fps")
    n = row.get("clip_frames")
    if n is None and row.get("first_frame") is not None and row.get("last_frame") is not None:
        n = int(row["last_frame"]) - int(row["first_frame"]) + 1
    if not fps or not n:
        with fsspec.open(path, "rb") as f:
            info = probe_video(f)
        fps = fps or info["fps"] or 25.0
        n = n or info["n_frames"] or 0
    return float(fps), int(n)


def sample_indices(n: int, fps: float, target_fps: float, max_frames: int) -> list[int]:
    """Frame indices at about `target_fps` over n frames: at least 3 when the clip has them, at most
    `max_frames` (the step grows for long clips)."""
    if n <= 0:
        return []
    step = max(1, round(fps / target_fps))
    if n >= 3:
        step = min(step, (n - 1) // 2)  # short clips: still three frames
    if max_frames > 1 and n > step * (max_frames - 1) + 1:
        step = math.ceil((n - 1) / (max_frames - 1))
    return list(range(0, n, step))[: max(1, max_frames)]


def decode_frames(path: str, indices: list[int]) -> dict[int, np.ndarray]:
    """RGB arrays of the wanted frame indices; a clip with none decodable is a DecodeError."""
    got = decode_indices(path, indices) if indices else {}
    if indices and not got:
        raise DecodeError("clip has no decodable frames")
    return got


def sample_frames(row: dict, target_fps: float, max_frames: int) -> tuple[np.ndarray, float]:
    """Frames of row["clip_path"] at about `target_fps` and the seconds between two of them."""
    fps, n = clip_fps(row, row["clip_path"])
    idx = sample_indices(n, fps, target_fps, max_frames)
    got = decode_frames(row["clip_path"], idx)
    idx = [i for i in idx if i in got]  # containers may announce more frames than decode
    dt = (idx[1] - idx[0]) / fps if len(idx) > 1 else 1.0 / fps
    return np.stack([got[i] for i in idx]), dt


def sample_pairs(row: dict, target_fps: float, max_pairs: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], float]:
    """(frame, next frame) pairs at about `target_fps`, and the seconds between the two of a pair.

    Adjacent frames keep displacements small, where dense flow is accurate; sampling the pairs
    at target_fps keeps the cost bounded.
    """
    fps, n = clip_fps(row, row["clip_path"])
    starts = [i for i in sample_indices(n - 1, fps, target_fps, max_pairs)]
    got = decode_frames(row["clip_path"], sorted({j for i in starts for j in (i, i + 1)}))
    pairs = [(got[i], got[i + 1]) for i in starts if i in got and i + 1 in got]
    return pairs, 1.0 / fps


def __getattr__(name: str):
    if name == "ClipScoreStage":
        from vidcorpus.filters.clip_scores import ClipScoreStage

        return ClipScoreStage
    if name == "MotionStage":
        from vidcorpus.filters.motion import MotionStage

        return MotionStage
    if name == "TechnicalStage":
        from vidcorpus.filters.technical import TechnicalStage

        return TechnicalStage
    raise AttributeError(name)
