"""Camera flashes are not cuts: a cut that only brackets a few bright frames is dropped.

Every detector (PySceneDetect's and TransNetV2 alike) takes a photographer's flash, a strobe or a
lightning bolt for a cut: a few frames far brighter than their neighbours, with the same picture
before and after. ``FlashWatch`` keeps an 8x6 grey thumbnail of every decoded frame (48 bytes a
frame, block means of a sparse grid of its luma plane, fed by the same decode as the detectors), and ``real_cuts`` drops a cut when, around it,
at most ``max_frames`` frames are all clearly brighter than the frames just before and just after
them, and those two frames show the same picture. It also keeps each frame's fine detail (the sampled
grid's difference from its block means), which the dissolve finder reads (``ingest/dissolve.py``).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

import numpy as np

from vidcorpus.ingest.camera_shift import shifted_distance
from vidcorpus.ingest.thumbnails import THUMB_H, THUMB_W, luma_grid

BATCH = 256  # frames whose grids wait to be reduced together (768 bytes each)


@dataclass
class FlashWatch:
    """Per-frame thumbnails from the streamed decode, then the cuts that are not flashes."""

    max_frames: int = 4  # a flash lasts at most this many frames
    lift: float = 25.0  # flash frames are this much brighter (mean grey level) than both neighbours
    # Mean absolute grey difference (8x6 thumbnails) under which the two neighbours show one picture.
    # Measured on bikes.mp4 and transnetv2's test.mp4: frames 4 apart in one moving shot differ by up
    # to 25 (95% under 20); cuts between different shots by 33 to 90; close-up/wide cuts of one scene
    # by 21 to 23, so a flash exactly at such a cut would hide it: the brightness rule does the work.
    same: float = 30.0
    _thumbs: bytearray = field(default_factory=bytearray)
    _detail: array = field(default_factory=lambda: array("f"))  # 4 bytes a frame
    _grids: list = field(default_factory=list)  # sampled grids not reduced yet (at most BATCH)

    def push_frame(self, frame) -> None:
        """A decoded ``av.VideoFrame``: block means of a sparse grid of its luma plane (a scaler call
        per frame cost a third of the detection speed), and the fine detail left around them. The
        grids are reduced ``BATCH`` at a time (numpy's per-call cost, not the arithmetic, was most of
        a frame's share); each frame's numbers are the ones a reduction of it alone gives."""
        self._grids.append(luma_grid(frame))
        if len(self._grids) >= BATCH:
            self._reduce()

    def push_grids(self, grids: list) -> None:
        """``luma_grid`` of the next decoded frames, made elsewhere (``ingest/detect_batches.py``)."""
        self._grids.extend(grids)
        if len(self._grids) >= BATCH:
            self._reduce()

    def _reduce(self) -> None:
        if not self._grids:
            return
        grids = np.stack(self._grids).reshape(-1, THUMB_H, 4, THUMB_W, 4)
        self._grids = []
        # sums of 16 samples (integers) are exact in float32 in any order; the detail's mean runs
        # over each frame's 768 contiguous values, as the same reduction of one frame does
        blocks = grids.mean(axis=(2, 4))
        self._thumbs += blocks.astype(np.uint8).tobytes()
        spread = (grids - blocks[:, :, None, :, None]) ** 2
        self._detail.extend(spread.reshape(len(grids), -1).mean(axis=1).astype(np.float32).tolist())

    def thumbs(self) -> np.ndarray:
        self._reduce()
        return np.frombuffer(bytes(self._thumbs), np.uint8).reshape(-1, THUMB_H * THUMB_W).astype(np.float32)

    def detail(self) -> np.ndarray:
        """Per frame: mean squared difference of the sampled luma grid from its 4x4 block means (the
        fine detail a dissolve averages away; ``ingest/dissolve.py``)."""
        self._reduce()
        return np.frombuffer(self._detail.tobytes(), np.float32)

    def real_cuts(self, cuts: list[int]) -> list[int]:
        """``cuts`` without those a flash explains."""
        return self.cuts_without_flashes(self.thumbs(), cuts, self.max_frames, self.lift, self.same)

    @staticmethod
    def cuts_without_flashes(thumbs: np.ndarray, cuts: list[int], max_frames: int = 4, lift: float = 25.0,
                             same: float = 30.0) -> list[int]:
        """``cuts`` (frame numbers, ``thumbs`` row ``i`` being frame ``i``) without those a flash explains."""
        return [c for c in cuts if not is_flash(thumbs, c, max_frames, lift, same)]


def is_flash(thumbs: np.ndarray, cut: int, max_frames: int = 4, lift: float = 25.0, same: float = 30.0) -> bool:
    """Whether frames before and after ``cut`` (at most ``max_frames`` apart, the cut between them)
    show the same picture with only brighter frames in between."""
    n = len(thumbs)
    if n == 0:
        return False
    luma = thumbs.mean(axis=1)
    for before in range(cut - 1, max(-1, cut - 2 - max_frames), -1):
        for after in range(max(cut, before + 2), min(n, before + max_frames + 2)):
            between = luma[before + 1:after]
            if (between.min() > max(luma[before], luma[after]) + lift
                    and same_picture(thumbs[before], thumbs[after], after - before, same)):
                return True
    return False


def same_picture(a: np.ndarray, b: np.ndarray, frames_apart: int, same: float = 30.0) -> bool:
    """Whether thumbnails ``a`` and ``b`` show one picture: a mean absolute difference under ``same``,
    or a panned one: shifted back by up to a block (an eighth of the width) per frame between them,
    three at most, the difference falls under ``same`` and to at most half of the unshifted one (any
    two pictures match a little better at some shift; a pan is what the shift explains). A flash
    during a whip pan (``ingest/camera_shift.py``)."""
    plain = float(np.abs(a - b).mean())
    if plain < same:
        return True
    return shifted_distance(a, b, min(3, frames_apart - 1), 1, mean_abs=True) < min(same, plain / 2)
