"""Resuming a training run: which checkpoint, whether it can continue this run, and restoring it.

A checkpoint continues a run only if its data cursor points at the same stream: the same selection
(or, with ``--follow``, a grown one: a new pass then starts), world size, parallel strategy, seed,
shuffle buffer and DataLoader worker count; and the same stage. Anything else is refused with
``ResumeMismatch`` before a weight is touched. Checkpoints fall between optimizer steps, so a run
killed inside a gradient-accumulation window resumes at the window's start and trains the window's
micro-batches again from the cursor: the same parameters as if it had never stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vidcorpus.config import TrainConfig
from vidcorpus.train import checkpoint as ckpt_io
from vidcorpus.train.stream import DataCursor, Selection


class ResumeMismatch(ValueError):
    """A checkpoint cannot continue this run: different data selection or world size."""


@dataclass
class Resumed:
    """What a run continues from: the checkpoint, its step, this rank's cursor and the run's decode
    failures so far; the trainer state (optimizer, schedule, RNG) until it is restored."""

    ckpt: str
    step: int
    cursor: DataCursor
    failures: dict = field(default_factory=dict)
    sample_rows: int | None = None  # this rank's rows of steps [0, step) (None: an older checkpoint)
    trainer_state: dict | None = None
    legacy_history: tuple[list, list] | None = None  # (step_keys, losses) a checkpoint of before the sample log held


def _check(state: dict, ckpt: str, kind: str, selection: Selection, grown: bool, world: int,
           cfg: TrainConfig) -> None:
    if state.get("stage", "base") != kind:
        raise ResumeMismatch(f"checkpoint {ckpt} is of the {state.get('stage', 'base')} stage, "
                             f"this run trains the {kind} stage")
    if state.get("data_fingerprint") != selection.fingerprint and not grown:
        raise ResumeMismatch(f"checkpoint {ckpt} was trained on a different selection "
                             f"({state.get('data', {}).get('selection')}); its data cursor does not apply")
    if state.get("world_size", 1) != world:
        raise ResumeMismatch(f"checkpoint {ckpt} has {state.get('world_size')} ranks' cursors; this run has {world}")
    if (state.get("runtime", {}).get("parallel") or "ddp") != (cfg.parallel if world > 1 else "ddp"):
        raise ResumeMismatch(f"checkpoint {ckpt} holds {state['runtime'].get('parallel')} optimizer state; "
                             f"this run uses train.parallel={cfg.parallel}")
    for name in ("seed", "shuffle_buffer", "num_workers"):  # they fix each epoch's sample order
        if state["config"].get(name) != getattr(cfg, name):
            raise ResumeMismatch(f"checkpoint {ckpt} ran with {name}={state['config'].get(name)}, "
                                 f"this run has {getattr(cfg, name)}: its data cursor does not apply")


def read_resume(resume: str | None, out_dir: str, kind: str, cfg: TrainConfig, selection: Selection,
                following: bool, world: int, rank: int) -> Resumed | None:
    """The checkpoint ``resume`` names ("latest": the newest of ``out_dir``; None if it has none),
    checked against this run; None when there is nothing to resume."""
    ckpt = ckpt_io.resolve_resume(resume, out_dir) if resume else None
    if not ckpt:
        return None
    state = ckpt_io.read_state(ckpt)
    grown = following and state.get("data_fingerprint") != selection.fingerprint
    _check(state, ckpt, kind, selection, grown, world, cfg)
    cursor = DataCursor(**state["cursors"][rank])
    if grown:  # the query's answer changed: its cursor cannot apply; a new pass over the new answer
        cursor = DataCursor(epoch=cursor.epoch + 1)
    rows = state.get("samples", {}).get("rows")
    legacy = (state["step_keys"], state.get("losses", [])) if "samples" not in state and "step_keys" in state else None
    return Resumed(ckpt=ckpt, step=int(state["step"]), cursor=cursor,
                   failures={f[0]: f for f in state.get("decode_failures", [])},
                   sample_rows=rows[rank] if rows else None, trainer_state=ckpt_io.read_trainer_state(ckpt),
                   legacy_history=legacy)


def restore_weights(resumed: Resumed, unet: torch.nn.Module, ema: torch.nn.Module, gen: torch.Generator,
                    rank: int) -> None:
    """UNet, EMA and this rank's RNG states as the checkpoint saved them (before the UNet is spread)."""
    ckpt_io.load_unet_weights(resumed.ckpt, "unet", unet)
    ckpt_io.load_unet_weights(resumed.ckpt, "unet_ema", ema)
    ckpt_io.set_rng_states(resumed.trainer_state["rng"][rank], gen)


def restore_optimizer(resumed: Resumed, par, opt: torch.optim.Optimizer, sched) -> None:
    """Optimizer moments and LR schedule (after the optimizer is built over the spread parameters)."""
    par.load_optimizer_state(opt, resumed.trainer_state["optimizer"])
    sched.load_state_dict(resumed.trainer_state["scheduler"])
    resumed.trainer_state = None  # the optimizer holds its own copy now
