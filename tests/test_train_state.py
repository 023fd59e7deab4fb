"""Training state that stays small and exact: the checkpoint holds the cursor (its size does not grow
with the step count), the per-step clip ids live in the per-rank sample log and fill train_samples
exactly across kills and resumes, and gradient accumulation trains like one large batch and resumes
exactly from a run killed inside an accumulation window."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from test_train import _cfg, shards, tiny_model  # noqa: F401 - the tiny I2VGen-XL and shard fixtures


def _weights(ckpt: str, sub: str = "unet") -> dict:
    from diffusers import I2VGenXLUNet

    return I2VGenXLUNet.from_pretrained(str(Path(ckpt) / sub)).state_dict()


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# -- checkpoint size ------------------------------------------------------------------------------

def test_checkpoint_size_does_not_grow_with_the_step_count(tiny_model, shards, tmp_path):  # noqa: F811
    """The loop's own checkpoint writer, at step 10 and at step 10,000 of a run whose sample log
    holds every step: the checkpoint files keep their size; the history is in the sample log."""
    from vidcorpus.train.loop import BaseTask
    from vidcorpus.train.sample_log import losses_of, read_samples
    from vidcorpus.train.trainer import Trainer

    run = tmp_path / "run"
    trainer = Trainer(BaseTask(), _cfg(steps=10_000, keep_checkpoints=0), tiny_model, shards["urls"], str(run))

    def train_until(start: int, end: int) -> dict[str, int]:
        for step in range(start, end):  # what _settle records for a trained step
            trainer.samples.add(step, [f"clip{step % 3}", f"clip{(step + 1) % 3}"], 1.0 / (step + 1))
            trainer.window.recent.append(1.0 / (step + 1))
        ckpt = Path(trainer.checkpoint(end))
        return {f.name: f.stat().st_size for f in ckpt.iterdir() if f.is_file()}

    try:
        early, late = train_until(0, 10), train_until(10, 10_000)
    finally:
        trainer.logger.close()
    assert early.keys() == late.keys() == {"train_state.json", "trainer_state.pt"}
    assert abs(late["trainer_state.pt"] - early["trainer_state.pt"]) < 64
    assert abs(late["train_state.json"] - early["train_state.json"]) < 64  # a few more digits, nothing more
    state = json.loads((run / "checkpoints" / "step-00010000" / "train_state.json").read_text())
    assert state["samples"] == {"dir": "train_samples", "through_step": 10_000, "rows": [20_000]}
    log = read_samples(str(run))
    assert log.num_rows == 20_000 and log["step"].to_pylist()[-2:] == [9_999, 9_999]
    losses = losses_of(log)
    assert len(losses) == 10_000 and losses[:2] == [1.0, 0.5]


# -- gradient accumulation ------------------------------------------------------------------------

@dataclass
class _Comps:
    unet: torch.nn.Module


class _LinearTask:
    """A deterministic model and loss (mean squared error over the batch's samples)."""

    def loss(self, comps, batch, cfg, gen, autocast_dtype):
        pred = comps.unet(batch["video"].flatten(1))
        return torch.nn.functional.mse_loss(pred, batch["target"])


def _train_linear(batch_sizes: list[int], accum: int, steps: int) -> tuple[dict, list[float]]:
    """``steps`` optimizer steps of a linear model on a fixed sample sequence cut into batches of
    ``batch_sizes`` (cycled), ``accum`` batches per step; the final weights and per-step losses."""
    from vidcorpus.train.parallel import Replicated
    from vidcorpus.train.step import Stepper, lr_lambda

    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(64, 1, 1, 2, 3, generator=g), torch.randn(64, 2, generator=g)
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 2)
    par = Replicated(model, torch.nn.Linear(6, 2).requires_grad_(False), torch.device("cpu"), distributed=False)
    cfg = _cfg(grad_accum_steps=accum, lr=0.05, warmup_steps=1, steps=steps, grad_clip=1.0, ema_decay=0.9)
    opt = torch.optim.AdamW(par.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup_steps, cfg.steps))

    def batches():
        at, i = 0, 0
        while True:
            n = batch_sizes[i % len(batch_sizes)]
            yield {"key": [f"s{j}" for j in range(at, at + n)], "video": x[at:at + n], "target": y[at:at + n]}, None
            at, i = at + n, i + 1

    stepper = Stepper(_LinearTask(), cfg, par, opt, sched, _Comps(model), _Comps(model), torch.Generator())
    it = batches()
    losses = [float(stepper.step(it).loss) for _ in range(steps)]
    return {k: v.clone() for k, v in model.state_dict().items()}, losses


