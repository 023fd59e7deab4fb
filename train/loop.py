"""The base-stage training loop: stream shards, optimise the UNet, keep an EMA, checkpoint, log, sample.

Plain PyTorch (CUDA when available); torchrun or Ray Train's ``TorchTrainer`` only launch it. When a
``torch.distributed`` process group is up, the UNet is wrapped in DDP, each rank streams its own
split of the shards (the reader splits by rank) with its own noise generator, and rank 0 writes
checkpoints, logs and probe samples. Everything random is seeded from ``cfg.seed`` (and the rank).

The data cursor. Each epoch's sample order is a pure function of (seed, epoch, rank, shard list,
selected keys, shuffle buffer, DataLoader worker count): the shard shuffle, the shuffle buffer and
each sample's frame window are all seeded. A checkpoint stores, per rank, the epoch, how many
samples of each DataLoader worker's sequence the batcher had pulled, and the positions of those
still waiting in a bucket (at most a few batches' worth). A resumed run rebuilds that epoch's
stream: consumed samples pass as undecoded ``Skipped`` markers (keeping the workers' interleaving),
the pending ones are decoded again and refill their buckets, and from there the batches are exactly
those the uninterrupted run would have trained on next. The cost: the consumed part of the epoch is
read (and its shards verified) again, but not decoded. The shard list and selected keys are
fingerprinted into the checkpoint; a resume against a different selection, seed, shuffle buffer or
worker count is refused, since the cursor would point elsewhere.

One loop, two stages. ``train_loop`` runs the steps for a *task*: ``BaseTask`` (the I2VGen-XL base
UNet; ``train_base`` is ``train_loop(BaseTask(), ...)``) or ``train/refiner.py``'s ``RefinerTask``
(the UNet3D video-to-video refiner). A task says which components to load, the loss of a batch,
and how probes are sampled; the loop owns streaming, the cursor, the optimizer, EMA, parallel
wrapping (``train/parallel.py``: DDP or FSDP2), checkpoints, logs and resume.

Where the pieces live: ``train/trainer.py`` (setup, the loop, logs, checkpoints), ``train/step.py``
(one optimizer step from ``train.grad_accum_steps`` micro-batches), ``train/stream.py`` (the stream
and its cursor), ``train/resume.py`` (which checkpoint, whether it applies), ``train/sample_log.py``
(the clip ids of every step, per rank, as Parquet beside the checkpoints: a checkpoint holds the
cursor, never the history, so its size does not grow with the step count).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable

import pyarrow as pa
import torch

from vidcorpus.config import TrainConfig
from vidcorpus.storage import join_url
from vidcorpus.train.data import OnError
from vidcorpus.train.export import build_pipeline, sample_video, write_mp4
from vidcorpus.train.i2vgen_components import load_components
from vidcorpus.train.objective import TextEncoderCache, diffusion_loss
from vidcorpus.train.sample_log import losses_of, read_samples
from vidcorpus.train.trainer import Trainer


@dataclass
class TrainResult:
    """A finished run. ``losses``, ``step_keys`` and ``sample_keys`` are read back (once, on first
    use) from the run's sample log: every step from 0 to ``steps``, resumed parts included."""

    steps: int
    checkpoint_dir: str  # the final checkpoint
    seconds: float
    epochs: int = 1
    run_dir: str = ""
    resumed_from: str | None = None
    decode_failures: list[list[str]] = field(default_factory=list)  # [key, error class, message]

    @cached_property
    def samples(self) -> pa.Table:
        """(step, rank, clip_id, loss) rows of every rank, in step order."""
        return read_samples(self.run_dir, through_step=self.steps)

    @property
    def losses(self) -> list[float]:
        """One loss per step (averaged over micro-batches and ranks)."""
        return losses_of(self.samples)

    @property
    def step_keys(self) -> list[tuple[int, str]]:
        """(step, clip id) pairs: the clips each step trained on, all ranks, repeats included."""
        return list(zip(self.samples["step"].to_pylist(), self.samples["clip_id"].to_pylist()))

    @property
    def sample_keys(self) -> list[str]:
        """Clip ids trained on, in order, repeats included (all ranks)."""
        return self.samples["clip_id"].to_pylist()


