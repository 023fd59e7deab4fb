"""A cut that only the histogram detector reports stays only with evidence: a jump or a blend.

The histogram detector is in the default set for fades, which the content-based detectors miss.
On long unedited takes it also fires on fast motion, zooms and whip pans (the luma histogram
drifts): 14 false cuts a minute on the shot benchmark's unedited footage, where the adaptive
detector alone has none. Such a change is gradual, frame after frame; a real cut is either a
jump (one frame-to-frame change far above the changes around it) or a fade or dissolve, whose
frames blend one picture into another (``ingest/dissolve.py``). So each cut that no other
detector reported within ``min_len`` frames is checked on the flash filter's grey thumbnails and
dropped when it shows neither. A jump that a pan explains is camera movement (a whip pan:
``ingest/camera_shift.py``), and another detector's cut that a flash explains supports nothing.
"""

from __future__ import annotations

import bisect

import numpy as np

from vidcorpus.ingest.camera_shift import pan_explains
from vidcorpus.ingest.dissolve import BlendSettings, blend_span
from vidcorpus.ingest.flash import is_flash


def record_cuts(detector):
    """``detector`` (a scenedetect detector), keeping the frame numbers of the cuts it reports in
    ``detector.reported``."""
    detector.reported = []
    process, post = detector.process_frame, detector.post_process

    def process_frame(timecode, frame_img):
        cuts = process(timecode, frame_img)
        detector.reported += [c.frame_num for c in cuts]
        return cuts

    def post_process(timecode):
        cuts = post(timecode)
        detector.reported += [c.frame_num for c in cuts]
        return cuts

    detector.process_frame, detector.post_process = process_frame, post_process
    return detector


def frame_changes(thumbs: np.ndarray) -> np.ndarray:
    """RMS grey change between consecutive thumbnails: ``[k]`` is frame k to k + 1."""
    return np.sqrt((np.diff(thumbs.astype(np.float32), axis=0) ** 2).mean(axis=1))


def jump_frame(diffs: np.ndarray, cut: int) -> int:
    """The frame (one either side of ``cut``) that the largest change leads into."""
    lo = max(0, cut - 2)
    return lo + int(np.argmax(diffs[lo:min(len(diffs), cut + 1)])) + 1


def jump_ratio(diffs: np.ndarray, cut: int, context: int = 12) -> float:
    """The largest frame-to-frame change at the cut (one frame either side) over the median change
    of the ``context`` frames before and after it (``diffs`` from ``frame_changes``)."""
    if not 0 < cut <= len(diffs):
        return 0.0
    at = diffs[max(0, cut - 2):min(len(diffs), cut + 1)].max()
    around = np.r_[diffs[max(0, cut - 2 - context):max(0, cut - 2)], diffs[cut + 1:cut + 1 + context]]
    return float(at / max(float(np.median(around)) if len(around) else 0.0, 0.5))


def reported_by(detectors: list) -> tuple[set[int], list[int]]:
    """(the cuts the histogram detector reported, those the other detectors reported), of detectors
    passed through ``record_cuts``."""
    # inside: histogram_context imports scenedetect and cv2, which thumbnail_jumps (it
    # imports this module) does without
    from vidcorpus.ingest.histogram_context import ContextualHistogramDetector

    theirs = {c for d in detectors if isinstance(d, ContextualHistogramDetector) for c in d.reported}
    others = sorted({c for d in detectors if not isinstance(d, ContextualHistogramDetector) for c in d.reported})
    return theirs, others


def confirmed_cuts(cuts: list[int], theirs: set[int], others: list[int], extra: list[int], thumbs: np.ndarray,
                   min_len: int, settings: BlendSettings, detail: np.ndarray | None = None,
                   min_jump: float = 4.0) -> list[int]:
    """``cuts`` without those only the histogram detector reported (``theirs``; ``others`` and
    ``extra`` are the other detectors' cuts, ``reported_by``) that show no jump of ``min_jump``
    times the changes around them (that no pan explains) and no blend around them."""
    if not theirs:
        return cuts
    grey = thumbs.astype(np.float32)
    # a cut that a flash explains is no evidence for the cuts around it
    seen = sorted(c for c in set(others) | set(extra) if not is_flash(grey, c))
    diffs = frame_changes(grey)

    def jumps(c: int) -> bool:  # a jump that a pan explains (a whip pan) is camera movement
        return 0 < c <= len(diffs) and jump_ratio(diffs, c) >= min_jump and not pan_explains(grey, jump_frame(diffs, c))

    def near_other(c: int) -> bool:
        i = bisect.bisect_left(seen, c - min_len + 1)
        return i < len(seen) and seen[i] < c + min_len

    solid = [c for c in cuts if c not in theirs or near_other(c) or jumps(c)]
    out: list[int] = []
    for c in cuts:
        i = bisect.bisect_left(solid, c)
        if i < len(solid) and solid[i] == c:
            out.append(c)
            continue
        # the blend is searched between the neighbouring cuts that stand anyway
        lo = max(c - settings.max_frames, solid[i - 1] if i else 0, 0)
        hi = min(c + settings.max_frames - 1, solid[i] - 1 if i < len(solid) else len(grey) - 1, len(grey) - 1)
        shots = (solid[i - 1] if i else 0, solid[i] - 1 if i < len(solid) else len(grey) - 1)
        span = blend_span(grey, c, c, lo, hi, settings, detail=detail, shots=shots)
        if span is not None and span[0] - 2 <= c <= span[1] + 2:  # the blend is where the cut is
            out.append(c)
    return out
