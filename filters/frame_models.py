"""What the per-frame model scorers with weights in wheels share (text overlays, NSFW).

They read the frames the CLIP scorer samples (``filters.frames_per_clip``: the clip's stills file
when extraction wrote one, else decoded from the clip), run as CPU tasks (ONNX Runtime, a session
per worker process), and join the pipeline when the recipe has a predicate on their scores or the
config asks for them: a run never pays for a model nobody reads.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from vidcorpus.errors import ModelNotAvailable
from vidcorpus.filters.clip_frames import clip_frame_list, load_stills, read_clip
from vidcorpus.filters.recipes import DecideStage, load_recipe


def require_extra(module: str, package: str, what: str) -> None:
    """Fail with one line naming the fix when an optional model package is not installed."""
    if importlib.util.find_spec(module) is None:
        raise ModelNotAvailable(f"{what} needs the `models` extra: pip install -e \".[models]\" (or pip install {package})")


def sampled_frames(row: dict, k: int) -> list[np.ndarray]:
    """The K RGB frames the model scorers sample from a clip (one for an image)."""
    stills = load_stills(row, k)
    if stills is not None:
        return stills
    data, _digest = read_clip(row)
    return clip_frame_list(row, data, k)


def wanted(cfg, switch: bool | None, scores: set[str]) -> bool:
    """Run a scorer when its switch says so, or (switch None) when the recipe reads one of its scores."""
    if switch is not None:
        return switch
    return bool(scores & set(load_recipe(cfg.filters.recipe).scores_needed))


def with_frame_model_stages(stages: list, cfg) -> list:
    """``stages`` with the text-overlay and NSFW scorers inserted before the decision, when wanted."""
    # here, not at the top: nsfw.py and text_overlay.py import this module (a circle at import time)
    from vidcorpus.filters.nsfw import NSFW_SCORES, NsfwStage
    from vidcorpus.filters.text_overlay import TEXT_SCORES, TextOverlayStage

    extra = [s for s, switch, names in ((TextOverlayStage, cfg.filters.text_overlay, TEXT_SCORES),
                                        (NsfwStage, cfg.filters.nsfw, NSFW_SCORES))
             if s not in stages and wanted(cfg, switch, names)]
    if not extra or DecideStage not in stages:
        return stages
    at = stages.index(DecideStage)
    return [*stages[:at], *extra, *stages[at:]]


def preflight_frame_models(cfg) -> None:
    """Driver-side check that the scorers this run will add can load (before any worker starts)."""
    for stage in with_frame_model_stages([DecideStage], cfg)[:-1]:
        stage.require()
