"""LAION's improved aesthetic predictor: the MLP head the CLIP scorer puts on CLIP image embeddings.

Production loads LAION's ``sac+logos+ava1-l14-linearMSE.pth``; the ``tiny`` preset builds a seeded,
randomly initialised head of the same architecture (``build_tiny_aesthetic_head``, named by
``vidcorpus/presets.py``, called by ``vidcorpus/jobs/models.py``) and saves it in the same format.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from vidcorpus.clip_models import TINY_SEED, clip_embed_dim
from vidcorpus.model_files import require_file
from vidcorpus.model_names import TINY_CLIP_NAME
from vidcorpus.storage import publishing


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


def build_tiny_aesthetic_head(path: str | os.PathLike, clip_model_name: str = TINY_CLIP_NAME) -> str:
    """Seeded random aesthetic head whose input is the CLIP model's embedding, saved like LAION's .pth."""
    torch.manual_seed(TINY_SEED + 1)
    head = AestheticHead(clip_embed_dim(clip_model_name))
    with publishing(path) as tmp:
        torch.save(head.state_dict(), tmp)
    return str(path)


def load_aesthetic_head(path_or_url: str, embed_dim: int, device: str | torch.device = "cpu") -> AestheticHead:
    """LAION-format aesthetic MLP (path or URL resolved by model_files.require_file), in eval mode."""
    local = require_file(path_or_url, "aesthetic_head")
    state = torch.load(local, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    head = AestheticHead(embed_dim)
    head.load_state_dict(state, strict=True)
    return head.to(device).eval()
