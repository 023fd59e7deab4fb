"""PySceneDetect's content and histogram detectors with the same scores computed in fewer steps.

Shot detection's cost per frame, once FFmpeg hands out small frames, is mostly the detectors'
own arithmetic: ``ContentDetector`` splits the HSV frame into three planes and, for each, widens
both frames to int32, subtracts, takes the absolute value and sums (15 numpy passes a frame, about
0.3 ms at 256x144, holding the GIL). The same sums come from one ``cv2.absdiff`` of the two HSV
frames (exact for uint8) and one ``cv2.sumElems`` (integer accumulation, exact in a double), with
OpenCV releasing the GIL so the decode thread keeps going. The histogram detector's luma plane is
counted in place (``calcHist`` on channel 0) instead of split out first. Both take the HSV frame,
the HSV sums, the histogram and its correlation with the frame before's from the frame itself when
they were made beside the decode, on the scaler pool (``ingest/detect_batches.py``: the same calls
on the same frames, so the same values).

Every score is the same IEEE double as the original's (the sums are integers below 2**53 and are
divided by the same pixel count, then weighted in the same order), so the cuts are the same
(tests/test_exact_scores.py compares them frame by frame on real footage). Where the original
computes more (edge weights, a stats manager asking for every component) it is used as is.
"""

from __future__ import annotations

import cv2
import numpy as np
from scenedetect import AdaptiveDetector, ContentDetector

from vidcorpus.ingest.histogram_context import ContextualHistogramDetector


class _ExactContentScore:
    """Mixin for ``ContentDetector`` subclasses: ``_calculate_frame_score`` without the per-plane numpy passes."""

    _last_hsv: np.ndarray | None = None
    _last_position: int | None = None

    def _calculate_frame_score(self, timecode, frame_img: np.ndarray) -> float:
        if self._weights.delta_edges > 0.0 or self.stats_manager is not None:
            return super()._calculate_frame_score(timecode, frame_img)
        hsv = getattr(frame_img, "hsv", None)  # made beside the decode (ingest/detect_batches.py)
        if hsv is None:
            hsv = cv2.cvtColor(frame_img, cv2.COLOR_BGR2HSV)
        last, self._last_hsv = self._last_hsv, hsv
        last_position, self._last_position = self._last_position, timecode.frame_num
        if last is None:
            return 0.0
        num_pixels = float(hsv.shape[0] * hsv.shape[1])
        delta = getattr(frame_img, "hsv_delta", None)  # the same sums, made beside the decode
        if delta is not None and frame_img.hsv_delta_from == last_position:
            hue, sat, lum = delta
        else:
            hue, sat, lum, _ = cv2.sumElems(cv2.absdiff(hsv, last))
        components = ContentDetector.Components(delta_hue=hue / num_pixels, delta_sat=sat / num_pixels,
                                                delta_lum=lum / num_pixels, delta_edges=0.0)
        # the original's expression, term for term: the same rounding
        return sum(c * w for c, w in zip(components, self._weights, strict=True)) / sum(
            abs(w) for w in self._weights)


class ExactContentDetector(_ExactContentScore, ContentDetector):
    """``ContentDetector``, the same scores and cuts."""


class ExactAdaptiveDetector(_ExactContentScore, AdaptiveDetector):
    """``AdaptiveDetector``, the same scores and cuts."""


def luma_histogram(frame_img: np.ndarray, bins: int = 256, normalize: bool = True) -> np.ndarray:
    """``HistogramDetector.calculate_histogram``: the same counts, read from the YUV frame's first
    channel instead of a copied-out plane."""
    return luma_histogram_of(cv2.cvtColor(frame_img, cv2.COLOR_BGR2YUV), bins, normalize)


def luma_histogram_of(yuv: np.ndarray, bins: int = 256, normalize: bool = True) -> np.ndarray:
    """``luma_histogram`` of the frame already converted to YUV."""
    hist = cv2.calcHist([yuv], [0], None, [bins], [0, 256])
    if normalize:
        hist = cv2.normalize(hist, hist).flatten()
    return hist


def prepared_luma_histogram(frame_img: np.ndarray, bins: int = 256, normalize: bool = True) -> np.ndarray:
    """``luma_histogram``, taken from the frame when it was made beside the decode with these
    settings (``ingest/detect_batches.py``: ``luma_hist`` holds the normalised one of the detector's bins)."""
    hist = getattr(frame_img, "luma_hist", None)
    if hist is not None and normalize and len(hist) == bins:
        return hist
    return luma_histogram(frame_img, bins, normalize)


class ExactContextualHistogramDetector(ContextualHistogramDetector):
    """``ContextualHistogramDetector`` with ``luma_histogram``: the same histograms and cuts."""

    calculate_histogram = staticmethod(prepared_luma_histogram)
    _last_position: int | None = None  # the frame whose histogram is ``_last_hist``

    def process_frame(self, timecode, frame_img: np.ndarray) -> list:
        cuts = super().process_frame(timecode, frame_img)
        self._last_position = timecode.frame_num
        return cuts

    def _correlation(self, hist: np.ndarray, frame_img: np.ndarray, timecode) -> float:
        correl = getattr(frame_img, "luma_correl", None)  # the same call, made beside the decode
        if correl is not None and frame_img.luma_correl_from == self._last_position:
            return correl
        return super()._correlation(hist, frame_img, timecode)
