"""Encoding the latent cache's sidecar samples with the trainer's frozen encoders.

The sidecar format (keys, cache key, where a sidecar lives) is ``shards/latents.py``'s; encoding
needs the training components (VAE, CLIP image and text encoders) and their preprocessing
(``objective.clip_image_embeddings``), which the train stage owns, so it lives here.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from vidcorpus.train.objective import clip_image_embeddings


@torch.no_grad()
def encode_sample(comps, text_cache, sample: dict, key: str) -> dict:
    """A decoded training sample (``train.data.decode_sample``) -> the sidecar sample."""
    vae = comps.vae
    video = sample["video"]  # (F, 3, H, W) in [-1, 1]
    params = vae.encode(video.to(vae.device, vae.dtype)).latent_dist.parameters  # (F, 2C, h, w)
    image = clip_image_embeddings(comps, video[:1])[0, 0]
    text = text_cache.encode([sample["text"]])[0]
    return {
        "__key__": sample["key"],
        "latent.npy": params.float().cpu().numpy().astype(np.float16),
        "clip_image.npy": image.float().cpu().numpy().astype(np.float16),
        "text.npy": text.float().cpu().numpy().astype(np.float16),
        "json": json.dumps({"frames": int(video.shape[0]), "fps": int(sample["fps"]),
                            "height": int(video.shape[-2]), "width": int(video.shape[-1]),
                            "scaling_factor": float(vae.config.scaling_factor), "cache_key": key,
                            "text": sample["text"]}).encode(),  # the caption the text states encode
    }


def device_and_dtype() -> tuple[torch.device, torch.dtype]:
    """Where the cache is encoded: bf16 on a CUDA GPU, float32 on the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32