@pytest.mark.parametrize("micro", [[2, 2], [3, 1]], ids=["equal", "ragged"])
def test_gradient_accumulation_trains_like_one_large_batch(micro):
    """accum 2 x batch b == batch 2b: the same weights after every step and the same losses, also when
    a bucket's leftover makes the micro-batches unequal (each is weighted by its share of samples)."""
    large, large_losses = _train_linear([4], accum=1, steps=5)
    accumulated, acc_losses = _train_linear(micro, accum=2, steps=5)
    for k in large:
        torch.testing.assert_close(accumulated[k], large[k], rtol=1e-5, atol=1e-6)
    assert acc_losses == pytest.approx(large_losses, rel=1e-5)
    unscaled, _ = _train_linear([2], accum=1, steps=10)  # two plain steps per accumulated one: not the same
    assert max(float((unscaled[k] - large[k]).abs().max()) for k in large) > 1e-3


class _Killed(RuntimeError):
    pass


def test_a_run_killed_inside_an_accumulation_window_resumes_exactly(tiny_model, shards, tmp_path):  # noqa: F811
    """Exact resume means: a run killed in the middle of an accumulation window (gradients of one of
    the window's two micro-batches accumulated, no optimizer step yet) and resumed from its last
    checkpoint ends with the same parameters, EMA, losses and (step, clip) rows as a run that was
    never interrupted. Checkpoints fall between optimizer steps; the window is trained again."""
    from vidcorpus.train.loop import BaseTask, train_base, train_loop
    from vidcorpus.train.sample_log import read_samples

    cfg = _cfg(steps=4, grad_accum_steps=2, checkpoint_every=2, keep_checkpoints=0, log_every=1, tensorboard=False)
    full = train_base(cfg, tiny_model, shards["urls"], str(tmp_path / "full"), progress=False)
    assert full.steps == 4 and len(full.losses) == 4
    per_step = [sum(s == i for s, _k in full.step_keys) for i in range(4)]
    assert all(n >= 2 for n in per_step) and max(per_step) > cfg.batch_size, per_step  # two micro-batches a step

    class DiesMidWindow(BaseTask):
        calls = 0

        def loss(self, *a, **kw):
            DiesMidWindow.calls += 1
            if DiesMidWindow.calls == 6:  # step 3's second micro-batch: its first one already went backward
                raise _Killed("killed")
            return super().loss(*a, **kw)

    run = tmp_path / "killed"
    with pytest.raises(_Killed):
        train_loop(DiesMidWindow(), cfg, tiny_model, shards["urls"], str(run), progress=False)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000002"]
    resumed = train_base(cfg, tiny_model, shards["urls"], str(run), progress=False, resume="latest")
    assert resumed.resumed_from == str(run / "checkpoints" / "step-00000002")
    assert resumed.step_keys == full.step_keys
    assert resumed.losses == pytest.approx(full.losses, rel=1e-4, abs=1e-6)
    for sub in ("unet", "unet_ema"):
        assert _max_diff(_weights(full.checkpoint_dir, sub), _weights(resumed.checkpoint_dir, sub)) < 1e-5, sub
    assert read_samples(str(run)).num_rows == sum(per_step)  # every step's rows once


# -- train_samples exact --------------------------------------------------------------------------

def test_train_samples_stay_exact_when_a_run_dies_between_its_rows_and_its_checkpoint(
        tiny_model, shards, tmp_path, monkeypatch):  # noqa: F811
    """A run killed after flushing the rows of steps [2, 4) but before writing its step-4 checkpoint:
    the resumed run trains steps 2 and 3 again, and neither the sample log nor train_samples counts
    them twice; recording again (a rerun) changes nothing."""
    import vidcorpus.train.trainer as trainer_mod
    from vidcorpus.catalog.store import Catalog
    from vidcorpus.train.loop import train_base
    from vidcorpus.train.sample_log import list_parts
    from vidcorpus.jobs.train import sample_files

    cfg = _cfg(steps=6, checkpoint_every=2, keep_checkpoints=0, tensorboard=False)
    full = train_base(cfg, tiny_model, shards["urls"], str(tmp_path / "full"), progress=False)

    real_save = trainer_mod.ckpt_io.save_checkpoint

    def dies_at_step_4(run_dir, step, *a, **kw):
        if step == 4:
            raise _Killed("killed while writing the step-4 checkpoint")
        return real_save(run_dir, step, *a, **kw)

    run = tmp_path / "run"
    monkeypatch.setattr(trainer_mod.ckpt_io, "save_checkpoint", dies_at_step_4)
    with pytest.raises(_Killed):
        train_base(cfg, tiny_model, shards["urls"], str(run), progress=False)
    monkeypatch.undo()
    assert [(p.start, p.end) for p in list_parts(str(run))] == [(0, 2), (2, 4)]  # rows of 2..3 without a checkpoint
    resumed = train_base(cfg, tiny_model, shards["urls"], str(run), progress=False, resume="latest")
    assert [(p.start, p.end) for p in list_parts(str(run))] == [(0, 2), (2, 4), (4, 6)]
    assert resumed.step_keys == full.step_keys

    with Catalog(str(tmp_path / "catalog.duckdb")) as cat:
        files = sample_files(resumed)
        for _ in range(2):  # a second record of the same run (a rerun) adds nothing
            cat.record_training("r1", "base", "test", resumed.steps, resumed.losses[-1], resumed.checkpoint_dir, [],
                                "{}", dt.datetime(2026, 1, 1), resumed.samples, files=files, replace_from=0)
        rows = cat.query_dicts("SELECT step, clip_id FROM train_samples WHERE run_id = 'r1'")
        recorded = cat.query_dicts("SELECT rank, first_step, end_step, rows FROM train_sample_files ORDER BY first_step")
    assert sorted((r["step"], r["clip_id"]) for r in rows) == sorted(set(full.step_keys))
    assert [(r["first_step"], r["end_step"]) for r in recorded] == [(0, 2), (2, 4), (4, 6)]
    assert sum(r["rows"] for r in recorded) == len(full.step_keys)


