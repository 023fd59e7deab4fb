"""The base-stage training loop: stream shards, optimise the UNet, keep an EMA, save checkpoints.

Plain PyTorch on one device (CUDA when available); Ray only launches it. Everything random is
seeded from ``cfg.seed``, so a run on the same shards reproduces its losses.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import fsspec
import numpy as np
import torch

from vidcorpus.config import TrainConfig
from vidcorpus.train.data import OnError, iter_batches
from vidcorpus.train.models import load_components
from vidcorpus.train.objective import TextEncoderCache, diffusion_loss


class NoTrainableSamples(RuntimeError):
    """A full pass over the shards produced no batch (every sample failed or none was selected)."""


@dataclass
class TrainResult:
    steps: int
    losses: list[float]
    sample_keys: list[str]  # clip ids trained on, in order, repeats included
    checkpoint_dir: str
    seconds: float
    step_keys: list[tuple[int, str]] = field(default_factory=list)  # (step, clip id) pairs
    epochs: int = 1


def lr_lambda(warmup_steps: int, total_steps: int):
    """Linear warmup to 1, then cosine decay to 0 at ``total_steps``."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    ema_p = [p for p in ema.parameters()]
    model_p = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_p, model_p, 1.0 - decay)


def _batches_forever(urls: list[str], cfg: TrainConfig, keys, on_error: OnError | None,
                     epochs: list[int]) -> Iterator[dict]:
    """Epoch after epoch of the stream; each failing key is reported once, not once per epoch."""
    reported: set[str] = set()

    def report(key: str, exc: Exception) -> None:
        if key not in reported:
            reported.add(key)
            if on_error is not None:
                on_error(key, exc)

    epoch = 0
    while True:
        epochs[0] = epoch + 1
        n = 0
        for batch in iter_batches(urls, cfg, epoch=epoch, keys=keys, on_error=report):
            n += 1
            yield batch
        if n == 0:
            raise NoTrainableSamples(
                f"no trainable sample in {len(urls)} shard(s)" + (f"; {len(reported)} failed to decode" if reported else ""))
        epoch += 1


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _save_checkpoint(unet, ema, state: dict, out_dir: str) -> str:
    """save_pretrained into out_dir (local) or a temp dir uploaded to out_dir (s3://, ...)."""
    local = "://" not in out_dir or out_dir.startswith("file://")
    target = out_dir.removeprefix("file://") if local else tempfile.mkdtemp(prefix="vidcorpus-ckpt-")
    try:
        os.makedirs(target, exist_ok=True)
        unet.save_pretrained(os.path.join(target, "unet"))
        ema.save_pretrained(os.path.join(target, "unet_ema"))
        with open(os.path.join(target, "train_state.json"), "w") as f:
            json.dump(state, f, indent=1)
        if not local:
            fs, path = fsspec.core.url_to_fs(out_dir)
            fs.put(target.rstrip("/") + "/", path.rstrip("/") + "/", recursive=True)
    finally:
        if not local:
            shutil.rmtree(target, ignore_errors=True)
    return out_dir


def _progress(enabled: bool, total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]train[/bold]"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), disable=not enabled)


def train_base(cfg: TrainConfig, model_dir: str, shard_urls: list, out_dir: str,
               on_error: OnError | None = None, progress: bool = True, device: str | torch.device | None = None,
               keys: Iterable[str] | None = None) -> TrainResult:
    """Train the I2VGen-XL base UNet for ``cfg.steps`` steps on clips streamed from ``shard_urls`` (URLs or
    ``ShardSpec``s; a spec with a sha256 is verified before use).

    ``keys`` optionally restricts training to those clip ids; ``on_error(key, exc)`` hears about
    every sample that failed to decode (once per key).
    """
    started = time.perf_counter()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    _seed_everything(cfg.seed)
    use_bf16 = cfg.mixed_precision == "bf16" and device.type == "cuda"
    comps = load_components(model_dir, device, torch.bfloat16 if use_bf16 else torch.float32)
    unet = comps.unet
    unet.train()
    unet.requires_grad_(True)
    ema = copy.deepcopy(unet).requires_grad_(False).eval()
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                            **({"fused": True} if device.type == "cuda" else {}))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup_steps, cfg.steps))
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    text_cache = TextEncoderCache(comps)

    losses: list[float] = []
    sample_keys: list[str] = []
    step_keys: list[tuple[int, str]] = []
    epochs = [1]
    batches = _batches_forever(list(shard_urls), cfg, keys, on_error, epochs)
    with _progress(progress, cfg.steps) as bar:
        task = bar.add_task("train", total=cfg.steps, loss="-")
        for step in range(cfg.steps):
            batch = next(batches)
            loss = diffusion_loss(comps, text_cache, batch, cfg, gen, torch.bfloat16 if use_bf16 else None)
            loss.backward()
            if cfg.grad_clip and cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            ema_update(ema, unet, cfg.ema_decay)
            value = float(loss.detach())
            losses.append(value)
            sample_keys.extend(batch["key"])
            step_keys.extend((step, k) for k in batch["key"])
            bar.update(task, advance=1, loss=f"{value:.4f}")
    batches.close()

    state = {"steps": len(losses), "losses": losses, "epochs": epochs[0], "sample_keys": sample_keys,
             "model": comps.name or model_dir, "config": cfg.model_dump()}
    _save_checkpoint(unet, ema, state, out_dir)
    return TrainResult(steps=len(losses), losses=losses, sample_keys=sample_keys, checkpoint_dir=out_dir,
                       seconds=time.perf_counter() - started, step_keys=step_keys, epochs=epochs[0])
