"""The refiner stage: a text-conditioned UNet3D video-to-video model that takes the base stage's
low-resolution video to 1280x720 (I2VGen-XL's second stage), trained SDEdit style on crops.

Components are a diffusers text-to-video pipeline layout (``VideoToVideoSDPipeline``: unet =
``UNet3DConditionModel``, vae, text_encoder, tokenizer, scheduler), so production initialises
from a hub directory such as ``cerspense/zeroscope_v2_XL`` and the tiny preset builds a small
random UNet3D beside the tiny base build's VAE, text encoder and tokenizer, loaded by the same code.

The pairing. A training clip decodes at the refiner's output size; each step takes a random
``crop_height`` x ``crop_width`` patch of it (the same window for every frame) as the target x0.
The input is that patch downscaled by ``degrade_factor`` and upscaled back (what upsampling the base
stage's output gives at sampling time), in latents ``z_lr``. Sampling starts from
``add_noise(z_lr, eps, t_max)`` and runs DDIM (deterministic) down to 0. The training sample at
``t <= t_max`` is the point of that DDIM trajectory which ends at the target: with
``k = sqrt(a(t_max) / (1 - a(t_max)))`` and ``eps' = eps + k (z_lr - z_hr)``,
``x_t = add_noise(z_hr, eps', t)``. At ``t = t_max`` that is exactly the sampler's start, and for
every ``t`` the scheduler's x0 estimate of the target (``eps'`` for epsilon prediction, the velocity
of (z_hr, eps') for v-prediction) is the high-resolution clip. So the refiner learns to remove the
degradation along with the noise, and the loss needs no weighting that blows up at small ``t``.

The loop, checkpoints, EMA, logs, streaming and launchers are the base stage's (``train_loop`` with
a ``RefinerTask``).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import diffusers
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel, VideoToVideoSDPipeline
from transformers import CLIPTextModel, CLIPTokenizer

from vidcorpus.config import RefinerTrainConfig
from vidcorpus.model_files import require_hf_model
from vidcorpus.storage import is_url, join_url, local_path, publish_dir
from vidcorpus.train.checkpoint import load_unet_weights, read_state, resolve_resume
from vidcorpus.train.export import save_pipeline, write_mp4
from vidcorpus.train.i2vgen_components import TINY_UNET, build_tiny_i2vgen
from vidcorpus.train.loop import train_loop
from vidcorpus.train.objective import TextEncoderCache, keep_mask, encode_frames

REFINER_MODEL_INDEX = {
    "_class_name": "VideoToVideoSDPipeline",
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet3DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
REFINER_INFO = "vidcorpus_refiner.json"  # t_max and degradation the refiner was trained with

# The tiny refiner's UNet3D takes the tiny I2VGen-XL UNet's sizes: the same blocks, without the
# image conditioning I2VGenXLUNet adds.
TINY_REFINER_UNET = dict(TINY_UNET)

# cerspense/zeroscope_v2_XL's UNet (the ModelScope text-to-video UNet, 1.41 B parameters); used by
# the benchmark with random weights.
ZEROSCOPE_UNET = dict(
    sample_size=32,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
    up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    norm_num_groups=32,
    cross_attention_dim=1024,
    attention_head_dim=64,
)


@dataclass
class RefinerComponents:
    """What a refiner step needs; only ``unet`` is trained."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object
    name: str = ""


# -- building and loading -------------------------------------------------------------------------

def build_tiny_refiner(out_dir: str, i2vgen_dir: str) -> None:
    """A tiny random refiner in the hub layout: a seeded small UNet3DConditionModel beside the tiny
    base build's VAE, text encoder, tokenizer and scheduler (copied, so both stages share them).
    Built in a temporary directory and renamed into place, model_index.json written last."""
    if not (Path(i2vgen_dir) / "model_index.json").exists():
        build_tiny_i2vgen(i2vgen_dir)
    with publish_dir(out_dir) as tmp:
        for sub in ("vae", "text_encoder", "tokenizer", "scheduler"):
            shutil.copytree(Path(i2vgen_dir) / sub, tmp / sub)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            UNet3DConditionModel(**TINY_REFINER_UNET).save_pretrained(tmp / "unet")

        (tmp / "model_index.json").write_text(
            json.dumps({**REFINER_MODEL_INDEX, "_diffusers_version": diffusers.__version__}, indent=2))


