"""The cascade: one image and a prompt -> a 1280x720 video (base stage, upsample, refiner).

1. Base stage: the I2VGen-XL pipeline (an export, or a checkpoint's EMA UNet with the frozen
   components of ``models.i2vgen``) samples ``num_frames`` at the base resolution.
2. The base stage is freed; the frames are upsampled (bicubic) to the output size.
3. Refiner: the UNet3D refiner (an export, or a checkpoint's EMA UNet with the frozen components of
   ``models.refiner``) encodes them in chunks, noises them to ``t_max`` and denoises with the brief
   prompt; the VAE decodes in chunks of ``vae_chunk`` frames.

Memory measures (see docs/benchmarks.md for what each one buys): the stages are loaded one after
another (``offload``), weights and activations in bf16 on GPUs, diffusers' SDPA attention, the
refiner's text encoder on the GPU only while it encodes, VAE encode/decode in frame chunks, and the
guided refiner passes run one after the other unless ``cfg_batched``. Everything random is seeded
from ``seed``: the same inputs give the same video.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from diffusers import DDIMScheduler, I2VGenXLPipeline
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vidcorpus.config import GenerateConfig
from vidcorpus.storage import is_url, local_path
from vidcorpus.train.checkpoint import load_unet_weights, resolve_resume
from vidcorpus.train.export import build_pipeline, sample_video
from vidcorpus.train.i2vgen_components import load_components
from vidcorpus.train.refiner import load_refiner, refine_video, to_uint8, trained_t_max, upsample


@dataclass
class CascadeResult:
    frames: np.ndarray  # (F, H, W, 3) uint8
    base_frames: np.ndarray  # (F, h, w, 3) uint8, the base stage's output
    t_start: int
    seconds: dict = field(default_factory=dict)  # per stage
    peak_gib: dict = field(default_factory=dict)  # per stage (CUDA only)


def _is_pipeline_dir(path: str) -> bool:
    return not is_url(path) and (Path(local_path(path)) / "model_index.json").exists()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def load_base_stage(base: str, i2vgen_dir: str | None, device: torch.device, dtype: torch.dtype):
    """An I2VGenXLPipeline on ``device``: ``base`` is an exported pipeline directory, or a checkpoint or
    run directory whose EMA UNet joins the frozen components of ``i2vgen_dir``."""
    if _is_pipeline_dir(base):
        pipe = I2VGenXLPipeline.from_pretrained(local_path(base), torch_dtype=dtype)
    else:
        if not i2vgen_dir:
            raise ValueError("--base is a checkpoint: models.i2vgen must name the base components")
        comps = load_components(i2vgen_dir, "cpu", dtype)
        load_unet_weights(resolve_resume(base), "unet_ema", comps.unet)
        pipe = build_pipeline(comps, comps.unet.to(dtype))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_refiner_stage(refiner: str, refiner_dir: str | None, device: torch.device, dtype: torch.dtype,
                       offload_text: bool):
    """Refiner components: UNet and VAE on ``device`` in ``dtype``; the text encoder on the CPU when
    ``offload_text`` (it visits the GPU to encode the prompt). ``refiner`` is an export (any diffusers
    UNet3D pipeline directory) or a checkpoint/run directory over the components of ``refiner_dir``."""
    if _is_pipeline_dir(refiner):
        comps = load_refiner(local_path(refiner), "cpu", dtype, unet_dtype=dtype)
    else:
        if not refiner_dir:
            raise ValueError("--refiner is a checkpoint: models.refiner must name the refiner components")
        comps = load_refiner(refiner_dir, "cpu", dtype)
        load_unet_weights(resolve_resume(refiner), "unet_ema", comps.unet)
        comps.unet.to(dtype)
    comps.unet.eval().to(device)
    comps.vae.to(device)
    if not offload_text:
        comps.text_encoder.to(device)
    return comps


def _stage_progress(enabled: bool, console=None):
    """One bar per stage (base steps, upsampled frames, refiner steps); off unless the console is a terminal,
    so logs and pipes get the one-line summary only."""
    console = console or Console(stderr=True)
    return Progress(TextColumn("[bold]{task.description}[/bold]"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, disable=not (enabled and console.is_terminal))


class _StageClock:
    """Seconds and (on CUDA) peak GiB per cascade stage, each from ``start()`` to ``mark(name)``."""

    def __init__(self, device: torch.device):
        self.device, self.cuda = device, device.type == "cuda"
        self.seconds: dict[str, float] = {}
        self.peaks: dict[str, float] = {}
        self.t0 = time.perf_counter()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)

    def start(self) -> None:
        self.t0 = time.perf_counter()

    def mark(self, name: str) -> None:
        _sync(self.device)
        self.seconds[name] = time.perf_counter() - self.t0
        if self.cuda:
            self.peaks[name] = torch.cuda.max_memory_allocated(self.device) / 2**30
            torch.cuda.reset_peak_memory_stats(self.device)


def run_cascade(image, prompt: str, short_prompt: str | None, load_base: Callable[[], object],
                load_refiner: Callable[[], object], gcfg: GenerateConfig, t_max: int,
                device: torch.device, progress: bool = True, console=None) -> CascadeResult:
    """The two stages with the given loaders (each called once, in turn; the base is freed before the
    refiner loads when ``gcfg.offload``). ``short_prompt`` (default ``prompt``) conditions the refiner."""
    clock = _StageClock(device)
    with _stage_progress(progress, console) as bar:
        clock.start()
        # all three stages are listed from the start; each clock starts with its stage
        base_task = bar.add_task(f"base {gcfg.base_width}x{gcfg.base_height} (steps)", total=gcfg.base_steps)
        up_task = bar.add_task(f"upsample to {gcfg.width}x{gcfg.height} (frames)", total=gcfg.num_frames, start=False)
        refine_task = bar.add_task(f"refiner {gcfg.width}x{gcfg.height} (steps)", total=None, start=False)
        pipe = load_base(device)
        low = _sample_base(pipe, image, prompt, gcfg, bar, base_task)
        if gcfg.offload:
            del pipe
            _free(device)
        clock.mark("base")

        clock.start()
        frames = _upsample(low, gcfg, bar, up_task)
        clock.mark("upsample")

        clock.start()
        bar.start_task(refine_task)
        comps = load_refiner(device)
        out = _refine(comps, frames, short_prompt or prompt, gcfg, t_max, device, bar, refine_task)
        clock.mark("refine")
        t_start = _refiner_start(comps, gcfg, t_max)
        del comps
        _free(device)
    return CascadeResult(frames=to_uint8(out), base_frames=low, t_start=t_start, seconds=clock.seconds,
                         peak_gib=clock.peaks)


def _sample_base(pipe, image, prompt: str, gcfg: GenerateConfig, bar, task) -> np.ndarray:
    """The base stage's low-resolution video (uint8 frames), its bar moved once per UNet call."""
    calls = {"n": 0}

    def tick(*_a) -> None:  # the pipeline runs its UNet once per step (batched guidance)
        calls["n"] += 1
        bar.update(task, completed=min(calls["n"], gcfg.base_steps))

    hook = pipe.unet.register_forward_hook(tick)
    try:
        return sample_video(pipe, image, prompt, gcfg.base_height, gcfg.base_width, gcfg.num_frames, gcfg.fps,
                            steps=gcfg.base_steps, seed=gcfg.seed, guidance_scale=gcfg.base_guidance)
    finally:
        hook.remove()