def test_recording_a_shorter_history_replaces_the_steps_it_covers(tmp_path):
    """A run resumed from an older checkpoint and recorded again: the steps its log no longer holds
    leave train_samples (exact, not merely added to), and earlier steps outside the log stay."""
    from vidcorpus.catalog.store import Catalog

    with Catalog(str(tmp_path / "catalog.duckdb")) as cat:
        when = dt.datetime(2026, 1, 1)
        cat.record_training("r1", "base", "t", 4, 0.5, "/ckpt", [], "{}", when,
                            [(0, "a"), (1, "b"), (2, "c"), (3, "d")], replace_from=0)
        cat.record_training("r1", "base", "t", 3, 0.4, "/ckpt", [], "{}", when, [(2, "e")], replace_from=2)
        rows = cat.query_dicts("SELECT step, clip_id FROM train_samples WHERE run_id = 'r1' ORDER BY step")
    assert [(r["step"], r["clip_id"]) for r in rows] == [(0, "a"), (1, "b"), (2, "e")]


def test_a_resume_from_another_run_directory_brings_the_history_along(tiny_model, shards, tmp_path):  # noqa: F811
    """`--resume <checkpoint> --output <new dir>`: the new run directory gets the rows up to the
    checkpoint, so its TrainResult and train_samples cover the whole run."""
    from vidcorpus.train.loop import train_base

    cfg = _cfg(steps=3, checkpoint_every=2, keep_checkpoints=0, tensorboard=False)
    full = train_base(cfg, tiny_model, shards["urls"], str(tmp_path / "a"), progress=False)
    elsewhere = train_base(cfg, tiny_model, shards["urls"], str(tmp_path / "b"), progress=False,
                           resume=str(tmp_path / "a" / "checkpoints" / "step-00000002"))
    assert elsewhere.step_keys == full.step_keys and len(elsewhere.losses) == 3
    shutil.rmtree(tmp_path / "a")  # the new directory stands on its own
    assert replace(elsewhere).step_keys == full.step_keys  # a fresh read of the new directory's log


def test_a_checkpoint_from_before_the_sample_log_resumes_with_its_history(tiny_model, shards, tmp_path):  # noqa: F811
    """Checkpoints written before this layout kept the history in train_state.json; resuming one
    turns that history into the sample log's first part, so the run's rows stay whole."""
    from vidcorpus.train.loop import train_base

    cfg = _cfg(steps=3, checkpoint_every=2, keep_checkpoints=0, tensorboard=False)
    full = train_base(cfg, tiny_model, shards["urls"], str(tmp_path / "full"), progress=False)
    old = tmp_path / "old" / "checkpoints" / "step-00000002"
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step-00000002", old)
    state = json.loads((old / "train_state.json").read_text())
    del state["samples"], state["last_loss"]
    earlier = [[s, k] for s, k in full.step_keys if s < 2]
    state.update(step_keys=earlier, sample_keys=[k for _s, k in earlier], losses=full.losses[:2])
    (old / "train_state.json").write_text(json.dumps(state))
    resumed = train_base(cfg, tiny_model, shards["urls"], str(tmp_path / "old"), progress=False, resume="latest")
    assert resumed.step_keys == full.step_keys
    assert resumed.losses == pytest.approx(full.losses, rel=1e-4, abs=1e-6)
