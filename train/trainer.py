"""The training loop's body: set up (models, ranks, optimizer, resume), run the steps, log, checkpoint.

``Trainer`` holds what the pieces share; each method is one job: ``_setup`` (components, the
parallel wrapper, optimizer and schedule, restored from a checkpoint when resuming), ``_settle``
(losses to the host and rows to the sample log), ``_log`` (one metrics record), ``_probe`` (probe
videos), ``checkpoint`` and ``run``. The step itself is ``train/step.py``'s, the stream
``train/stream.py``'s, resume checks ``train/resume.py``'s, the per-step clip ids
``train/sample_log.py``'s.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import threading
import time
from dataclasses import replace

import numpy as np
import torch
import torch.distributed as dist
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.resnet import ResnetBlock2D, TemporalConvLayer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl, apply_activation_checkpointing as apply_ac, checkpoint_wrapper)

from vidcorpus.config import TrainConfig
from vidcorpus.errors import classify_error
from vidcorpus.storage import join_url
from vidcorpus.train import checkpoint as ckpt_io
from vidcorpus.train.data import OnError
from vidcorpus.train.metrics import FlopCounter, LogWindow, MetricsLogger, peak_bf16_flops
from vidcorpus.train.parallel import spread
from vidcorpus.train.resume import read_resume, restore_optimizer, restore_weights
from vidcorpus.train.sample_log import SAMPLES_DIR, SampleLog, adopt_legacy_history
from vidcorpus.train.step import Stepper, lr_lambda
from vidcorpus.train.stream import DataCursor, Prefetcher, Selection, StreamMark, batches_forever

_log = logging.getLogger(__name__)


def apply_activation_checkpointing(unet: torch.nn.Module) -> int:
    """Wrap the UNet's ResnetBlock2D, TemporalConvLayer and transformer blocks in torch's
    non-reentrant checkpoint wrapper (diffusers refuses ``enable_gradient_checkpointing`` for
    I2VGenXLUNet). State-dict keys are unchanged. Returns the number of wrapped blocks."""
    kinds = (ResnetBlock2D, TemporalConvLayer, BasicTransformerBlock)
    n = sum(isinstance(m, kinds) for m in unet.modules())
    apply_ac(unet, checkpoint_wrapper_fn=lambda m: checkpoint_wrapper(m, checkpoint_impl=CheckpointImpl.NO_REENTRANT),
             check_fn=lambda m: isinstance(m, kinds))
    return n


def compile_unet(module: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """``torch.compile`` of the module the step runs (the UNet, or its DDP/FSDP2 wrapper).

    A wrapper rather than ``module.compile()``, so the loop keeps an eager handle on the same
    parameters for the steps that count FLOPs; the optimizer, EMA and checkpoints keep using the
    unwrapped module."""
    return torch.compile(module, backend=cfg.compile_backend, mode=cfg.compile_mode)


def _dist() -> tuple[bool, int, int]:
    if dist.is_available() and dist.is_initialized():
        return True, dist.get_rank(), dist.get_world_size()
    return False, 0, 1


def _gather(obj, on: bool, world: int) -> list:
    if not on:
        return [obj]

    out: list = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _progress(enabled: bool):
    return Progress(TextColumn("[bold]train[/bold]"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), disable=not enabled)


class Trainer:
    """One rank's run of ``task`` until step ``cfg.steps`` (arguments: see ``train_base``)."""

    def __init__(self, task, cfg: TrainConfig, model_dir: str, shard_urls: list, out_dir: str,
                 on_error: OnError | None = None, device=None, keys=None, resume: str | None = None,
                 run_info: dict | None = None, follow=None):
        self.task, self.cfg, self.model_dir, self.out_dir = task, cfg, model_dir, out_dir
        self.on_error, self.run_info, self.follow = on_error, run_info, follow
        self.distributed, self.rank, self.world = _dist()
        self.main = self.rank == 0
        self.device = torch.device(device) if device is not None else _default_device()
        self.selection = Selection(list(shard_urls), set(keys) if keys is not None else None)
        self.failures: dict[str, list[str]] = {}
        self.failures_lock = threading.Lock()  # the prefetch thread reports failures while a checkpoint reads them
        self.samples = SampleLog(out_dir, self.rank)
        self.pending: list[tuple[int, torch.Tensor, list[str]]] = []
        self._setup(resume)
        self.window = LogWindow(cfg.log_every, peak_bf16_flops(self.device), self.world)
        self.logger = MetricsLogger(out_dir, enabled=self.main, tensorboard=cfg.tensorboard)

    def _setup(self, resume: str | None) -> None:
        cfg, device = self.cfg, self.device
        if device.type == "cuda":
            torch.cuda.set_device(device)
        seed = cfg.seed + self.rank
        random.seed(seed), np.random.seed(seed % 2**32), torch.manual_seed(seed)
        use_bf16 = cfg.mixed_precision == "bf16" and device.type == "cuda"
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None
        self.comps = comps = self.task.load(self.model_dir, device, torch.bfloat16 if use_bf16 else torch.float32)
        unet = comps.unet
        unet.train()
        unet.requires_grad_(True)
        self.gen = torch.Generator(device=device).manual_seed(cfg.seed + 1_000_003 * self.rank)
        resumed = read_resume(resume, self.out_dir, self.task.kind, cfg, self.selection, self.follow is not None,
                              self.world, self.rank)
        ema = copy.deepcopy(unet).requires_grad_(False).eval()
        if resumed:
            restore_weights(resumed, unet, ema, self.gen, self.rank)
            self.failures = dict(resumed.failures)
            self.samples.resume(resumed.ckpt, resumed.step, resumed.sample_rows)
            if resumed.legacy_history:
                adopt_legacy_history(self.samples, resumed.step, *resumed.legacy_history)
        self.resumed_from = resumed.ckpt if resumed else None
        self.start_step = resumed.step if resumed else 0
        cursor = resumed.cursor if resumed else DataCursor()
        self.consumed = StreamMark(cursor, self.selection.fingerprint, self.selection.urls, self.selection.joined)
        self.runtime = {"device": str(device), "autocast": "bf16" if use_bf16 else None,
                        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                        "activation_checkpointing_blocks": 0, "compiled": bool(cfg.compile),
                        "world_size": self.world, "torch": torch.__version__}
        if cfg.gradient_checkpointing:
            self.runtime["activation_checkpointing_blocks"] = apply_activation_checkpointing(unet)
        # Spread over ranks first (FSDP2 replaces the parameters by sharded ones), then the optimizer.
        self.par = par = spread(unet, ema, device, cfg, self.distributed, self.rank)
        self.runtime["parallel"] = par.kind or "ddp"
        opt = torch.optim.AdamW(par.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                **({"fused": True} if device.type == "cuda" else {}))
        self.opt, self.sched = opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup_steps, cfg.steps))
        self.runtime["fused_adamw"] = bool(opt.defaults.get("fused"))
        if resumed:
            restore_optimizer(resumed, par, opt, self.sched)
        train_unet = compile_unet(par.module, cfg) if cfg.compile else par.module
        # FLOPs are counted on one eager step per batch shape: torch 2.11 never compiles a module whose
        # first call ran under a dispatch mode such as FlopCounterMode (it marks the frame skipped).
        self.stepper = Stepper(self.task, cfg, par, opt, self.sched, replace(comps, unet=train_unet),
                               replace(comps, unet=par.module), self.gen, self.autocast_dtype, self.world,
                               FlopCounter(), cudagraphs=bool(cfg.compile and cfg.compile_mode == "reduce-overhead"))
        self.task.setup(comps)

    def _rank_error(self, key: str, exc: Exception) -> None:
        with self.failures_lock:
            self.failures.setdefault(key, [key, classify_error(exc), f"{type(exc).__name__}: {exc}"[:2000]])
        if self.on_error is not None:
            self.on_error(key, exc)

    def _settle(self) -> None:
        """The pending steps' losses as floats (one host sync; a float() per step would make the host
        wait for the GPU every step) and their clip ids into this rank's sample log, in step order."""
        if not self.pending:
            return
        values = torch.stack([v for _s, v, _k in self.pending]).tolist()
        for (step, _v, keys), value in zip(self.pending, values):
            self.samples.add(step, keys, value)
            self.window.recent.append(value)
        self.pending.clear()

    def checkpoint(self, step: int) -> str:
        """Flush every rank's sample rows, then write checkpoint ``step`` (rank 0; a collective)."""
        self.samples.flush(step)  # before the checkpoint: a checkpoint never lacks its rows
        with self.failures_lock:
            mine = list(self.failures.values())
        full_unet, full_ema = self.par.full_modules()  # collective under FSDP2: every rank takes part
        opt_state = self.par.optimizer_state(self.opt)
        gathered = _gather({"cursor": self.consumed.cursor.snapshot(), "rng": ckpt_io.rng_states(self.gen),
                            "failures": mine, "rows": self.samples.rows_flushed}, self.distributed, self.world)
        url = join_url(self.out_dir, ckpt_io.CKPT_DIR, ckpt_io.step_name(step))
        if self.main:
            consumed, cfg = self.consumed, self.cfg
            state = {
                "step": step, "world_size": self.world, "epochs": consumed.cursor.epoch + 1,
                "cursors": [g["cursor"] for g in gathered],
                "data": self.run_info or {}, "data_fingerprint": consumed.fingerprint,
                "follow": {"on": self.follow is not None, "shards_joined": consumed.joined},
                "shards": [s if isinstance(s, str) else getattr(s, "url", str(s)) for s in consumed.urls],
                "samples": {"dir": SAMPLES_DIR, "through_step": step, "rows": [g["rows"] for g in gathered]},
                "last_loss": self.window.recent[-1] if self.window.recent else None,
                "decode_failures": sorted({f[0]: f for g in gathered for f in g["failures"]}.values()),
                "model": self.comps.name or self.model_dir, "stage": self.task.kind, "config": cfg.model_dump(),
                "resumed_from": self.resumed_from, "runtime": self.runtime,
            }
            trainer_state = {"optimizer": opt_state, "scheduler": self.sched.state_dict(),
                             "rng": [g["rng"] for g in gathered]}
            url = ckpt_io.save_checkpoint(self.out_dir, step, full_unet, full_ema, trainer_state, state,
                                          cfg.keep_checkpoints)
            self.logger.flush()
        if self.distributed:
            dist.barrier()
        return url

    def _log(self, done: int, lr: float) -> None:
        if self.main:
            self.logger.log(self.window.record(done, lr, self.consumed.cursor.epoch + 1))
        else:
            self.window.reset()

    def _probe(self, done: int) -> None:
        full_ema = self.par.full_ema()  # collective under FSDP2
        if self.main:
            on_host = next(full_ema.parameters()).device != self.device
            self.task.sample_probes(self.comps, full_ema.to(self.device), self.cfg, self.probes, self.out_dir, done,
                                    self.autocast_dtype)
            if on_host:
                full_ema.to("cpu")

    def run(self, progress: bool) -> str | None:
        """Steps from the start (or the resumed step) to ``cfg.steps``; the final checkpoint's URL."""
        cfg, last_ckpt, self.probes = self.cfg, self.resumed_from, []
        sel = self.selection
        batches = batches_forever(sel.urls, cfg, sel.keys, self._rank_error, self.consumed.cursor, self.follow, sel)
        if cfg.prefetch_batches > 0:
            batches = Prefetcher(batches, cfg.prefetch_batches, pin=self.device.type == "cuda")
        try:
            with _progress(progress and self.main) as bar:
                bar_task = bar.add_task("train", total=cfg.steps, completed=self.start_step, loss="-")
                for step in range(self.start_step, cfg.steps):
                    t0 = time.perf_counter()
                    out = self.stepper.step(batches)
                    self.consumed = out.mark
                    self.pending.append((step, out.loss, out.keys))
                    if self.main and not self.probes and cfg.sample_every:
                        self.probes = self.task.probe_set(cfg, out.first_batch)
                    done = step + 1
                    log_now = done % max(1, cfg.log_every) == 0 or done == cfg.steps
                    ckpt_now = done == cfg.steps or bool(cfg.checkpoint_every and done % cfg.checkpoint_every == 0)
                    if log_now or ckpt_now:
                        self._settle()  # waits for the GPU: the window's time includes the steps' GPU time
                    self.window.add(out.wait_s, time.perf_counter() - t0, out.samples, out.flops)
                    if log_now:
                        self._log(done, out.lr)
                    if cfg.sample_every and done % cfg.sample_every == 0:
                        self._probe(done)
                    if ckpt_now:
                        last_ckpt = self.checkpoint(done)
                    loss = {"loss": f"{self.window.recent[-1]:.4f}"} if log_now else {}
                    bar.update(bar_task, advance=1, **loss)
            if self.start_step >= cfg.steps and last_ckpt is None:
                last_ckpt = self.checkpoint(self.start_step)
        finally:
            batches.close()
            self.logger.close()
        return last_ckpt
