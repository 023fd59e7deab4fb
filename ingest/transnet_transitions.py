"""TransNetV2's per-frame probabilities read as transitions: hard cuts and gradual spans.

A run of frames above the threshold that is shorter than ``transnet_min_transition_frames`` is a
hard cut; a longer one (its extent measured on the ``many`` head) is a gradual transition. The model
that computes the probabilities is ``ingest/transnet.py``; the rule beside other detectors (gradual
transitions only) is ``ingest/transnet_gradual.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Transitions:
    """Hard cuts (first frame of the new shot) and gradual transitions (inclusive frame spans)."""

    cuts: list[int]
    spans: list[tuple[int, int]]


def true_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive (first, last) of each run of True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]


def find_transitions(single: np.ndarray, many: np.ndarray, threshold: float = 0.5,
                     span_threshold: float = 0.2, min_transition_frames: int = 3) -> Transitions:
    """Decide cuts and gradual spans from per-frame probabilities.

    An event is a frame whose ``single`` probability exceeds ``threshold``, or a run of at least
    ``min_transition_frames`` frames whose ``many`` probability does (a slow fade the single head
    sees only weakly). Its extent is the run of frames around it above ``span_threshold`` on either
    head. An extent shorter than ``min_transition_frames`` is a hard cut, placed after the frame the
    single head rates highest (the model marks the last frame of the old shot); a longer one is a
    gradual transition.
    """
    n = len(single)
    hot = single > threshold
    for a, b in true_runs(many > threshold):
        if b - a + 1 >= min_transition_frames:
            hot[a:b + 1] = True
    cuts: list[int] = []
    spans: list[tuple[int, int]] = []
    for a, b in true_runs((single > span_threshold) | (many > span_threshold) | hot):
        if not hot[a:b + 1].any():
            continue
        if b - a + 1 < min_transition_frames:
            cut = a + int(np.argmax(single[a:b + 1])) + 1
            if 0 < cut < n:
                cuts.append(cut)
        else:
            spans.append((a, b))
    return Transitions(cuts, spans)
