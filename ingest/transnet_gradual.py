"""TransNetV2 as gradual evidence only: its dissolves and fades leave the clips, its hard cuts do not count.

Beside the other detectors (``split.transnet_gradual_only``, on by default), TransNetV2 adds only
what they lack. Hard cuts come from the adaptive and histogram detectors with their checks: on the
shot benchmark TransNetV2 missed the same-scene and jump cuts they find, and one of its cuts three
frames off a real one replaced that cut (``_merge_close`` keeps the first of two close cuts).
What it adds are gradual transitions, decided from its per-frame ``many`` head (every frame of a
transition) by two properties of a dissolve:

- **A dissolve lasts.** A run of at least ``transnet_weak_frames`` frames above
  ``transnet_span_threshold`` on the ``many`` head is a gradual transition even where no frame
  reaches ``transnet_threshold``: a slow dissolve between two similar pictures (two takes of one
  music video) is seen faintly but over many frames; a cut is seen over a frame or two (in the
  benchmark's 60 s of unedited takes, with flashes, pans and zooms, no six frames in a row exceed 0.15).
- **A dissolve fades in and out of the shots.** The model is confident only mid-blend, where the
  two pictures weigh about the same; the first and last blended frames get low probabilities.
  So each transition extends to where both heads fall below ``transnet_extent_threshold`` (far
  below the detection threshold): those end frames are blends too, and a clip must not hold them.

The thresholds (6 frames, 0.2, 0.05) were chosen on one shuffle of the benchmark's edit (seed 1)
and checked on the other three and the unedited takes (docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np

from vidcorpus.ingest.transnet_transitions import Transitions, find_transitions, true_runs


def _grown(first: int, last: int, level: np.ndarray, floor: float) -> tuple[int, int]:
    """Frames ``first..last`` extended both ways while ``level`` stays above ``floor``."""
    while first > 0 and level[first - 1] > floor:
        first -= 1
    while last + 1 < len(level) and level[last + 1] > floor:
        last += 1
    return first, last


def gradual_spans(single: np.ndarray, many: np.ndarray, threshold: float = 0.5, span_threshold: float = 0.2,
                  min_transition_frames: int = 3, weak_frames: int = 6,
                  extent_threshold: float = 0.05) -> list[tuple[int, int]]:
    """Inclusive frame spans of the gradual transitions: those ``find_transitions`` decides, and the
    long faint runs on the ``many`` head, each grown to where both heads fall below ``extent_threshold``
    (overlapping or touching spans become one)."""
    spans = list(find_transitions(single, many, threshold, span_threshold, min_transition_frames).spans)
    spans += [(a, b) for a, b in true_runs(many > span_threshold) if b - a + 1 >= weak_frames]
    level = np.maximum(single, many)
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        a, b = _grown(a, b, level, extent_threshold)
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(b, out[-1][1]))
        else:
            out.append((a, b))
    return out


def beside_others(split_cfg) -> bool:
    """Whether TransNetV2 gives only gradual transitions here: other detectors run beside it (listed, or
    it joined them on a GPU worker) and ``transnet_gradual_only`` is on."""
    return split_cfg.transnet_gradual_only and any(d != "transnetv2" for d in split_cfg.detectors)


def decide(single: np.ndarray, many: np.ndarray, split_cfg) -> Transitions:
    """A source's transitions under the split section: gradual only beside other detectors
    (``beside_others``), else cuts and gradual transitions as ``find_transitions`` decides them."""
    c = split_cfg
    if not beside_others(c):
        return find_transitions(single, many, c.transnet_threshold, c.transnet_span_threshold,
                                c.transnet_min_transition_frames)
    return Transitions([], gradual_spans(single, many, c.transnet_threshold, c.transnet_span_threshold,
                                         c.transnet_min_transition_frames, c.transnet_weak_frames,
                                         c.transnet_extent_threshold))
