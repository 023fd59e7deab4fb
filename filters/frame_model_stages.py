"""When the text-overlay and NSFW scorers join a pipeline: before the decision, and only when wanted.

They join when the recipe has a predicate on their scores or the config switches them on: a run
never pays for a model nobody reads (``filters/frame_models.py`` holds what the scorers share).
"""

from __future__ import annotations

from vidcorpus.errors import ModelNotAvailable
from vidcorpus.filters.frame_models import onnx_has_cuda
from vidcorpus.filters.nsfw import NSFW_SCORES, NsfwStage
from vidcorpus.filters.recipes import DecideStage, load_recipe
from vidcorpus.filters.text_overlay import TEXT_SCORES, TextOverlayStage


def wanted(cfg, switch: bool | None, scores: set[str]) -> bool:
    """Run a scorer when its switch says so, or (switch None) when the recipe reads one of its scores."""
    if switch is not None:
        return switch
    return bool(scores & set(load_recipe(cfg.filters.recipe).scores_needed))


def with_frame_model_stages(stages: list, cfg) -> list:
    """``stages`` with the text-overlay and NSFW scorers inserted before the decision, when wanted."""
    extra = [s for s, switch, names in ((TextOverlayStage, cfg.filters.text_overlay, TEXT_SCORES),
                                        (NsfwStage, cfg.filters.nsfw, NSFW_SCORES))
             if s not in stages and wanted(cfg, switch, names)]
    if not extra or DecideStage not in stages:
        return stages
    at = stages.index(DecideStage)
    return [*stages[:at], *extra, *stages[at:]]


def preflight_frame_models(cfg) -> None:
    """Driver-side check that the scorers this run will add can load (before any worker starts)."""
    stages = with_frame_model_stages([DecideStage], cfg)[:-1]
    for stage in stages:
        stage.require()
    if stages and cfg.filters.frame_models_device == "cuda" and not onnx_has_cuda():
        raise ModelNotAvailable("filters.frame_models_device=cuda needs onnxruntime-gpu "
                                "(pip uninstall onnxruntime && pip install onnxruntime-gpu; or set it to auto)")
