"""`vidcorpus train` (the base stage) and `vidcorpus train-refiner` (``vidcorpus/jobs/train.py``), each
optionally exporting its EMA weights as a diffusers pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vidcorpus.cli.options import (CatalogOpt, ConfigOpt, PresetOpt, ProgressOpt, SetOpt, WorkdirOpt,
                                   effective_config)
from vidcorpus.cli.output import console
from vidcorpus.cli.user_errors import fail
from vidcorpus.config import Config
from vidcorpus.errors import ModelNotAvailable

# The options `train` and `train-refiner` share word for word (each stage reads them from its own section).
StepsOpt = typer.Option(None, "--steps", help="Optimizer steps.")
RunDirOpt = typer.Option(None, "--output", "-o", help="Run directory (default {workdir}/train/{run_id}).")
ResumeOpt = typer.Option(None, "--resume", help="'latest' (newest checkpoint of --output) or a run/checkpoint path.")
LauncherOpt = typer.Option(None, "--launcher", help="local (also under torchrun) or ray (Ray Train TorchTrainer).")
WorkersOpt = typer.Option(None, "--workers", help="Ray Train workers.")


def train(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    workdir: Optional[str] = WorkdirOpt,
    catalog: Optional[str] = CatalogOpt,
    preset: Optional[str] = PresetOpt,
    select: Optional[str] = typer.Option(None, "--select", help="SQL predicate over clips_wide, e.g. \"kept AND aesthetic >= 5\"."),
    release: Optional[str] = typer.Option(None, "--release", help="Train on a release's shards (checksums from its manifest)."),
    steps: Optional[int] = StepsOpt,
    output: Optional[str] = RunDirOpt,
    progress: bool = ProgressOpt,
    resume: Optional[str] = ResumeOpt,
    export: Optional[str] = typer.Option(None, "--export", help="After training, write the EMA weights as a diffusers I2VGenXLPipeline here."),
    launcher: Optional[str] = LauncherOpt,
    workers: Optional[int] = WorkersOpt,
    follow: Optional[bool] = typer.Option(None, "--follow/--no-follow", help="Ask the --select query again at every epoch: newly sealed shards join without a restart."),
) -> None:
    """Train the base image-to-video stage (I2VGen-XL UNet) on the shards a catalog query selects."""
    cfg = effective_config(config, set_, workdir=workdir, catalog=catalog,
                  **{"models.preset": preset, "train.select": select, "train.steps": steps,
                     "train.release": release, "train.launcher": launcher, "train.workers": workers,
                     "train.follow": follow})
    train_and_export(cfg, "base", output, progress, resume, export)


def train_refiner(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    workdir: Optional[str] = WorkdirOpt,
    catalog: Optional[str] = CatalogOpt,
    preset: Optional[str] = PresetOpt,
    select: Optional[str] = typer.Option(None, "--select", help="SQL predicate over clips_wide (default \"height >= 720\")."),
    release: Optional[str] = typer.Option(None, "--release", help="Train on a release's shards (one whose recipe keeps height >= 720)."),
    steps: Optional[int] = StepsOpt,
    output: Optional[str] = RunDirOpt,
    progress: bool = ProgressOpt,
    resume: Optional[str] = ResumeOpt,
    export: Optional[str] = typer.Option(None, "--export", help="After training, write the EMA weights as a diffusers VideoToVideoSDPipeline here."),
    launcher: Optional[str] = LauncherOpt,
    workers: Optional[int] = WorkersOpt,
) -> None:
    """Train the refiner stage (UNet3D video-to-video, 1280x720, brief captions) on random crops of high-resolution clips."""
    cfg = effective_config(config, set_, workdir=workdir, catalog=catalog,
                  **{"models.preset": preset, "refiner.select": select, "refiner.steps": steps,
                     "refiner.release": release, "refiner.launcher": launcher, "refiner.workers": workers})
    train_and_export(cfg, "refiner", output, progress, resume, export)


def train_and_export(cfg: Config, stage: str, output: str | None, progress: bool, resume: str | None,
                      export: str | None) -> None:
    """`train` and `train-refiner`: run the stage's training, report it, optionally export its EMA."""
    from vidcorpus.jobs.encode import LatentCacheMissing  # inside: keeps --help fast (torch, the jobs)
    from vidcorpus.jobs.models import resolve_models, resolve_refiner
    from vidcorpus.jobs.shard_selection import NoTrainingData
    from vidcorpus.jobs.train import run_training
    from vidcorpus.shard_reader import ShardChecksumError
    from vidcorpus.shards.release_files import ReleaseError
    from vidcorpus.storage import absolute
    from vidcorpus.train.resume import ResumeMismatch

    output, export = absolute(output), absolute(export)  # both are stored (train_runs, checkpoints)
    resume = resume if resume in (None, "latest") else absolute(resume)
    try:
        result = run_training(cfg, output=output, progress=progress, resume=resume, stage=stage)
    except (NoTrainingData, ModelNotAvailable, ReleaseError, ShardChecksumError, ResumeMismatch, LatentCacheMissing,
            FileNotFoundError, ValueError) as e:  # ValueError: --resume latest without --output
        fail(str(e))
    console.print(f"trained {'the refiner ' if stage == 'refiner' else ''}{result.steps} steps on "
                  f"{result.distinct_clips} clips from {result.n_shards} shards; loss {result.losses[0]:.4f} -> "
                  f"{result.losses[-1]:.4f}; checkpoint: {result.checkpoint_dir}")
    if not export:
        return
    if stage == "refiner":
        from vidcorpus.train.refiner import export_refiner  # inside: keeps --help fast (diffusers)

        export_refiner(resolve_refiner(cfg.models).refiner, result.checkpoint_dir, export)
        console.print(f"exported EMA weights as a VideoToVideoSDPipeline: {export}")
    else:
        from vidcorpus.train.export import export_pipeline  # inside: keeps --help fast (diffusers)

        export_pipeline(resolve_models(cfg.models).i2vgen, result.checkpoint_dir, export)
        console.print(f"exported EMA weights as an I2VGenXLPipeline: {export}")
