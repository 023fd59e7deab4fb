"""Scorer stages read video clips that have no file yet from their source (filter before you encode).

Clips reach the scorers unextracted (``extract_mode = "deferred"``, no ``clip_path``): extraction
runs after the recipe's decision, for kept clips only. The technical and motion stages group such
rows by source and take the frames they sample from one in-order decode of the source
(``vidcorpus.source_frames``), at the clip frame indices they would have decoded from the clip
file. The technical stage also writes what extraction used to write for every clip from frames
that decode already delivers: the first-frame JPEG (the report shows it for dropped clips too) and
the stills file of the K frames the model scorers sample (``vidcorpus.stills``), so the CLIP,
text-overlay and NSFW scorers read that small JPEG instead of decoding anything.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

import cv2
import numpy as np

from vidcorpus.errors import DecodeError
from vidcorpus.filters.scorers import clip_fps, sample_indices
from vidcorpus.ids import is_safe_key
from vidcorpus.media import is_image, save_jpeg, uniform_indices
from vidcorpus.source_frames import DEFERRED, decoder_for, stream_clip_frames, with_geometry
from vidcorpus.stills import encode_stills, still_size
from vidcorpus.storage import write_atomic


def from_source(row: dict) -> bool:
    """A video clip without a file: its frames come from the source."""
    return not is_image(row) and not row.get("clip_path") and bool(row.get("source_path"))


def technical_indices(row: dict, cfg) -> list[int]:
    fps, n = clip_fps(row, "")
    return sample_indices(n, fps, cfg.filters.motion_fps, cfg.filters.max_sample_frames)


def still_indices(row: dict, cfg) -> list[int]:
    """Frame 0 (the first-frame JPEG) and the K frames the model scorers sample."""
    _fps, n = clip_fps(row, "")
    return sorted({0, *(uniform_indices(n, cfg.filters.frames_per_clip) if cfg.filters.still_size else [])})


def score_from_source(stage, rows: list[dict], wanted: Callable[[dict], list[int]],
                      score: Callable[[dict, dict[int, np.ndarray]], dict]) -> list[dict]:
    """``score(row, {clip frame: RGB})`` for every row, one decode per source; a row whose scoring
    raises fails alone, a source that cannot be decoded fails its rows."""
    split_cfg = stage.config.split
    rows = [with_geometry(dict(r, extract_mode=r.get("extract_mode") or DEFERRED), split_cfg) for r in rows]
    by_source: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_source[r["source_path"]].append(r)
    out: list[dict] = []
    for source_rows in by_source.values():
        plan = {r["clip_id"]: wanted(r) for r in source_rows}
        done: set[str] = set()
        try:
            for row, frames in stream_clip_frames(source_rows, plan, split_cfg,
                                                  stage.config.filters.skip_unread_frames,
                                                  **decoder_for(source_rows, stage.config.filters)):
                done.add(row["clip_id"])
                out.extend(stage.safe_call(lambda r, f=frames: score(r, f), row))
        except Exception as exc:  # noqa: BLE001 - the source failed to decode: its remaining rows fail
            out.extend(stage.fail(r, exc) for r in source_rows if r["clip_id"] not in done)
    return out


def frames_at(frames: dict[int, np.ndarray], indices: list[int]) -> tuple[list[int], np.ndarray]:
    """The indices the source delivered and their frames stacked; DecodeError when none."""
    idx = [i for i in indices if i in frames]  # containers may announce more frames than decode
    if not idx:
        raise DecodeError("clip has no decodable frames")
    return idx, np.stack([frames[i] for i in idx])


def write_stills(row: dict, frames: dict[int, np.ndarray], cfg) -> dict:
    """The row with its first-frame JPEG and stills file written from already decoded frames (as
    precise extraction writes them: the frames as they go to the encoder, shrunk with OpenCV's area
    filter, one JPEG q95 4:4:4)."""
    clip = row["clip_id"]
    if not is_safe_key(clip):  # clip ids name files: never a path from input
        raise ValueError(f"clip id {clip!r} is not a safe key")
    if 0 not in frames:
        raise DecodeError("the clip's first frame could not be decoded")
    first_url = cfg.url("staging", "clips", f"{clip}.first.jpg")
    save_jpeg(frames[0], first_url)
    stills_url = None
    _fps, n = clip_fps(row, "")
    wanted = uniform_indices(n, cfg.filters.frames_per_clip) if cfg.filters.still_size else []
    if wanted and all(i in frames for i in wanted):
        stills_url = cfg.url("staging", "clips", f"{clip}.stills.jpg")
        # no fsync, as extraction writes clips: a stills file lost to a power cut is written again
        stills = encode_stills([_shrink(frames[i], cfg.filters.still_size) for i in wanted])
        write_atomic(stills_url, stills, fsync=False)
    return dict(row, first_frame_path=first_url, stills_path=stills_url)


def _shrink(rgb: np.ndarray, short_side: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    sw, sh = still_size(w, h, short_side)
    if (sw, sh) == (w, h):
        return rgb

    return cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_AREA)
