"""A histogram cut detector that judges each change against the shot it would end.

PySceneDetect's ``HistogramDetector`` cuts wherever the luma histograms of two adjacent frames
correlate below ``1 - threshold``. A shot whose histogram moves a little on every frame (plain
moving stripes or a scrolling sine pattern, downscaled: the quantised histogram shifts with the
phase) then "cuts" every ``min_scene_len`` frames, and the splitter's rule that a short segment
between two cuts is a transition dropped the whole shot (issue 21: 44 frames gone without a row).

This detector keeps the same test and adds one: the change must also stand out from the changes
seen since the last cut (``min_ratio`` times their median over the last ``context`` frames). A hard
cut or the start of a fade after a steady shot still fires; a shot that changes the same amount
on every frame never cuts itself. It looks only backwards, so it streams like the original.
"""

from __future__ import annotations

import statistics
from collections import deque

import cv2
import numpy as np
from scenedetect import HistogramDetector


class ContextualHistogramDetector(HistogramDetector):
    """``HistogramDetector`` whose cuts must exceed ``min_ratio`` x the shot's usual frame-to-frame change."""

    def __init__(self, threshold: float, min_scene_len: int, context: int, min_ratio: float = 3.0):
        super().__init__(threshold=threshold, min_scene_len=min_scene_len)
        self._changes: deque[float] = deque(maxlen=max(1, context))
        self._min_ratio = min_ratio

    def process_frame(self, timecode, frame_img: np.ndarray) -> list:
        if frame_img.dtype != np.uint8 or frame_img.ndim != 3 or frame_img.shape[2] != 3:
            raise ValueError("ContextualHistogramDetector needs 8-bit, 3-channel frames")
        if not self._last_cut:
            self._last_cut = timecode
        hist = self.calculate_histogram(frame_img, bins=self._bins)
        cuts = []
        if self._last_hist is not None:
            correlation = self._correlation(hist, frame_img, timecode)
            change = 1.0 - correlation
            usual = statistics.median(self._changes) if self._changes else 0.0
            if (correlation <= self._threshold and (timecode - self._last_cut) >= self._min_scene_len
                    and change >= self._min_ratio * usual):
                cuts.append(timecode)
                self._last_cut = timecode
                self._changes.clear()  # the next shot is judged against its own frames only
            else:
                self._changes.append(change)
            if self.stats_manager is not None:
                self.stats_manager.set_metrics(timecode, {self._metric_key: correlation})
        self._last_hist = hist
        return cuts

    def _correlation(self, hist: np.ndarray, frame_img: np.ndarray, timecode) -> float:
        """The original's measure: the last frame's histogram correlated with this one's."""
        return cv2.compareHist(self._last_hist, hist, cv2.HISTCMP_CORREL)
