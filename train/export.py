"""Export a checkpoint's EMA UNet as a diffusers ``I2VGenXLPipeline`` and sample videos from it.

The exported directory is a complete diffusers pipeline (model_index.json, unet from the EMA
weights, and the frozen VAE, text encoder, tokenizer, image encoder, feature extractor and
scheduler the run trained with), so ``I2VGenXLPipeline.from_pretrained(dir)`` loads and samples.
Probe sampling during training uses the same pipeline built in memory around the EMA UNet.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

import fsspec
import numpy as np
import torch
from diffusers import I2VGenXLPipeline
from PIL import Image

from vidcorpus.storage import is_url, local_path, publish_dir
from vidcorpus.train.checkpoint import load_unet_weights, resolve_resume
from vidcorpus.train.i2vgen_components import Components, load_components


def build_pipeline(comps: Components, unet: torch.nn.Module):
    return I2VGenXLPipeline(vae=comps.vae, text_encoder=comps.text_encoder, tokenizer=comps.tokenizer,
                            image_encoder=comps.image_encoder, feature_extractor=comps.feature_extractor,
                            unet=unet, scheduler=comps.scheduler)


def export_pipeline(model_dir: str, checkpoint: str, out_dir: str, weights: str = "ema") -> str:
    """Write ``checkpoint`` (a checkpoint or run directory; ``weights`` "ema" or "unet") as a diffusers
    I2VGenXLPipeline directory at ``out_dir`` (local, or any fsspec URL)."""
    ckpt = resolve_resume(checkpoint)
    comps = load_components(model_dir, "cpu", torch.float32)
    load_unet_weights(ckpt, "unet_ema" if weights == "ema" else "unet", comps.unet)
    comps.unet.eval()
    return save_pipeline(build_pipeline(comps, comps.unet), out_dir)


def save_pipeline(pipe, out_dir: str, extra: dict[str, str] | None = None) -> str:
    """``pipe.save_pretrained`` to ``out_dir`` (local: atomically by rename; or any fsspec URL), with
    ``extra`` {file name: text} files beside the components."""

    def write(tmp) -> None:
        pipe.save_pretrained(tmp)
        for name, text in (extra or {}).items():
            Path(tmp, name).write_text(text)

    if not is_url(out_dir):
        with publish_dir(out_dir) as tmp:
            write(tmp)
    else:
        tmp = tempfile.mkdtemp(prefix="vidcorpus-export-")
        try:
            write(tmp)
            fs, path = fsspec.core.url_to_fs(out_dir)
            fs.put(tmp.rstrip("/") + "/", path.rstrip("/") + "/", recursive=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def to_pil(image) -> Image.Image:
    """A path, a PIL image, an (H, W, 3) uint8 array or a (3, H, W) tensor in [-1, 1]."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, os.PathLike)):
        with fsspec.open(str(image), "rb") as f:
            return Image.open(f).convert("RGB")
    if isinstance(image, torch.Tensor):
        image = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(np.asarray(image, dtype=np.uint8))


@torch.no_grad()
def sample_video(pipe, image, prompt: str, height: int, width: int, num_frames: int, fps: int,
                 steps: int = 4, seed: int = 0, guidance_scale: float = 9.0) -> np.ndarray:
    """(F, H, W, 3) uint8 frames generated from one image and prompt."""
    device = next(pipe.unet.parameters()).device
    # The pipeline encodes the image with ``latent_dist.sample()`` from the global RNG: seed that too
    # (inside a fork, so a training run's RNG stream is untouched).
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return _sample(pipe, device, image, prompt, height, width, num_frames, fps, steps, seed, guidance_scale)


def _sample(pipe, device, image, prompt, height, width, num_frames, fps, steps, seed, guidance_scale) -> np.ndarray:
    out = pipe(prompt=prompt, image=to_pil(image), height=height, width=width, num_frames=num_frames,
               target_fps=fps, num_inference_steps=steps, guidance_scale=guidance_scale, output_type="np",
               generator=torch.Generator(device=device).manual_seed(seed),
               clip_skip=None)  # transformers 5: the pipeline's default clip_skip path breaks
    frames = np.asarray(out.frames[0])
    return (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)


def write_mp4(frames: np.ndarray, fps: float, url: str) -> str:
    # inside: media imports av, which a run from cached latents never needs
    from vidcorpus.media import encode_video

    if not is_url(url):
        path = local_path(url)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        encode_video(frames, fps, path)
    else:
        buf = io.BytesIO()
        encode_video(frames, fps, buf)
        with fsspec.open(url, "wb") as f:
            f.write(buf.getvalue())
    return url


def load_exported(out_dir: str):
    """The exported pipeline as a user loads it: ``I2VGenXLPipeline.from_pretrained``."""
    pipe = I2VGenXLPipeline.from_pretrained(out_dir if is_url(out_dir) else local_path(out_dir))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def export_and_sample(model_dir: str, checkpoint: str, out_dir: str, image, prompt: str, mp4_url: str,
                      height: int, width: int, num_frames: int, fps: int, steps: int = 4, seed: int = 0) -> str:
    """Export ``checkpoint`` to ``out_dir`` (local), load it back through ``from_pretrained`` and write one
    sampled video for (``image``, ``prompt``) to ``mp4_url``."""
    export_pipeline(model_dir, checkpoint, out_dir)
    pipe = load_exported(out_dir)
    frames = sample_video(pipe, image, prompt, height, width, num_frames, fps, steps=steps, seed=seed)
    return write_mp4(frames, fps, mp4_url)
