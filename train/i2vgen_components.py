"""The I2VGen-XL components: a tiny random build for tests, and one loader for tiny and real weights.

The tiny build is saved in exactly the diffusers layout of the hub repo ``ali-vilab/i2vgen-xl``
(model_index.json + one subfolder per component), so ``load_components`` reads both through the
same ``from_pretrained(..., subfolder=...)`` calls and the tests exercise the production path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import diffusers
import torch
from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLUNet
from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig,
                          CLIPVisionModelWithProjection)

from vidcorpus.model_files import no_progress_bars, require_hf_model
from vidcorpus.storage import publish_dir

SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "image_encoder", "feature_extractor", "scheduler")

MODEL_INDEX = {
    "_class_name": "I2VGenXLPipeline",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "I2VGenXLUNet"],
    "vae": ["diffusers", "AutoencoderKL"],
}

# Sizes of the tiny build: small enough that 20 steps (batch 2, 4 frames, 64x64) run in seconds on
# 2 CPU cores, large enough that every code path of the real model (attention, temporal layers,
# down/up sampling, 8x VAE) is exercised. Latent channels must stay 4: the UNet hard-codes it.
TINY_DIM = 32  # cross-attention dim = text hidden size = CLIP image projection dim
TINY_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
    block_out_channels=(32, 64),
    layers_per_block=1,
    norm_num_groups=8,
    cross_attention_dim=TINY_DIM,
    attention_head_dim=4,
)
TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 16, 16, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=64,
)
TINY_WORDS = (
    "a the of and then over across into with in on seen slow camera pan "
    "colourful shapes drifting resting plain background textured surface white ball rolling lying colour "
    "gradient dissolving people riding bikes video image clip"
).split()


@dataclass
class Components:
    """Everything a base-stage training step needs; only ``unet`` is trained."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    image_encoder: torch.nn.Module
    feature_extractor: object
    scheduler: object
    name: str = ""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode table (the BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def build_tiny_tokenizer():
    """A CLIP BPE tokenizer with a byte alphabet plus merges for a few words, built offline."""
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet]
    merges: list[tuple[str, str]] = []
    for word in TINY_WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:  # merge left to right: every intermediate token is a vocab entry
            pair = (parts[0], parts[1])
            if pair not in merges:
                merges.append(pair)
                tokens.append(pair[0] + pair[1])
            parts = [pair[0] + pair[1]] + parts[2:]
    vocab: dict[str, int] = {}
    for t in tokens + ["<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(t, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def build_tiny_i2vgen(out_dir: str) -> None:
    """Build tiny random I2VGen-XL components (seeded) and save them in the hub layout.

    Built in a temporary directory and renamed into place, with model_index.json written last,
    because presets.py takes model_index.json as "the tiny model exists".
    """
    with no_progress_bars(), publish_dir(out_dir) as tmp:  # a half-built or stale directory is replaced
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            tokenizer = build_tiny_tokenizer()
            tokenizer.save_pretrained(tmp / "tokenizer")
            text_encoder = CLIPTextModel(CLIPTextConfig(
                vocab_size=len(tokenizer), hidden_size=TINY_DIM, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77, projection_dim=TINY_DIM,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id))
            text_encoder.save_pretrained(tmp / "text_encoder")
            image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
                hidden_size=TINY_DIM, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                image_size=32, patch_size=8, projection_dim=TINY_DIM))
            image_encoder.save_pretrained(tmp / "image_encoder")
            CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
                tmp / "feature_extractor")
            vae = AutoencoderKL(**TINY_VAE)
            _sharpen_posterior(vae)
            vae.register_to_config(scaling_factor=_measured_scaling_factor(vae))
            vae.save_pretrained(tmp / "vae")
            I2VGenXLUNet(**TINY_UNET).save_pretrained(tmp / "unet")
            DDIMScheduler(beta_schedule="squaredcos_cap_v2", rescale_betas_zero_snr=True,
                          prediction_type="v_prediction", timestep_spacing="leading",
                          clip_sample=False).save_pretrained(tmp / "scheduler")

        (tmp / "model_index.json").write_text(
            json.dumps({**MODEL_INDEX, "_diffusers_version": diffusers.__version__}, indent=2))


@torch.no_grad()
def _sharpen_posterior(vae, logvar: float = -12.0) -> None:
    """Make the random VAE's posterior nearly deterministic, as a trained VAE's is.

    At random init the log-variance half of ``quant_conv`` is about 0 (posterior std 1), so the
    sampled latents would be mostly noise; a trained SD VAE has log-variances far below zero.
    """
    c = vae.config.latent_channels
    vae.quant_conv.weight[c:].zero_()
    vae.quant_conv.bias[c:].fill_(logvar)


@torch.no_grad()
def _measured_scaling_factor(vae) -> float:
    """1/std of the latents of smooth synthetic frames, the way SD's 0.18215 was chosen.

    A random VAE's latents have an arbitrary scale; normalising them keeps the diffusion schedule
    meaningful for the tiny model too.
    """
    g = torch.Generator().manual_seed(1)
    low = torch.rand(8, 3, 8, 8, generator=g) * 2 - 1
    images = torch.nn.functional.interpolate(low, size=(64, 64), mode="bilinear", align_corners=False)
    std = vae.encode(images).latent_dist.mean.std().item()
    return float(1.0 / max(std, 1e-6))


def load_components(name_or_dir: str, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> Components:
    """Load every component from a diffusers I2VGen-XL directory or hub id.

    ``dtype`` applies to the frozen parts (VAE, text and image encoders); the UNet is kept in
    float32 because it holds the master weights the optimizer updates (autocast handles bf16).
    """
    src = require_hf_model(name_or_dir, "i2vgen")
    unet = I2VGenXLUNet.from_pretrained(src, subfolder="unet", torch_dtype=torch.float32).to(device)
    vae = AutoencoderKL.from_pretrained(src, subfolder="vae", torch_dtype=dtype).to(device)
    text_encoder = CLIPTextModel.from_pretrained(src, subfolder="text_encoder", dtype=dtype).to(device)
    image_encoder = CLIPVisionModelWithProjection.from_pretrained(src, subfolder="image_encoder", dtype=dtype).to(device)
    tokenizer = CLIPTokenizer.from_pretrained(src, subfolder="tokenizer")
    feature_extractor = CLIPImageProcessor.from_pretrained(src, subfolder="feature_extractor")
    scheduler = DDIMScheduler.from_pretrained(src, subfolder="scheduler")
    for frozen in (vae, text_encoder, image_encoder):
        frozen.requires_grad_(False)
        frozen.eval()
    return Components(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                      image_encoder=image_encoder, feature_extractor=feature_extractor,
                      scheduler=scheduler, name=name_or_dir)
