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
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator

import numpy as np
import torch

from vidcorpus.config import TrainConfig
from vidcorpus.train import checkpoint as ckpt_io
from vidcorpus.train.data import OnError, batch_shape, iter_batches
from vidcorpus.train.metrics import FlopCounter, MetricsLogger, peak_bf16_flops
from vidcorpus.train.models import load_components
from vidcorpus.train.parallel import spread
from vidcorpus.train.objective import TextEncoderCache, diffusion_loss


class NoTrainableSamples(RuntimeError):
    """A full pass over the shards produced no batch (every sample failed or none was selected)."""


class ResumeMismatch(ValueError):
    """A checkpoint cannot continue this run: different data selection or world size."""


@dataclass
class TrainResult:
    steps: int
    losses: list[float]
    sample_keys: list[str]  # clip ids trained on, in order, repeats included (all ranks)
    checkpoint_dir: str  # the final checkpoint
    seconds: float
    step_keys: list[tuple[int, str]] = field(default_factory=list)  # (step, clip id) pairs
    epochs: int = 1
    run_dir: str = ""
    resumed_from: str | None = None
    decode_failures: list[list[str]] = field(default_factory=list)  # [key, error class, message]


@dataclass
class DataCursor:
    """Where a rank's stream stands: epoch ``epoch``, at ``position`` (see ``EpochBatches.position``);
    ``batches`` batches of that epoch trained on (informational)."""

    epoch: int = 0
    batches: int = 0
    position: dict | None = None

    def snapshot(self) -> dict:
        return {"epoch": self.epoch, "batches": self.batches, "position": self.position}


@dataclass
class StreamMark:
    """The stream's state right after one batch was produced: the cursor to record once that batch
    is trained on, and the selection it came from (a prefetching thread runs ahead of training, so
    the live stream's state is not the consumed one)."""

    cursor: DataCursor
    fingerprint: str
    urls: list
    joined: int = 0


@dataclass
class _Raised:
    """What the prefetched iterator raised, handed to the consumer in its place."""

    error: BaseException


class Prefetcher:
    """Pulls items of an iterator on a thread, ``depth`` ahead, so reading, parsing and collating the
    next batch overlap the current step (the step ends in a host sync for the loss). Exceptions
    reach the consumer at the item where they happened. ``pin``: page-locked tensors, so the copy to
    the GPU can be asynchronous."""

    _END = object()

    def __init__(self, it: Iterator, depth: int, pin: bool = False):
        import queue
        import threading

        self.it, self.pin = it, pin
        self.q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="vidcorpus-prefetch", daemon=True)
        self.thread.start()

    def _put(self, item) -> bool:
        import queue

        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self.it:
                if self.pin:
                    batch, mark = item
                    item = ({k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}, mark)
                if not self._put(item):
                    break
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._put(_Raised(e))
        finally:
            self._put(self._END)
            close = getattr(self.it, "close", None)
            if close is not None:
                close()

    def __iter__(self):
        return self

    def __next__(self):
        item = self.q.get()
        if item is self._END:
            raise StopIteration
        if isinstance(item, _Raised):
            raise item.error
        return item

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


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
class Selection:
    """The shards and clip ids an epoch streams. With ``follow`` the selection is asked again at
    every epoch boundary, so shards sealed since the run started join the next pass."""

    urls: list
    keys: set[str] | None
    fingerprint: str = ""
    joined: int = 0  # shards that joined after the start (follow)

    def __post_init__(self):
        self.fingerprint = self.fingerprint or data_fingerprint(self.urls, self.keys)

    def update(self, urls: list, keys) -> int:
        """Adopt a fresh answer of the query; returns how many shards are new."""
        from vidcorpus.shards.reader import as_specs

        before = {s.url for s in as_specs(self.urls)}
        new = sum(s.url not in before for s in as_specs(urls))
        self.urls, self.keys = list(urls), (set(keys) if keys is not None else None)
        self.fingerprint = data_fingerprint(self.urls, self.keys)
        self.joined += new
        return new


