"""TransNetV2 as gradual evidence (ingest/transnet_gradual.py): which probability curves make a dissolve.

The curves are the shapes the real model gives on the shot benchmark's footage (docs/benchmarks.md):
a confident mid-blend plateau, a faint long bump over a dissolve between similar pictures, one hot
frame at a hard cut; tests/test_transnet.py runs the real weights.
"""

from __future__ import annotations

import numpy as np

from vidcorpus.config import SplitConfig
from vidcorpus.ingest.transnet_gradual import beside_others, decide, gradual_spans


def _curve(n: int, bumps: dict[tuple[int, int], float], ramp: int = 0) -> np.ndarray:
    """Zeros with ``bumps`` (inclusive frame spans at a level), each with ``ramp`` frames climbing to it."""
    x = np.full(n, 1e-3, np.float32)
    for (a, b), level in bumps.items():
        x[a:b + 1] = level
        for k in range(1, ramp + 1):
            x[a - k] = max(x[a - k], level / 2 ** k)
            x[b + k] = max(x[b + k], level / 2 ** k)
    return x


def test_a_faint_long_run_is_a_dissolve_and_a_short_one_is_not():
    # 8 frames at 0.3 (a dissolve between similar pictures), 3 frames at 0.3 (motion), far apart
    many = _curve(200, {(50, 57): 0.3, (120, 122): 0.3})
    single = np.full(200, 1e-3, np.float32)
    assert gradual_spans(single, many) == [(50, 57)]
    # the rule before it (a frame above transnet_threshold needed) saw no transition at all
    assert gradual_spans(single, many, weak_frames=10**6) == []


def test_a_transition_extends_over_its_faint_end_frames():
    # confident mid-blend (0.9), the end frames fading through 0.45, 0.22, 0.11, 0.06, 0.03 each side
    many = _curve(200, {(90, 99): 0.9}, ramp=5)
    spans = gradual_spans(np.full(200, 1e-3, np.float32), many)
    assert spans == [(86, 103)]  # every frame above 0.05; the 0.2 extent would have kept 88..101 only
    assert gradual_spans(np.full(200, 1e-3, np.float32), many, extent_threshold=0.2) == [(88, 101)]


def test_beside_other_detectors_the_hard_cuts_are_theirs():
    single = _curve(200, {(60, 60): 0.95})  # one confident frame: a hard cut after frame 60
    many = _curve(200, {(140, 151): 0.9})
    alone = SplitConfig(detectors=["transnetv2"])
    beside = SplitConfig(detectors=["adaptive", "histogram", "transnetv2"])
    assert not beside_others(alone) and beside_others(beside)
    assert decide(single, many, alone).cuts == [61]
    assert decide(single, many, beside).cuts == [] and decide(single, many, beside).spans == [(140, 151)]
    both = beside.model_copy(update={"transnet_gradual_only": False})
    assert decide(single, many, both).cuts == [61]
    # on a GPU worker it joins the listed detectors (split.transnet_on_gpu): they are the others
    assert beside_others(SplitConfig(transnet_on_gpu=True))


def test_a_blend_the_scan_finds_stays_only_where_the_learned_detector_sees_one():
    """Where TransNetV2 ran, a blend found inside a shot (no detector cut there) needs the model to see
    some transition there: a moving take can climb like a blend on the thumbnails (seed 3's false
    10-frame span), and the model rated that stretch 0.003 at most."""
    from vidcorpus.ingest.dissolve import BlendSettings, drop_blends

    rng = np.random.default_rng(0)
    a, b, c = (rng.uniform(0, 255, 48).astype(np.float32) for _ in range(3))
    w = np.clip((np.arange(100) - 39) / 13, 0, 1)[:, None]  # frames 40..51 blend a into b
    thumbs = np.concatenate([a + w * (b - a), np.repeat(c[None], 50, 0)]) + rng.normal(0, 1, (150, 48))
    shots = [(0, 99), (100, 149)]  # a hard cut to c at 100; no detector cut inside the blend
    kept, dropped = drop_blends(shots, [], thumbs, 8, BlendSettings())
    assert [(d.first_frame, d.last_frame) for d in dropped] == [(39, 52)] and kept[:2] == [(0, 38), (53, 99)]
    kept, dropped = drop_blends(shots, [], thumbs, 8, BlendSettings(), seen=lambda first, last: False)
    assert kept == shots and dropped == []
    kept, dropped = drop_blends(shots, [], thumbs, 8, BlendSettings(), seen=lambda first, last: first <= 45 <= last)
    assert [(d.first_frame, d.last_frame) for d in dropped] == [(39, 52)]