def load_refiner(name_or_dir: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 unet_dtype: torch.dtype = torch.float32) -> RefinerComponents:
    """Every refiner component from a diffusers UNet3D pipeline directory or hub id. The UNet stays
    float32 for training (master weights; autocast does bf16) unless ``unet_dtype`` says otherwise."""
    src = require_hf_model(name_or_dir, "refiner")
    unet = UNet3DConditionModel.from_pretrained(src, subfolder="unet", torch_dtype=unet_dtype).to(device)
    vae = AutoencoderKL.from_pretrained(src, subfolder="vae", torch_dtype=dtype).to(device)
    text_encoder = CLIPTextModel.from_pretrained(src, subfolder="text_encoder", dtype=dtype).to(device)
    tokenizer = CLIPTokenizer.from_pretrained(src, subfolder="tokenizer")
    scheduler = DDIMScheduler.from_pretrained(src, subfolder="scheduler")
    for frozen in (vae, text_encoder):
        frozen.requires_grad_(False)
        frozen.eval()
    return RefinerComponents(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                             scheduler=scheduler, name=name_or_dir)


# -- the pairing and the loss ---------------------------------------------------------------------

def random_crop(video: torch.Tensor, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """(B, F, C, H, W) -> (B, F, C, height, width): one seeded window per clip, the same for all frames."""
    b, _f, _c, h, w = video.shape
    if height > h or width > w:
        raise ValueError(f"crop {height}x{width} is larger than the decoded clips ({h}x{w})")
    tops = torch.randint(0, h - height + 1, (b,), generator=generator, device=generator.device).tolist()
    lefts = torch.randint(0, w - width + 1, (b,), generator=generator, device=generator.device).tolist()
    return torch.stack([video[i, :, :, t:t + height, l:l + width] for i, (t, l) in enumerate(zip(tops, lefts))])


def upsample(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, 3, h, w) in [-1, 1] -> (N, 3, height, width): bicubic, as the cascade upsamples the base video."""
    x = F.interpolate(frames.float(), size=(height, width), mode="bicubic", align_corners=False)
    return x.clamp_(-1.0, 1.0)


def degrade(frames: torch.Tensor, factor: float) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1]: downscale by ``factor`` (antialiased) and upsample back to H x W."""
    h, w = frames.shape[-2:]
    low = F.interpolate(frames.float(), size=(max(1, round(h / factor)), max(1, round(w / factor))),
                        mode="bilinear", antialias=True, align_corners=False)
    return upsample(low, h, w)


def refiner_loss(comps: RefinerComponents, text_cache: TextEncoderCache, batch: dict, cfg: RefinerTrainConfig,
                 generator: torch.Generator, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """MSE (float32) of the refiner on one batch of clips (B, F, 3, H, W) in [-1, 1] (module docstring)."""
    unet, sched = comps.unet, comps.scheduler
    device = next(unet.parameters()).device
    video = batch["video"].to(device)
    b, f = video.shape[:2]
    hr = random_crop(video, cfg.crop_height, cfg.crop_width, generator).flatten(0, 1)  # (B*F, 3, h, w)
    lr = degrade(hr, cfg.degrade_factor)
    z_hr = encode_frames(comps, hr, generator).unflatten(0, (b, f)).permute(0, 2, 1, 3, 4).float()
    z_lr = encode_frames(comps, lr, generator).unflatten(0, (b, f)).permute(0, 2, 1, 3, 4).float()

    text = text_cache.encode(batch["text"])
    keep = keep_mask(b, cfg.drop_text, generator, device).view(b, 1, 1).to(text.dtype)
    text = text * keep + text_cache.empty().expand_as(text) * (1 - keep)

    t_max = min(cfg.t_max, sched.config.num_train_timesteps - 1)
    noise = torch.randn(z_hr.shape, generator=generator, device=device)
    if cfg.offset_noise > 0:
        noise = noise + cfg.offset_noise * torch.randn((b, z_hr.shape[1], 1, 1, 1), generator=generator, device=device)
    a_max = float(sched.alphas_cumprod[t_max])
    k = math.sqrt(a_max / max(1.0 - a_max, 1e-8))
    eps = noise + k * (z_lr - z_hr)
    t = torch.randint(0, t_max + 1, (b,), generator=generator, device=device)
    noisy = sched.add_noise(z_hr, eps, t)
    target = eps if sched.config.prediction_type == "epsilon" else sched.get_velocity(z_hr, eps, t)

    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        pred = unet(noisy, t, encoder_hidden_states=text.float(), return_dict=False)[0]
    return F.mse_loss(pred.float(), target.float())


# -- sampling -------------------------------------------------------------------------------------

@torch.no_grad()
def encode_prompts(comps: RefinerComponents, prompts: list[str], device: torch.device, dtype: torch.dtype,
                   offload: bool = False) -> list[torch.Tensor]:
    """Text embeddings (1, 77, D) of each prompt on ``device``; with ``offload`` the text encoder
    visits the GPU only for this and goes back to the CPU."""
    enc = comps.text_encoder
    if offload:
        enc.to(device)
    cache = TextEncoderCache(comps)
    out = [cache.encode([p]).to(device, dtype) for p in prompts]
    if offload:
        enc.to("cpu")
    return out


@torch.no_grad()
def refine_video(comps: RefinerComponents, unet: torch.nn.Module, frames: torch.Tensor, prompt: str, *,
                 t_max: int, steps: int, guidance: float, seed: int, vae_chunk: int = 1,
                 cfg_batched: bool = False, offload_text: bool = False,
                 on_step: Callable[[int, int], None] | None = None,
                 autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Refine upsampled frames (F, 3, H, W) in [-1, 1] with brief text: encode (``vae_chunk`` frames
    at a time), noise to the largest DDIM timestep <= ``t_max``, denoise with classifier-free guidance,
    decode in chunks. Returns (F, 3, H, W) float in [-1, 1] on the CPU. Deterministic for ``seed``."""
    device = next(unet.parameters()).device
    vae = comps.vae
    dtype = next(unet.parameters()).dtype if autocast_dtype is None else autocast_dtype
    cond, uncond = encode_prompts(comps, [prompt, ""], device, dtype, offload=offload_text)

    latents = []
    for i in range(0, frames.shape[0], vae_chunk):
        chunk = frames[i:i + vae_chunk].to(device, vae.dtype)
        latents.append(vae.encode(chunk).latent_dist.mode() * vae.config.scaling_factor)
    z = torch.cat(latents).unsqueeze(0).permute(0, 2, 1, 3, 4)  # (1, C, F, h, w)
    del latents

    sched = DDIMScheduler.from_config(comps.scheduler.config)
    sched.set_timesteps(steps, device=device)
    timesteps = [t for t in sched.timesteps if int(t) <= t_max] or [sched.timesteps[-1]]
    gen = torch.Generator(device=device).manual_seed(seed)
    noise = torch.randn(z.shape, generator=gen, device=device, dtype=torch.float32)
    lat = sched.add_noise(z.float(), noise, timesteps[0].reshape(1)).to(dtype)
    guided = guidance > 1.0
    ctx = torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None)
    with ctx:
        for i, t in enumerate(timesteps):
            if guided and cfg_batched:
                both = unet(torch.cat([lat, lat]), t, encoder_hidden_states=torch.cat([uncond, cond]),
                            return_dict=False)[0]
                u, c = both.chunk(2)
            elif guided:
                u = unet(lat, t, encoder_hidden_states=uncond, return_dict=False)[0]
                c = unet(lat, t, encoder_hidden_states=cond, return_dict=False)[0]
            else:
                c = unet(lat, t, encoder_hidden_states=cond, return_dict=False)[0]
                u = c
            pred = u.float() + guidance * (c.float() - u.float()) if guided else c.float()
            lat = sched.step(pred, t, lat.float()).prev_sample.to(dtype)
            if on_step is not None:
                on_step(i + 1, len(timesteps))

    out = []
    lat = lat[0].permute(1, 0, 2, 3) / vae.config.scaling_factor  # (F, C, h, w)
    for i in range(0, lat.shape[0], vae_chunk):
        out.append(vae.decode(lat[i:i + vae_chunk].to(vae.dtype)).sample.float().clamp_(-1, 1).cpu())
    return torch.cat(out)


def to_uint8(frames: torch.Tensor):
    """(F, 3, H, W) in [-1, 1] -> (F, H, W, 3) uint8 numpy."""
    return ((frames.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


# -- the task for the shared loop -----------------------------------------------------------------

class RefinerTask:
    """The refiner stage for ``train_loop``."""

    kind = "refiner"

    def load(self, model_dir: str, device: torch.device, dtype: torch.dtype) -> RefinerComponents:
        return load_refiner(model_dir, device, dtype)

    def setup(self, comps: RefinerComponents) -> None:
        self.text_cache = TextEncoderCache(comps)

    def loss(self, train_comps, batch: dict, cfg: RefinerTrainConfig, gen: torch.Generator,
             autocast_dtype) -> torch.Tensor:
        return refiner_loss(train_comps, self.text_cache, batch, cfg, gen, autocast_dtype)

    def probe_set(self, cfg: RefinerTrainConfig, batch: dict) -> list[tuple]:
        """The first clip of the run's first batch (all its frames) and its caption."""
        prompt = cfg.probe_prompts[0] if cfg.probe_prompts else batch["text"][0]
        return [(batch["video"][0].clone(), prompt)]

    def sample_probes(self, comps, ema, cfg: RefinerTrainConfig, probes: list[tuple], out_dir: str, step: int,
                      autocast_dtype) -> list[str]:
        """Each probe clip degraded by ``degrade_factor`` and refined by the EMA UNet from ``t_max``."""
        device = next(ema.parameters()).device
        urls = []
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for i, (video, prompt) in enumerate(probes):
                frames = refine_video(comps, ema, degrade(video, cfg.degrade_factor), prompt, t_max=cfg.t_max,
                                      steps=cfg.sample_steps, guidance=7.5, seed=cfg.seed + i,
                                      autocast_dtype=autocast_dtype)
                urls.append(write_mp4(to_uint8(frames), cfg.fps,
                                      join_url(out_dir, "samples", f"step-{step:08d}-probe{i}.mp4")))
        return urls


def train_refiner(cfg: RefinerTrainConfig, model_dir: str, shard_urls: list, out_dir: str, on_error=None,
                  progress: bool = True, device=None, keys: Iterable[str] | None = None, resume: str | None = None,
                  run_info: dict | None = None, follow=None):
    """Train the refiner UNet (initialised from ``model_dir``) until ``cfg.steps``; the arguments and
    the run directory are those of ``train_base``."""
    if cfg.crop_height > cfg.height or cfg.crop_width > cfg.width:
        raise ValueError(f"refiner crop {cfg.crop_height}x{cfg.crop_width} exceeds the clip size "
                         f"{cfg.height}x{cfg.width}")
    return train_loop(RefinerTask(), cfg, model_dir, shard_urls, out_dir, on_error=on_error, progress=progress,
                      device=device, keys=keys, resume=resume, run_info=run_info, follow=follow)


# -- export ---------------------------------------------------------------------------------------

def export_refiner(model_dir: str, checkpoint: str, out_dir: str, weights: str = "ema") -> str:
    """Write a refiner checkpoint (or a run's newest) as a diffusers ``VideoToVideoSDPipeline``
    directory (EMA UNet + the frozen parts), with the trained ``t_max`` in ``vidcorpus_refiner.json``."""
    ckpt = resolve_resume(checkpoint)
    comps = load_refiner(model_dir, "cpu", torch.float32)
    load_unet_weights(ckpt, "unet_ema" if weights == "ema" else "unet", comps.unet)
    comps.unet.eval()
    pipe = VideoToVideoSDPipeline(vae=comps.vae, text_encoder=comps.text_encoder, tokenizer=comps.tokenizer,
                                  unet=comps.unet, scheduler=comps.scheduler)
    conf = read_state(ckpt)["config"]
    info = {"t_max": conf.get("t_max"), "degrade_factor": conf.get("degrade_factor"), "height": conf.get("height"),
            "width": conf.get("width"), "checkpoint": ckpt, "weights": weights}
    return save_pipeline(pipe, out_dir, extra={REFINER_INFO: json.dumps(info, indent=1)})


def trained_t_max(refiner: str) -> int | None:
    """The t_max a refiner export or checkpoint was trained with (None if it does not say)."""
    if not is_url(refiner):  # an export is a local folder; a checkpoint may be anywhere
        p = Path(local_path(refiner))
        if (p / REFINER_INFO).exists():
            return json.loads((p / REFINER_INFO).read_text()).get("t_max")
        if (p / "model_index.json").exists():  # a third-party export: the caller's default applies
            return None
    try:
        return read_state(resolve_resume(refiner)).get("config", {}).get("t_max")
    except (FileNotFoundError, OSError):
        return None
