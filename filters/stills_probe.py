"""Are a clip's stills the frames the scorer would decode? Checked on the job's first stills clip.

The stills (vidcorpus/stills.py) are a cache of the K frames the model scorers sample, written at
extraction. The scorer trusts them instead of decoding the clip; a bug in either writer or reader
(another frame order, a resize of the wrong frame, a changed JPEG library) would change every score
without an error. So the first clip of a job that has stills is also decoded, and the two sets of
frames compared at the stills' size; when they differ by more than the two codings explain, the
stills fast path switches itself off for the job (vidcorpus/fast_paths.py) and the scorer decodes
every clip.
"""

from __future__ import annotations

import cv2
import numpy as np

from vidcorpus.fast_paths import switch_off, usable
from vidcorpus.filters.clip_frames import clip_frame_list, load_stills, read_clip

# Mean absolute difference (0-255) allowed between stills and the decoded clip frames shrunk to the
# stills' size: the stills are taken before H.264 encoding and stored as JPEG (quality 95, 4:4:4),
# measured at 0.5 to 2.7 for the JPEG alone (vidcorpus/stills.py); another frame differs by tens.
MAX_MEAN_ABS_DIFF = 8.0


def stills_difference(row: dict, k: int) -> float | None:
    """Mean absolute difference between the row's stills and its decoded sampled frames, or None when
    the row has no readable stills."""
    stills = load_stills(row, k)
    if stills is None:
        return None
    data, _ = read_clip(row)
    frames = clip_frame_list(row, data, k)
    diffs = []
    for still, frame in zip(stills, frames):
        h, w = still.shape[:2]
        small = cv2.resize(np.ascontiguousarray(frame), (w, h), interpolation=cv2.INTER_AREA)
        diffs.append(float(np.abs(small.astype(np.int16) - still.astype(np.int16)).mean()))
    return float(np.mean(diffs)) if diffs else None


class StillsCheck:
    """Once per job (per stage instance): the first row with stills is compared with its clip; rows
    lose their stills for the rest of the job when the stills path is off (versions or probe)."""

    def __init__(self, k: int):
        self.k = k
        self.on = usable("stills")
        self.checked = not self.on

    def rows(self, rows: list[dict]) -> list[dict]:
        if not self.checked:
            self._check(rows)
        if self.on:
            return rows
        return [dict(r, stills_path=None) if r.get("stills_path") else r for r in rows]

    def _check(self, rows: list[dict]) -> None:
        for row in rows:
            if not row.get("stills_path") or row.get("error_class"):
                continue
            try:
                diff = stills_difference(row, self.k)
            except Exception:  # noqa: BLE001 - an unreadable clip fails its row in the scorer, not here
                continue
            if diff is None:
                continue
            self.checked = True
            if diff > MAX_MEAN_ABS_DIFF:
                self.on = False
                switch_off("stills", f"clip {row.get('clip_id')}'s stills differ from its decoded frames by "
                                     f"{diff:.1f} on average (at most {MAX_MEAN_ABS_DIFF:g} expected)")
            return
