"""CLIP and LAION aesthetic-head loading, one code path for real and tiny weights.

Production uses ``("ViT-L-14", "openai")`` and LAION's improved aesthetic predictor; the ``tiny``
preset builds a seeded, randomly initialised ``vidcorpus-tiny-clip`` and a head of the same
architecture once, saves them in the same on-disk formats, and loads them through the same calls.
Importing this module registers the tiny open_clip config (filters/model_configs/).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import open_clip
import torch
from torch import nn

from vidcorpus.errors import ModelNotAvailable
from vidcorpus.presets import TINY_CLIP_NAME, _hub_reachable, require_file

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

TINY_SEED = 1234


class AestheticHead(nn.Module):
    """LAION improved-aesthetic-predictor MLP (same layer indices, so the real .pth loads strictly)."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.input_size = input_size
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _atomic_save(path: str | os.PathLike, write) -> None:
    """Write through a temp file in the target folder and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
            from safetensors.torch import save_file

            save_file(state, tmp)
        else:
            torch.save(state, tmp)

    _atomic_save(weights_path, write)
    return str(weights_path)


def build_tiny_aesthetic_head(path: str | os.PathLike, clip_model_name: str = TINY_CLIP_NAME) -> str:
    """Seeded random aesthetic head whose input is the CLIP model's embedding, saved like LAION's .pth."""
    torch.manual_seed(TINY_SEED + 1)
    head = AestheticHead(clip_embed_dim(clip_model_name))
    _atomic_save(path, lambda tmp: torch.save(head.state_dict(), tmp))
    return str(path)


def _cached_hf_file(repo_id: str, filenames: list[str]) -> str | None:
    from huggingface_hub import try_to_load_from_cache

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
    if _hub_reachable(host="huggingface.co" if hub else (url.split("/")[2] if "://" in url else "")):
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


def load_aesthetic_head(path_or_url: str, embed_dim: int, device: str | torch.device = "cpu") -> AestheticHead:
    """LAION-format aesthetic MLP (path or URL resolved by presets.require_file), in eval mode."""
    local = require_file(path_or_url, "aesthetic_head")
    state = torch.load(local, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    head = AestheticHead(embed_dim)
    head.load_state_dict(state, strict=True)
    return head.to(device).eval()
