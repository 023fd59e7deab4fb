"""Jump cuts the detectors miss: one frame-to-frame change that stands out from the second around it.

A jump cut from a static or slow camera (frames cut out of one take) changes the picture a little,
once: PySceneDetect's adaptive detector ignores changes under its ``min_content_val`` floor and the
histogram detector sees no change of tones, so both missed two of the wide shot benchmark's jump
cuts (docs/benchmarks.md). On the flash filter's grey thumbnails (``ingest/flash.py``, kept for
every frame of the one streamed decode) such a cut is the same evidence that confirms a histogram
cut (``ingest/cut_evidence.py``): the largest change within a frame either side, ``min_ratio``
times the median change of the frames around it, and no pan explaining it. Flashes are removed
afterwards like every detector's cuts. An absolute floor (``min_change`` grey levels RMS on the
8x6 thumbnails) keeps compression noise in still shots from counting, and a change next to a
repeated frame (frame-rate conversion duplicates frames: bigbuckbunny.mp4 does) carries two frames'
motion at once, so it is no jump.
"""

from __future__ import annotations

import numpy as np

from vidcorpus.ingest.camera_shift import pan_explains
from vidcorpus.ingest.cut_evidence import frame_changes, jump_ratio


def thumbnail_jumps(thumbs: np.ndarray, min_gap: int, min_ratio: float = 4.0, min_change: float = 5.0) -> list[int]:
    """Frames that start a new picture by a one-frame jump (``thumbs`` row ``i`` is frame ``i``), at
    least ``min_gap`` frames apart (the larger jump wins)."""
    grey = thumbs.astype(np.float32)
    diffs = frame_changes(grey)  # [k]: frame k to k + 1
    if len(diffs) < 3:
        return []
    peak = (diffs >= min_change) & (diffs >= np.maximum(np.r_[0, diffs[:-1]], np.r_[diffs[1:], 0]))
    found: list[int] = []
    for k in np.flatnonzero(peak) + 1:  # the frame the change leads into
        if jump_ratio(diffs, int(k)) < min_ratio or pan_explains(grey, int(k)) or _next_to_repeat(diffs, int(k)):
            continue
        if found and k - found[-1] < min_gap:
            if diffs[k - 1] <= diffs[found[-1] - 1]:
                continue
            found.pop()
        found.append(int(k))
    return found


def _next_to_repeat(diffs: np.ndarray, k: int, context: int = 12) -> bool:
    """Whether the change into frame ``k`` has a repeated frame beside it: a neighbouring change under a
    tenth of the usual change around it (which counts as at least 0.5 grey levels RMS)."""
    around = np.r_[diffs[max(0, k - 2 - context):max(0, k - 2)], diffs[k + 1:k + 1 + context]]
    usual = max(float(np.median(around)) if len(around) else 0.0, 0.5)
    sides = [diffs[j] for j in (k - 2, k) if 0 <= j < len(diffs)]
    return bool(sides) and min(sides) < 0.1 * usual