def _batches_forever(urls: list, cfg: TrainConfig, keys, on_error: OnError | None,
                     cursor: DataCursor, follow=None, selection: Selection | None = None
                     ) -> Iterator[tuple[dict, StreamMark]]:
    """Epoch after epoch of the stream, starting at ``cursor``: (batch, the stream's mark right after
    it); each failing key is reported once, not once per epoch. ``follow()`` -> (urls, keys), called
    at each epoch boundary, replaces the selection (``selection`` records it)."""
    from vidcorpus.train.data import EpochBatches

    reported: set[str] = set()

    def report(key: str, exc: Exception) -> None:
        if key not in reported:
            reported.add(key)
            if on_error is not None:
                on_error(key, exc)

    epoch, skip, done = cursor.epoch, cursor.position, cursor.batches
    while True:
        stream = EpochBatches(urls, cfg, epoch=epoch, keys=keys, on_error=report, skip=skip)
        n = 0
        for batch in stream:
            n += 1
            mark = StreamMark(DataCursor(epoch, done + n, stream.position()),
                              selection.fingerprint if selection else "", selection.urls if selection else urls,
                              selection.joined if selection else 0)
            yield batch, mark
        if n == 0 and not skip:
            raise NoTrainableSamples(
                f"no trainable sample in {len(urls)} shard(s)" + (f"; {len(reported)} failed to decode" if reported else ""))
        epoch, skip, done = epoch + 1, None, 0
        if follow is not None:
            urls, keys = follow()
            if selection is not None:
                new = selection.update(urls, keys)
                if new:
                    logging.getLogger(__name__).info("follow: %d new shard(s) join epoch %d", new, epoch + 1)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _progress(enabled: bool, total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]train[/bold]"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), disable=not enabled)


def data_fingerprint(shard_urls: list, keys: Iterable[str] | None) -> str:
    from vidcorpus.shards.reader import as_specs

    h = hashlib.sha256()
    for spec in as_specs(shard_urls):
        h.update(f"{spec.url}\0{spec.sha256}\n".encode())
    h.update(b"--keys--\n")
    for k in sorted(keys) if keys is not None else ["<all>"]:
        h.update(k.encode() + b"\n")
    return h.hexdigest()


# -- activation checkpointing ---------------------------------------------------------------------

def apply_activation_checkpointing(unet: torch.nn.Module) -> int:
    """Wrap the UNet's ResnetBlock2D, TemporalConvLayer and transformer blocks in torch's
    non-reentrant checkpoint wrapper (diffusers refuses ``enable_gradient_checkpointing`` for
    I2VGenXLUNet). State-dict keys are unchanged. Returns the number of wrapped blocks."""
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D, TemporalConvLayer
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl, apply_activation_checkpointing as apply_ac, checkpoint_wrapper)

    kinds = (ResnetBlock2D, TemporalConvLayer, BasicTransformerBlock)
    n = sum(isinstance(m, kinds) for m in unet.modules())
    apply_ac(unet, checkpoint_wrapper_fn=lambda m: checkpoint_wrapper(m, checkpoint_impl=CheckpointImpl.NO_REENTRANT),
             check_fn=lambda m: isinstance(m, kinds))
    return n