class BaseTask:
    """The base stage: I2VGen-XL components, the v-prediction loss with image conditioning."""

    kind = "base"

    def load(self, model_dir: str, device: torch.device, dtype: torch.dtype):
        return load_components(model_dir, device, dtype)

    def setup(self, comps) -> None:
        self.text_cache = TextEncoderCache(comps)
        self.comps = comps  # probes from cached latents decode a first frame with its VAE

    def loss(self, train_comps, batch: dict, cfg: TrainConfig, gen: torch.Generator, autocast_dtype) -> torch.Tensor:
        return diffusion_loss(train_comps, self.text_cache, batch, cfg, gen, autocast_dtype)

    def probe_set(self, cfg: TrainConfig, batch: dict) -> list[tuple]:
        return _probe_set(cfg, batch, self.comps)

    def sample_probes(self, comps, ema, cfg: TrainConfig, probes: list[tuple], out_dir: str, step: int,
                      autocast_dtype) -> list[str]:
        return _sample_probes(comps, ema, cfg, probes, out_dir, step, autocast_dtype)


def train_base(cfg: TrainConfig, model_dir: str, shard_urls: list, out_dir: str,
               on_error: OnError | None = None, progress: bool = True, device: str | torch.device | None = None,
               keys: Iterable[str] | None = None, resume: str | None = None,
               run_info: dict | None = None, follow=None) -> TrainResult:
    """Train the I2VGen-XL base UNet until step ``cfg.steps`` on clips streamed from ``shard_urls``
    (URLs or ``ShardSpec``s; a spec with a sha256 is verified before use), writing checkpoints,
    logs and probe samples under the run directory ``out_dir``.

    ``keys`` optionally restricts training to those clip ids; ``on_error(key, exc)`` hears about
    every sample that failed to decode on this rank (once per key). ``resume`` continues from a
    checkpoint ("latest" = the newest in ``out_dir``, or a run/checkpoint URL). ``run_info`` (the
    selection, the catalog snapshot facts) is recorded in every checkpoint. ``follow()`` -> (shard
    specs, keys) is the selection asked again at every epoch boundary (``--follow``): new shards join
    the next pass; a resumed follow run whose selection grew since the checkpoint starts a new pass.
    """
    return train_loop(BaseTask(), cfg, model_dir, shard_urls, out_dir, on_error=on_error, progress=progress,
                      device=device, keys=keys, resume=resume, run_info=run_info, follow=follow)


def train_loop(task, cfg: TrainConfig, model_dir: str, shard_urls: list, out_dir: str,
               on_error: OnError | None = None, progress: bool = True, device: str | torch.device | None = None,
               keys: Iterable[str] | None = None, resume: str | None = None,
               run_info: dict | None = None, follow=None) -> TrainResult:
    """Train ``task``'s UNet until step ``cfg.steps`` (see ``train_base`` for the arguments)."""
    started = time.perf_counter()
    trainer = Trainer(task, cfg, model_dir, shard_urls, out_dir, on_error=on_error, device=device, keys=keys,
                      resume=resume, run_info=run_info, follow=follow)
    last_ckpt = trainer.run(progress)
    return TrainResult(steps=max(cfg.steps, trainer.start_step), checkpoint_dir=last_ckpt or "",
                       seconds=time.perf_counter() - started, epochs=trainer.consumed.cursor.epoch + 1,
                       run_dir=out_dir, resumed_from=trainer.resumed_from,
                       decode_failures=sorted(trainer.failures.values()))


# -- probe sampling -------------------------------------------------------------------------------

def _probe_set(cfg: TrainConfig, batch: dict, comps=None) -> list[tuple]:
    """(image, prompt) pairs sampled every ``sample_every`` steps: the configured probe images and
    prompts, or else the first clip of the run's first batch (its first frame and caption; from
    cached latents, the VAE's decode of the first frame's posterior mean)."""
    if cfg.probe_images:
        prompts = cfg.probe_prompts or [""]
        return [(img, prompts[i % len(prompts)]) for i, img in enumerate(cfg.probe_images)]
    prompt = cfg.probe_prompts[0] if cfg.probe_prompts else batch["text"][0]
    if "latent_params" in batch:
        vae = comps.vae
        mean = batch["latent_params"][0, :1].chunk(2, dim=1)[0]
        with torch.no_grad():
            first = vae.decode(mean.to(vae.device, vae.dtype)).sample[0].float().clamp(-1, 1).cpu()
        return [(first, prompt)]
    return [(batch["first_frame"][0].clone(), prompt)]


def _sample_probes(comps, ema, cfg: TrainConfig, probes: list[tuple], out_dir: str, step: int,
                   autocast_dtype) -> list[str]:
    pipe = build_pipeline(comps, ema)
    pipe.set_progress_bar_config(disable=True)
    device = next(ema.parameters()).device
    urls = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        for i, (image, prompt) in enumerate(probes):
            frames = sample_video(pipe, image, prompt, cfg.height, cfg.width, cfg.num_frames, cfg.fps,
                                  steps=cfg.sample_steps, seed=cfg.seed + i)
            urls.append(write_mp4(frames, cfg.fps, join_url(out_dir, "samples", f"step-{step:08d}-probe{i}.mp4")))
    return urls
