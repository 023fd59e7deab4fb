"""`vidcorpus export` (a base checkpoint as an I2VGenXLPipeline) and `vidcorpus export-refiner` (a refiner
checkpoint as a VideoToVideoSDPipeline): one command body, built twice with each stage's words and writer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import List, Optional

import typer

from vidcorpus.cli.options import ConfigOpt, PresetOpt, SetOpt, effective_config
from vidcorpus.cli.output import console
from vidcorpus.cli.user_errors import fail
from vidcorpus.config import Config
from vidcorpus.errors import ModelNotAvailable

# (effective config, checkpoint or run directory, output directory, "ema" or "unet") -> writes the pipeline
PipelineWriter = Callable[[Config, str, str, str], object]


def _export_command(doc: str, checkpoint_help: str, pipeline: str, write: PipelineWriter, done: str) -> Callable:
    """The export command of one stage: the same arguments and options, a missing model or checkpoint
    is one line, success says where it went (``done`` names {checkpoint}, {weights} and {out})."""

    def export_command(
        checkpoint: str = typer.Argument(..., help=checkpoint_help),
        out: str = typer.Argument(..., help=f"Where the diffusers {pipeline} directory is written."),
        config: Optional[Path] = ConfigOpt,
        set_: Optional[List[str]] = SetOpt,
        preset: Optional[str] = PresetOpt,
        weights: str = typer.Option("ema", "--weights", help="ema (default) or unet (the raw trained weights)."),
    ) -> None:
        cfg = effective_config(config, set_, **{"models.preset": preset})
        try:
            # inside: keeps --help fast (torch)
            from vidcorpus.train.checkpoint import resolve_resume

            # the checkpoint is found first: a wrong path fails before the models are resolved (or built)
            write(cfg, resolve_resume(checkpoint), out, weights)
        except (ModelNotAvailable, FileNotFoundError) as e:
            fail(str(e))
        console.print(done.format(checkpoint=checkpoint, weights=weights, out=out))

    export_command.__doc__ = doc  # typer's help text for the command
    return export_command


def _write_base(cfg: Config, checkpoint: str, out: str, weights: str) -> None:
    from vidcorpus.jobs.models import resolve_models  # inside: keeps --help fast (the jobs)
    from vidcorpus.train.export import export_pipeline  # inside: keeps --help fast (diffusers)

    export_pipeline(resolve_models(cfg.models).i2vgen, checkpoint, out, weights=weights)


def _write_refiner(cfg: Config, checkpoint: str, out: str, weights: str) -> None:
    from vidcorpus.jobs.models import resolve_refiner  # inside: keeps --help fast (the jobs)
    from vidcorpus.train.refiner import export_refiner  # inside: keeps --help fast (diffusers)

    export_refiner(resolve_refiner(cfg.models).refiner, checkpoint, out, weights=weights)


export = _export_command(
    "Export a training checkpoint's EMA UNet with the frozen components as an I2VGenXLPipeline.",
    "A checkpoint directory or a run directory (its newest checkpoint).", "I2VGenXLPipeline", _write_base,
    "exported {checkpoint} ({weights} weights) -> {out}")

export_refiner_cmd = _export_command(
    "Export a refiner checkpoint's EMA UNet with the frozen components as a VideoToVideoSDPipeline.",
    "A refiner checkpoint directory or run directory (its newest checkpoint).", "VideoToVideoSDPipeline",
    _write_refiner, "exported refiner {checkpoint} ({weights} weights) -> {out}")
