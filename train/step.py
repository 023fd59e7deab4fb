"""One optimizer step of the training loop, from ``train.grad_accum_steps`` micro-batches.

Gradient accumulation: the step pulls N micro-batches from the stream, runs forward and backward on
each with its loss weighted by its share of the step's samples (micro-batches of a bucket's leftover
can be smaller), and steps the optimizer once. With equal micro-batches that is the loss scaled by
1/N; in every case the gradient is the one of a single batch holding all the step's samples (for a
loss that is a mean over samples, as both stages' are). Under DDP the gradient all-reduce runs only
on the last micro-batch (``no_sync`` before it); under FSDP2 the reduce-scatter likewise
(``set_requires_gradient_sync``). A step is the unit of the LR schedule, the EMA, logs and
checkpoints; checkpoints fall between steps, so a resume never starts inside an accumulation window.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from vidcorpus.config import TrainConfig
from vidcorpus.train.data import batch_shape
from vidcorpus.train.metrics import FlopCounter
from vidcorpus.train.stream import StreamMark


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


@dataclass
class StepOutcome:
    """What one step did: its loss (on the device; averaged over ranks when distributed), this rank's
    clip ids, the stream's mark after its last micro-batch, and what the log window counts."""

    loss: torch.Tensor
    keys: list[str]
    mark: StreamMark
    first_batch: dict
    lr: float
    wait_s: float
    samples: int
    flops: int | None


class Stepper:
    """Runs steps: ``step(batches)`` pulls the micro-batches of one step from ``batches`` (an
    iterator of (batch, mark)) and trains on them. ``comps``/``count_comps``: the components with the
    UNet the step runs (maybe compiled) and with the eager one (FLOPs are counted on an eager pass)."""

    def __init__(self, task, cfg: TrainConfig, par, opt, sched, comps, count_comps, gen: torch.Generator,
                 autocast_dtype=None, world: int = 1, flops: FlopCounter | None = None, cudagraphs: bool = False):
        self.task, self.cfg, self.par, self.opt, self.sched = task, cfg, par, opt, sched
        self.comps, self.count_comps, self.gen, self.autocast_dtype = comps, count_comps, gen, autocast_dtype
        self.world, self.flops, self.cudagraphs = world, flops or FlopCounter(), cudagraphs
        self.params = par.parameters()

    def _pull(self, batches: Iterator) -> tuple[list[dict], StreamMark, float]:
        micro, mark, wait = [], None, 0.0
        for _ in range(max(1, self.cfg.grad_accum_steps)):
            t0 = time.perf_counter()
            batch, mark = next(batches)
            wait += time.perf_counter() - t0
            micro.append(batch)
        return micro, mark, wait

    def _micro_step(self, batch: dict, weight: float, last: bool) -> tuple[torch.Tensor, int | None]:
        """Forward and backward of one micro-batch (loss times ``weight``); its FLOPs when counted."""
        shape = batch_shape(batch)
        counting = self.flops.needs_count(shape)
        counter = self.flops.mode() if counting else nullcontext()
        if self.cudagraphs:  # the previous pass's graph outputs are dead: their memory may be reused
            torch.compiler.cudagraph_mark_step_begin()
        with counter, self.par.gradient_sync(last):
            loss = self.task.loss(self.count_comps if counting else self.comps, batch, self.cfg, self.gen,
                                  self.autocast_dtype)
            (loss * weight if weight != 1.0 else loss).backward()
        if counting:
            self.flops.record(shape, counter)
        return loss.detach().float() * weight, self.flops.flops(shape)

    def step(self, batches: Iterator) -> StepOutcome:
        micro, mark, wait = self._pull(batches)
        sizes = [len(b["key"]) for b in micro]
        total = sum(sizes)
        loss, flops, known = None, 0, True
        for i, batch in enumerate(micro):
            part, f = self._micro_step(batch, sizes[i] / total if len(micro) > 1 else 1.0, i == len(micro) - 1)
            loss = part if loss is None else loss + part
            flops += f or 0
            known &= f is not None
        if self.cfg.grad_clip and self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        lr = self.sched.get_last_lr()[0]
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.par.ema_update(self.cfg.ema_decay)
        if self.world > 1:
            dist.all_reduce(loss)
            loss /= self.world
        keys = [k for b in micro for k in b["key"]]
        return StepOutcome(loss, keys, mark, micro[0], lr, wait, total, flops if known else None)