def _upsample(low: np.ndarray, gcfg: GenerateConfig, bar, task) -> torch.Tensor:
    """The base frames at the output size, in [-1, 1]."""
    frames = torch.from_numpy(low).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    bar.start_task(task)
    bar.update(task, total=len(frames))
    upsampled = []
    for i in range(len(frames)):  # frame by frame (the same values as one call): a bar that moves
        upsampled.append(upsample(frames[i:i + 1], gcfg.height, gcfg.width))
        bar.update(task, completed=i + 1)
    return torch.cat(upsampled)


def _refine(comps, frames: torch.Tensor, prompt: str, gcfg: GenerateConfig, t_max: int, device: torch.device,
            bar, task):
    """The refiner stage over the upsampled frames."""
    def on_step(i: int, n: int) -> None:
        bar.update(task, total=n, completed=i)

    return refine_video(comps, comps.unet, frames, prompt, t_max=t_max, steps=gcfg.refiner_steps,
                        guidance=gcfg.refiner_guidance, seed=gcfg.seed + 1, vae_chunk=gcfg.vae_chunk,
                        cfg_batched=gcfg.cfg_batched,
                        offload_text=gcfg.offload and next(comps.text_encoder.parameters()).device != device,
                        on_step=on_step)


def _refiner_start(comps, gcfg: GenerateConfig, t_max: int) -> int:
    """The first timestep the refiner ran (the largest of its schedule at or below ``t_max``)."""
    sched = DDIMScheduler.from_config(comps.scheduler.config)
    sched.set_timesteps(gcfg.refiner_steps)
    return int(next((t for t in sched.timesteps if int(t) <= t_max), sched.timesteps[-1]))


def generate(image, prompt: str, short_prompt: str | None, base: str, refiner: str, gcfg: GenerateConfig,
             i2vgen_dir: str | None = None, refiner_dir: str | None = None, refiner_t_max: int | None = None,
             device: str | torch.device | None = None, progress: bool = True, console=None) -> CascadeResult:
    """The cascade from paths: ``base`` and ``refiner`` are exports or checkpoints (see the loaders)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    dtype = torch.bfloat16 if (gcfg.precision == "bf16" and device.type == "cuda") else torch.float32
    t_max = gcfg.t_max or trained_t_max(refiner) or refiner_t_max
    if not t_max:
        raise ValueError("the refiner's t_max is unknown: set generate.t_max")
    return run_cascade(image, prompt, short_prompt,
                       lambda dev: load_base_stage(base, i2vgen_dir, dev, dtype),
                       lambda dev: load_refiner_stage(refiner, refiner_dir, dev, dtype, offload_text=gcfg.offload),
                       gcfg, int(t_max), device, progress=progress, console=console)
