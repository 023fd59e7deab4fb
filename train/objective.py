"""The base-stage training objective: v-prediction on a zero-terminal-SNR DDIM schedule.

Conditioning is formed exactly as diffusers' ``I2VGenXLPipeline`` forms it at inference, so a
trained UNet drops into that pipeline: text -> CLIP text hidden states (encoder_hidden_states);
first frame -> CLIP image embedding (B, 1, D) (image_embeddings) and its VAE latent followed by
one constant "frame position" plane per later frame, valued (i+1)/(F-1) (image_latents); fps as a
per-sample micro-condition. Classifier-free guidance is learnt by dropping each condition
independently to the value the pipeline uses as its unconditional input: the empty prompt's
embedding for text, zeros for the image embedding, and a zero first-frame latent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vidcorpus.config import TrainConfig
from vidcorpus.train.i2vgen_components import Components


@dataclass
class Conditioning:
    encoder_hidden_states: torch.Tensor  # (B, 77, D)
    image_embeddings: torch.Tensor  # (B, 1, D)
    image_latents: torch.Tensor  # (B, 4, F, h, w)
    fps: torch.Tensor  # (B,)


class TextEncoderCache:
    """Encodes prompts with the frozen text encoder; keeps the empty prompt's embedding."""

    def __init__(self, comps: Components):
        self.comps = comps
        self._empty: torch.Tensor | None = None

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        tok = self.comps.tokenizer(texts, padding="max_length", max_length=self.comps.tokenizer.model_max_length,
                                   truncation=True, return_tensors="pt")
        enc = self.comps.text_encoder
        return enc(tok.input_ids.to(enc.device))[0]

    def empty(self) -> torch.Tensor:
        if self._empty is None:
            self._empty = self.encode([""])
        return self._empty


@torch.no_grad()
def encode_frames(comps: Components, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> scaled VAE latents (N, 4, H/8, W/8), a posterior sample."""
    vae = comps.vae
    dist = vae.encode(frames.to(vae.device, vae.dtype)).latent_dist
    return dist.sample(generator=generator) * vae.config.scaling_factor


@torch.no_grad()
def clip_image_embeddings(comps: Components, first_frame: torch.Tensor) -> torch.Tensor:
    """First frames (B, 3, H, W) in [-1, 1] -> CLIP image embeddings (B, 1, D).

    As the pipeline does: centre-crop a square, resize to the encoder's crop size, normalise with
    the processor's mean and std.
    """
    fe = comps.feature_extractor
    size = (fe.crop_size["height"], fe.crop_size["width"])
    h, w = first_frame.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = (first_frame[:, :, top:top + side, left:left + side].float() + 1) / 2
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(fe.image_mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(fe.image_std, device=x.device).view(1, 3, 1, 1)
    enc = comps.image_encoder
    x = ((x - mean) / std).to(enc.device, enc.dtype)
    return enc(x).image_embeds.unsqueeze(1)


def cached_latents(batch: dict, generator: torch.Generator, device) -> torch.Tensor:
    """A fresh posterior draw from cached VAE parameters (B, F, 2C, h, w) -> scaled latents
    (B, C, F, h, w): what ``encode_frames`` returns for the same frames, without running the VAE."""
    params = batch["latent_params"].to(device, non_blocking=True).float()
    mean, logvar = params.chunk(2, dim=2)
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))  # diffusers' DiagonalGaussianDistribution clamp
    noise = torch.randn(mean.shape, generator=generator, device=device)
    return ((mean + std * noise) * float(batch["scaling_factor"])).permute(0, 2, 1, 3, 4)


def image_latents_from_first(first_latent: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(B, C, h, w) first-frame latent -> (B, C, F, h, w) as ``prepare_image_latents`` builds it."""
    lat = first_latent.unsqueeze(2)
    masks = [torch.ones_like(lat) * ((i + 1) / (num_frames - 1)) for i in range(num_frames - 1)]
    return torch.cat([lat, *masks], dim=2) if masks else lat


def keep_mask(batch_size: int, p_drop: float, generator: torch.Generator, device) -> torch.Tensor:
    """1.0 where the condition is kept, 0.0 where dropped (independently per sample)."""
    return (torch.rand(batch_size, generator=generator, device=device) >= p_drop).float()


def make_conditioning(comps: Components, text_cache: TextEncoderCache, batch: dict, latents: torch.Tensor,
                      cfg: TrainConfig, generator: torch.Generator) -> Conditioning:
    """Conditioning for a batch, with independent CFG dropout of text, image embedding, first frame."""
    b, _c, f = latents.shape[:3]
    device = latents.device
    if "text_states" in batch:  # the latent cache's: same encoder, same caption (its key says so)
        text = batch["text_states"].to(device, non_blocking=True)
    else:
        text = text_cache.encode(batch["text"])
    empty = text_cache.empty().to(text.dtype)
    keep_t = keep_mask(b, cfg.drop_text, generator, device).view(b, 1, 1).to(text.dtype)
    text = text * keep_t + empty.expand_as(text) * (1 - keep_t)

    if "clip_image" in batch:
        img = batch["clip_image"].to(device, non_blocking=True).unsqueeze(1)
    else:
        img = clip_image_embeddings(comps, batch["first_frame"])
    img = img * keep_mask(b, cfg.drop_image, generator, device).view(b, 1, 1).to(img.dtype)

    first = latents[:, :, 0] * keep_mask(b, cfg.drop_first_frame, generator, device).view(b, 1, 1, 1)
    return Conditioning(encoder_hidden_states=text, image_embeddings=img,
                        image_latents=image_latents_from_first(first, f),
                        fps=batch["fps"].to(device))


def diffusion_loss(comps: Components, text_cache: TextEncoderCache, batch: dict, cfg: TrainConfig,
                   generator: torch.Generator, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """v-prediction MSE (float32) for one bucketed batch of videos (B, F, 3, H, W) in [-1, 1]."""
    unet, sched = comps.unet, comps.scheduler
    device = next(unet.parameters()).device
    if "latent_params" in batch:
        latents = cached_latents(batch, generator, device)
        cond = make_conditioning(comps, text_cache, batch, latents, cfg, generator)
    else:
        video = batch["video"].to(device, non_blocking=True)
        b, f = video.shape[:2]
        # The first frame's latent is the posterior sample of video frame 0 (the pipeline encodes the
        # same image); one VAE pass serves both target and condition.
        lat = encode_frames(comps, video.flatten(0, 1), generator)
        latents = lat.unflatten(0, (b, f)).permute(0, 2, 1, 3, 4).float()  # (B, C, F, h, w)
        cond = make_conditioning(comps, text_cache, {**batch, "first_frame": video[:, 0]}, latents, cfg, generator)
    b = latents.shape[0]

    noise = torch.randn(latents.shape, generator=generator, device=device)
    if cfg.offset_noise > 0:  # per-sample, per-channel shift shared by all frames and pixels
        noise = noise + cfg.offset_noise * torch.randn((b, latents.shape[1], 1, 1, 1), generator=generator,
                                                       device=device)
    t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=generator, device=device)
    noisy = sched.add_noise(latents, noise, t)
    target = sched.get_velocity(latents, noise, t)

    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        pred = unet(noisy, t, fps=cond.fps, image_latents=cond.image_latents,
                    image_embeddings=cond.image_embeddings.float(),
                    encoder_hidden_states=cond.encoder_hidden_states.float(), return_dict=False)[0]
    return F.mse_loss(pred.float(), target.float())
