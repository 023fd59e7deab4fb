"""How different two frames are once a camera pan between them is allowed for.

A pan moves the picture; a cut replaces it. On the flash filter's 8x6 grey thumbnails
(``ingest/thumbnails.py``) a whip pan changes every block as much as a cut does, so a plain difference
cannot tell them apart: compared with the other frame shifted by whole thumbnail blocks (each an
eighth of the width, a sixth of the height), the panned picture matches again where a new shot
does not. The cut-evidence check (``ingest/cut_evidence.py``) and the flash filter read it.
"""

from __future__ import annotations

import numpy as np

from vidcorpus.ingest.thumbnails import THUMB_H, THUMB_W


def shifted_distance(a: np.ndarray, b: np.ndarray, max_dx: int = 2, max_dy: int = 1, mean_abs: bool = False) -> float:
    """Smallest RMS (or mean absolute) grey difference between thumbnails ``a`` and ``b`` (flat
    ``THUMB_H * THUMB_W`` rows or 2-D), ``b`` shifted by up to ``max_dx`` columns and ``max_dy``
    rows, over the blocks both cover."""
    a = np.asarray(a, np.float32).reshape(THUMB_H, THUMB_W)
    b = np.asarray(b, np.float32).reshape(THUMB_H, THUMB_W)
    best = np.inf
    for dy in range(-max_dy, max_dy + 1):
        for dx in range(-max_dx, max_dx + 1):
            d = (a[max(0, dy):THUMB_H + min(0, dy), max(0, dx):THUMB_W + min(0, dx)]
                 - b[max(0, -dy):THUMB_H + min(0, -dy), max(0, -dx):THUMB_W + min(0, -dx)])
            best = min(best, float(np.abs(d).mean() if mean_abs else np.sqrt((d ** 2).mean())))
    return best


def pan_explains(thumbs: np.ndarray, k: int, min_spike: float = 2.0) -> bool:
    """Whether the change from frame ``k - 1`` to frame ``k`` is camera movement rather than a cut:
    once a pan is allowed for, it is not ``min_spike`` times the changes of the frame pairs just
    before and after it (a cut stands out from both sides; a whip pan spreads over several frames)."""
    if not 1 <= k < len(thumbs):
        return False
    at = shifted_distance(thumbs[k - 1], thumbs[k])
    sides = [shifted_distance(thumbs[j - 1], thumbs[j]) for j in (k - 1, k + 1) if 1 <= j < len(thumbs)]
    return at < min_spike * max([*sides, 0.5])
