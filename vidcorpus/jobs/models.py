"""Models a command will load: fill them from the preset, build the tiny ones that are missing, and
check, before any worker starts, that each can be loaded.

The application's side of ``vidcorpus/presets.py``: a preset NAMES each builder and check as
``"module:function"`` in the stage folder that owns the model's code; this module imports and calls
them. Only the application resolves such names (the core and the stages import nothing by name:
tests/test_layers.py). A builder is imported only when its model is missing, so resolving a config
costs no open_clip or transformers import unless a tiny model must be built.
"""

from __future__ import annotations

import importlib
from typing import Callable

from vidcorpus.config import ModelsConfig
from vidcorpus.model_files import require_file, require_hf_model
from vidcorpus.presets import CLIP_WEIGHTS_CHECK, TINY_BUILDS, TINY_REFINER, TinyBuild, preset_models


def named_function(ref: str) -> Callable:
    """The function a preset names as ``"package.module:function"``, imported now."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def build(tiny: TinyBuild, models: ModelsConfig) -> None:
    """Build one tiny model with the builder its preset entry names, from these model fields."""
    named_function(tiny.builder)(*(getattr(models, field) for field in tiny.args))


def build_tiny_models(models: ModelsConfig, only: set[str] | None = None) -> None:
    """Create the tiny models that are missing (seeded, so every machine builds the same ones);
    ``only``: just these of "clip" (with the aesthetic head), "captioner", "i2vgen". Each builder is
    imported only when its model is missing (importing them costs seconds: open_clip, transformers)."""
    wanted = {"clip", "captioner", "i2vgen"} if only is None else only
    for tiny in TINY_BUILDS:
        if tiny.model in wanted and not tiny.built(models):
            build(tiny, models)


def resolve_models(models: ModelsConfig, only: set[str] | None = None) -> ModelsConfig:
    """Fill unset fields from the preset; for ``tiny``, build the missing tiny models once (``only``:
    just those a command will load, see ``build_tiny_models``)."""
    filled = preset_models(models)
    if models.preset == "tiny":
        build_tiny_models(filled, only)
    return filled


def resolve_refiner(models: ModelsConfig, only: set[str] | None = None) -> ModelsConfig:
    """``resolve_models`` plus the refiner: for ``tiny``, its tiny UNet3D build is made on first use
    (not with the other tiny models, which most commands need without it)."""
    filled = resolve_models(models, only)
    if models.preset == "tiny" and not TINY_REFINER.built(filled):
        build(TINY_REFINER, filled)
    return filled


def preflight_pipeline(models: ModelsConfig, only: set[str] | None = None) -> None:
    """Check, in the driver and before any worker starts, that every curation model the run will
    load (``only``: those of ``presets.curation_models``; None: all) can be loaded.

    Cheap for the tiny preset (local files); for production it turns a missing weight into one
    clear error instead of a failure inside a Ray actor after the pipeline has started.
    """
    wanted = {"clip", "captioner"} if only is None else only
    if "clip" in wanted:
        named_function(CLIP_WEIGHTS_CHECK)(models.clip_model, models.clip_pretrained)
        require_file(models.aesthetic_head, "aesthetic_head")
    if "captioner" in wanted:
        require_hf_model(models.captioner, "captioner")
