"""The pipeline's CLIP model: loading (one code path for real and tiny weights), its id, and
embedding frames and texts.

Production uses ``("ViT-L-14", "openai")``; the ``tiny`` preset builds a seeded, randomly
initialised ``vidcorpus-tiny-clip`` once, saves it in the same on-disk format, and loads it through
the same calls. Importing this module registers the tiny open_clip config (vidcorpus/model_configs/).

It lives in the core because two stages embed with the same model: the filters' CLIP scorer
(``filters/clip_scores.py``, with the aesthetic head of ``filters/aesthetic_head.py``) and the
caption QA of ``captioning/caption_stage.py``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import open_clip
import torch
from huggingface_hub import try_to_load_from_cache
from PIL import Image
from safetensors.torch import save_file

from vidcorpus.errors import ModelNotAvailable
from vidcorpus.model_files import hub_reachable
from vidcorpus.model_names import TINY_CLIP_NAME
from vidcorpus.storage import is_url, local_path, publishing

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

TINY_SEED = 1234


def clip_embed_dim(model_name: str) -> int:
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise ModelNotAvailable(f"models.clip_model: unknown open_clip model {model_name!r}")
    return int(cfg["embed_dim"])


def build_tiny_clip(weights_path: str | os.PathLike, model_name: str = TINY_CLIP_NAME) -> str:
    """Seeded random tiny CLIP saved as a state dict (.safetensors or .pt) that ``pretrained=`` loads."""
    torch.manual_seed(TINY_SEED)
    model = open_clip.create_model(model_name, pretrained=None, pretrained_text=False)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}

    def write(tmp: str) -> None:
        if str(weights_path).endswith(".safetensors"):
            save_file(state, tmp)
        else:
            torch.save(state, tmp)

    with publishing(weights_path) as tmp:
        write(tmp)
    return str(weights_path)


def _cached_hf_file(repo_id: str, filenames: list[str]) -> str | None:
    for name in filenames:
        found = try_to_load_from_cache(repo_id, name)
        if isinstance(found, str):
            return found
    return None


def require_clip_weights(model_name: str, pretrained: str) -> None:
    """Fail fast (offline, uncached, unknown tag) with the fix, instead of open_clip's hub retries."""
    if Path(pretrained).is_file():
        return
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        if pretrained.startswith((".", "/", "~")) or Path(pretrained).suffix in (".safetensors", ".pt", ".pth", ".bin"):
            raise ModelNotAvailable(f"models.clip_pretrained: file {pretrained} does not exist")
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise ModelNotAvailable(
            f"models.clip_pretrained: {pretrained!r} is neither a weights file nor an open_clip tag of "
            f"{model_name} (tags: {tags})"
        )
    hub = cfg.get("hf_hub", "")
    url = cfg.get("url", "")
    if hub:
        repo_id, filename = os.path.split(hub)  # open_clip's own convention: trailing "/" = default file
        filename = filename or "open_clip_pytorch_model.bin"
        # open_clip first tries the .safetensors twin of the file (see open_clip.pretrained).
        twin = "open_clip_model.safetensors" if filename == "open_clip_pytorch_model.bin" else (
            filename.rsplit(".", 1)[0] + ".safetensors")
        candidates = [twin, filename]
        if _cached_hf_file(repo_id, candidates):
            return
        where, fix = f"Hugging Face repo {repo_id}", f"`huggingface-cli download {repo_id}` (and copy the HF cache)"
    else:
        local = Path.home() / ".cache" / "clip" / os.path.basename(url)
        if local.is_file():
            return
        where, fix = url, f"download it to {local}"
    if hub_reachable(host="huggingface.co" if hub else (urlsplit(url).hostname or "")):
        return
    raise ModelNotAvailable(
        f"models.clip_pretrained: open_clip weights {model_name}/{pretrained} ({where}) are not cached and the "
        f"network cannot be reached. Fix: on a machine with network run {fix}, or set "
        f"models.clip_pretrained=/path/to/weights, or use --preset tiny for offline test models."
    )


def load_clip(model_name: str, pretrained: str, device: str | torch.device = "cpu"):
    """(model, preprocess, tokenizer) in eval mode; the same call for a tag and for a weights file."""
    require_clip_weights(model_name, pretrained)
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device)
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    return model, preprocess, tokenizer


def clip_model_id(model_name: str, pretrained: str) -> str:
    is_file = is_url(pretrained) or Path(local_path(pretrained)).suffix in (".safetensors", ".pt", ".pth", ".bin")
    return model_name if is_file else f"{model_name}/{pretrained}"


def embed_images(model, preprocess, frames: list[np.ndarray], device, batch_size: int = 16, threads: int = 1):
    """L2-normalised CLIP image embeddings (float32, one row per frame), in batches. ``threads``:
    preprocess a batch's frames in that many threads (Pillow's resize releases the GIL): caption QA
    embeds thousands of frames a batch, which one thread kept the GPU waiting for."""
    def prep(f: np.ndarray):
        return preprocess(Image.fromarray(f))

    bs = max(1, batch_size)
    out = []
    pool = None
    if threads > 1 and len(frames) > 1:
        pool = ThreadPoolExecutor(threads, thread_name_prefix="clip-preprocess")
    try:
        with torch.inference_mode():
            for i in range(0, len(frames), bs):
                chunk = frames[i:i + bs]
                x = torch.stack(list(pool.map(prep, chunk)) if pool is not None else [prep(f) for f in chunk])
                out.append(model.encode_image(x.to(device), normalize=True).float())
    finally:
        if pool is not None:
            pool.shutdown()
    return torch.cat(out)


def embed_texts(model, tokenizer, texts: list[str], device, batch_size: int = 16):
    """L2-normalised CLIP text embeddings (float32, one row per text; long texts are truncated)."""
    bs = max(1, batch_size)
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), bs):
            tokens = tokenizer(texts[i:i + bs]).to(device)
            out.append(model.encode_text(tokens, normalize=True).float())
    return torch.cat(out)
