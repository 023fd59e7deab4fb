"""Helpers shared by the scorer stages (technical.py, motion.py, clip_scores.py): a clip's frame
rate and count, which frames to sample, and decoding them. A score entry and adding it to a row
(``score``, ``add_scores``) are the row format's, in ``vidcorpus/schemas.py``; ``is_image`` is
``vidcorpus/media.py``'s.
"""

from __future__ import annotations

import math

import fsspec
import numpy as np

from vidcorpus.errors import DecodeError
from vidcorpus.media import decode_indices, probe_video

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