def compile_unet(module: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """``torch.compile`` of the module the step runs (the UNet, or its DDP/FSDP2 wrapper).

    A wrapper rather than ``module.compile()``, so the loop keeps an eager handle on the same
    parameters for the steps that count FLOPs (see ``count_comps``); the optimizer, EMA and
    checkpoints keep using the unwrapped module."""
    return torch.compile(module, backend=cfg.compile_backend, mode=cfg.compile_mode)


# -- distributed helpers --------------------------------------------------------------------------

def _dist() -> tuple[bool, int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return True, dist.get_rank(), dist.get_world_size()
    return False, 0, 1


def _gather(obj, on: bool, world: int) -> list:
    if not on:
        return [obj]
    import torch.distributed as dist

    out: list = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _default_device() -> torch.device:
    import os

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


# -- the loop -------------------------------------------------------------------------------------

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
    distributed, rank, world = _dist()
    device = torch.device(device) if device is not None else _default_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    _seed_everything(cfg.seed + rank)
    use_bf16 = cfg.mixed_precision == "bf16" and device.type == "cuda"
    comps = task.load(model_dir, device, torch.bfloat16 if use_bf16 else torch.float32)
    unet = comps.unet
    unet.train()
    unet.requires_grad_(True)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1_000_003 * rank)
    shard_urls = list(shard_urls)
    selection = Selection(shard_urls, set(keys) if keys is not None else None)

    losses: list[float] = []
    step_keys: list[tuple[int, str]] = []
    failures: dict[str, list[str]] = {}
    cursor = DataCursor()
    start_step = 0
    resumed_from = ckpt_io.resolve_resume(resume, out_dir) if resume else None
    ema = copy.deepcopy(unet).requires_grad_(False).eval()
    if resumed_from:
        state = ckpt_io.read_state(resumed_from)
        if state.get("stage", "base") != task.kind:
            raise ResumeMismatch(f"checkpoint {resumed_from} is of the {state.get('stage', 'base')} stage, "
                                 f"this run trains the {task.kind} stage")
        grown = follow is not None and state.get("data_fingerprint") != selection.fingerprint
        if state.get("data_fingerprint") != selection.fingerprint and not grown:
            raise ResumeMismatch(f"checkpoint {resumed_from} was trained on a different selection "
                                 f"({state.get('data', {}).get('selection')}); its data cursor does not apply")
        if state.get("world_size", 1) != world:
            raise ResumeMismatch(f"checkpoint {resumed_from} has {state.get('world_size')} ranks' cursors; "
                                 f"this run has {world}")
        if (state.get("runtime", {}).get("parallel") or "ddp") != (cfg.parallel if world > 1 else "ddp"):
            raise ResumeMismatch(f"checkpoint {resumed_from} holds {state['runtime'].get('parallel')} optimizer state; "
                                 f"this run uses train.parallel={cfg.parallel}")
        trainer_state = ckpt_io.read_trainer_state(resumed_from)
        ckpt_io.load_unet_weights(resumed_from, "unet", unet)
        ckpt_io.load_unet_weights(resumed_from, "unet_ema", ema)
        ckpt_io.set_rng_states(trainer_state["rng"][rank], gen)
        for field_ in ("seed", "shuffle_buffer", "num_workers"):  # they fix each epoch's sample order
            if state["config"].get(field_) != getattr(cfg, field_):
                raise ResumeMismatch(f"checkpoint {resumed_from} ran with {field_}={state['config'].get(field_)}, "
                                     f"this run has {getattr(cfg, field_)}: its data cursor does not apply")
        cursor = DataCursor(**state["cursors"][rank])
        if grown:  # the query's answer changed: its cursor cannot apply; a new pass over the new answer
            cursor = DataCursor(epoch=cursor.epoch + 1)
        start_step = int(state["step"])
        losses = list(state["losses"])
        step_keys = [(int(s), k) for s, k in state["step_keys"]]
        failures = {f[0]: f for f in state.get("decode_failures", [])}

    runtime = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "autocast": "bf16" if use_bf16 else None,
               "activation_checkpointing_blocks": 0, "compiled": bool(cfg.compile), "world_size": world,
               "torch": torch.__version__}
    if cfg.gradient_checkpointing:
        runtime["activation_checkpointing_blocks"] = apply_activation_checkpointing(unet)
    # Spread over ranks first (FSDP2 replaces the parameters by sharded ones), then the optimizer.
    par = spread(unet, ema, device, cfg, distributed, rank)
    del ema  # the strategy owns it (sharded under FSDP2); full copies come from par when needed
    runtime["parallel"] = par.kind or "ddp"
    eager_unet = par.module
    train_unet = compile_unet(eager_unet, cfg) if cfg.compile else eager_unet
    params = par.parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                            **({"fused": True} if device.type == "cuda" else {}))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup_steps, cfg.steps))
    runtime["fused_adamw"] = bool(opt.defaults.get("fused"))
    if resumed_from:
        par.load_optimizer_state(opt, trainer_state["optimizer"])
        sched.load_state_dict(trainer_state["scheduler"])
        del trainer_state
    train_comps = replace(comps, unet=train_unet)
    # FLOPs are counted on one eager step per batch shape: torch 2.11 never compiles a module whose
    # first call ran under a dispatch mode such as FlopCounterMode (it marks the frame skipped).
    count_comps = replace(comps, unet=eager_unet)
    cudagraphs = bool(cfg.compile and cfg.compile_mode == "reduce-overhead")
    task.setup(comps)

    import threading

    failures_lock = threading.Lock()  # the prefetch thread reports failures while a checkpoint reads them

    def rank_error(key: str, exc: Exception) -> None:
        from vidcorpus.errors import classify_error

        with failures_lock:
            failures.setdefault(key, [key, classify_error(exc), f"{type(exc).__name__}: {exc}"[:2000]])
        if on_error is not None:
            on_error(key, exc)

    main = rank == 0
    logger = MetricsLogger(out_dir, enabled=main, tensorboard=cfg.tensorboard)
    flops = FlopCounter()
    peak = peak_bf16_flops(device)
    window = {"wait": 0.0, "total": 0.0, "samples": 0, "flops": 0, "flops_known": True, "steps": 0}
    probes: list[tuple] = []
    last_ckpt = resumed_from
    autocast_dtype = torch.bfloat16 if use_bf16 else None

    consumed = StreamMark(cursor, selection.fingerprint, selection.urls, selection.joined)
    # Each step's loss stays on the device until the log or checkpoint step: a float() per step
    # would make the host wait for the GPU every step, so it could never queue the next step's
    # kernels while the GPU still runs this one.
    pending: list[tuple[int, torch.Tensor, list[str]]] = []

    def settle() -> None:
        """The pending steps' losses as floats (one host sync) and their sample keys from every rank
        (one collective), in step order."""
        if not pending:
            return
        values = torch.stack([v for _s, v, _k in pending]).tolist()
        per_rank = _gather([k for _s, _v, k in pending], distributed, world)
        for i, (s_, _v, _k) in enumerate(pending):
            losses.append(values[i])
            for keys_of_rank in per_rank:
                step_keys.extend((s_, k) for k in keys_of_rank[i])
        pending.clear()

    def checkpoint(step: int) -> str:
        with failures_lock:
            mine = list(failures.values())
        full_unet, full_ema = par.full_modules()  # collective under FSDP2: every rank takes part
        opt_state = par.optimizer_state(opt)
        gathered = _gather({"cursor": consumed.cursor.snapshot(), "rng": ckpt_io.rng_states(gen),
                            "failures": mine}, distributed, world)
        all_failures = {f[0]: f for g in gathered for f in g["failures"]}
        url = ckpt_io.join(out_dir, ckpt_io.CKPT_DIR, ckpt_io.step_name(step))
        if main:
            state = {
                "step": step, "world_size": world, "epochs": consumed.cursor.epoch + 1,
                "cursors": [g["cursor"] for g in gathered],
                "data": run_info or {}, "data_fingerprint": consumed.fingerprint,
                "follow": {"on": follow is not None, "shards_joined": consumed.joined},
                "shards": [s if isinstance(s, str) else getattr(s, "url", str(s)) for s in consumed.urls],
                "losses": losses, "sample_keys": [k for _s, k in step_keys],
                "step_keys": [[s, k] for s, k in step_keys],
                "decode_failures": sorted(all_failures.values()),
                "model": comps.name or model_dir, "stage": task.kind, "config": cfg.model_dump(),
                "resumed_from": resumed_from, "runtime": runtime,
            }
            trainer_state = {"optimizer": opt_state, "scheduler": sched.state_dict(),
                             "rng": [g["rng"] for g in gathered]}
            url = ckpt_io.save_checkpoint(out_dir, step, full_unet, full_ema, trainer_state, state, cfg.keep_checkpoints)
            logger.flush()
        if distributed:
            import torch.distributed as dist

            dist.barrier()
        return url

    batches = _batches_forever(selection.urls, cfg, selection.keys, rank_error, cursor, follow, selection)
    if cfg.prefetch_batches > 0:
        batches = Prefetcher(batches, cfg.prefetch_batches, pin=device.type == "cuda")
    try:
        with _progress(progress and main, cfg.steps) as bar:
            bar_task = bar.add_task("train", total=cfg.steps, completed=start_step, loss="-")
            for step in range(start_step, cfg.steps):
                t0 = time.perf_counter()
                batch, consumed = next(batches)
                t1 = time.perf_counter()
                shape = batch_shape(batch)
                counting = flops.needs_count(shape)
                counter = flops.mode() if counting else nullcontext()
                if cudagraphs:  # the previous step's graph outputs are dead: their memory may be reused
                    torch.compiler.cudagraph_mark_step_begin()
                with counter:
                    loss = task.loss(count_comps if counting else train_comps, batch, cfg, gen, autocast_dtype)
                    loss.backward()
                if counting:
                    flops.record(shape, counter)
                if cfg.grad_clip and cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                lr = sched.get_last_lr()[0]
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                par.ema_update(cfg.ema_decay)
                value = loss.detach().float()
                if distributed:
                    import torch.distributed as dist

                    dist.all_reduce(value)
                    value /= world
                pending.append((step, value, list(batch["key"])))
                if main and not probes and cfg.sample_every:
                    probes = task.probe_set(cfg, batch)
                done = step + 1
                log_now = done % max(1, cfg.log_every) == 0 or done == cfg.steps
                ckpt_now = done == cfg.steps or bool(cfg.checkpoint_every and done % cfg.checkpoint_every == 0)
                if log_now or ckpt_now:
                    settle()  # waits for the GPU: the window's time below includes the steps' GPU time
                t2 = time.perf_counter()

                window["wait"] += t1 - t0
                window["total"] += t2 - t0
                window["samples"] += len(batch["key"]) * world
                window["steps"] += 1
                f = flops.flops(shape)
                window["flops"] += f or 0
                window["flops_known"] &= f is not None
                if main and log_now:
                    secs = max(window["total"], 1e-9)
                    logger.log({
                        "step": done, "loss": losses[-1],
                        "loss_avg": float(np.mean(losses[-window["steps"]:])), "lr": lr,
                        "samples_per_s": window["samples"] / secs,
                        "data_wait_share": window["wait"] / secs,
                        "step_s": secs / window["steps"],
                        "flops_per_step": window["flops"] / window["steps"] if window["flops_known"] else None,
                        "mfu": (window["flops"] / secs / peak) if (peak and window["flops_known"]) else None,
                        "epoch": consumed.cursor.epoch + 1, "world_size": world, "time": time.time(),
                    })
                    window = {"wait": 0.0, "total": 0.0, "samples": 0, "flops": 0, "flops_known": True, "steps": 0}
                if cfg.sample_every and done % cfg.sample_every == 0:
                    full_ema = par.full_ema()  # collective under FSDP2
                    if main:
                        on_host = next(full_ema.parameters()).device != device
                        task.sample_probes(comps, full_ema.to(device), cfg, probes, out_dir, done, autocast_dtype)
                        if on_host:
                            full_ema.to("cpu")
                if ckpt_now:
                    last_ckpt = checkpoint(done)
                bar.update(bar_task, advance=1, **({"loss": f"{losses[-1]:.4f}"} if log_now else {}))
        if start_step >= cfg.steps and last_ckpt is None:
            last_ckpt = checkpoint(start_step)
    finally:
        batches.close()
        logger.close()

    return TrainResult(steps=len(losses), losses=losses, sample_keys=[k for _s, k in step_keys],
                       checkpoint_dir=last_ckpt or "", seconds=time.perf_counter() - started,
                       step_keys=step_keys, epochs=consumed.cursor.epoch + 1, run_dir=out_dir, resumed_from=resumed_from,
                       decode_failures=sorted(failures.values()))


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
    from vidcorpus.train.export import build_pipeline, sample_video, write_mp4

    pipe = build_pipeline(comps, ema)
    pipe.set_progress_bar_config(disable=True)
    device = next(ema.parameters()).device
    urls = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        for i, (image, prompt) in enumerate(probes):
            frames = sample_video(pipe, image, prompt, cfg.height, cfg.width, cfg.num_frames, cfg.fps,
                                  steps=cfg.sample_steps, seed=cfg.seed + i)
            urls.append(write_mp4(frames, cfg.fps, ckpt_io.join(out_dir, "samples", f"step-{step:08d}-probe{i}.mp4")))
    return urls
