"""`vidcorpus export` (a base checkpoint as an I2VGenXLPipeline) and `vidcorpus export-refiner` (a refiner
checkpoint as a VideoToVideoSDPipeline)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vidcorpus.cli.errors import fail
from vidcorpus.cli.options import ConfigOpt, PresetOpt, SetOpt, effective_config
from vidcorpus.cli.output import console
from vidcorpus.errors import ModelNotAvailable
from vidcorpus.presets import resolve_models, resolve_refiner


def export(
    checkpoint: str = typer.Argument(..., help="A checkpoint directory or a run directory (its newest checkpoint)."),
    out: str = typer.Argument(..., help="Where the diffusers I2VGenXLPipeline directory is written."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    preset: Optional[str] = PresetOpt,
    weights: str = typer.Option("ema", "--weights", help="ema (default) or unet (the raw trained weights)."),
) -> None:
    """Export a training checkpoint's EMA UNet with the frozen components as an I2VGenXLPipeline."""
    from vidcorpus.train.export import export_pipeline  # inside: keeps --help fast (diffusers)

    cfg = effective_config(config, set_, **{"models.preset": preset})
    _export(lambda: export_pipeline(resolve_models(cfg.models).i2vgen, checkpoint, out, weights=weights),
            f"exported {checkpoint} ({weights} weights) -> {out}")


def export_refiner_cmd(
    checkpoint: str = typer.Argument(..., help="A refiner checkpoint directory or run directory (its newest checkpoint)."),
    out: str = typer.Argument(..., help="Where the diffusers VideoToVideoSDPipeline directory is written."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    preset: Optional[str] = PresetOpt,
    weights: str = typer.Option("ema", "--weights", help="ema (default) or unet (the raw trained weights)."),
) -> None:
    """Export a refiner checkpoint's EMA UNet with the frozen components as a VideoToVideoSDPipeline."""
    from vidcorpus.train.refiner import export_refiner  # inside: keeps --help fast (diffusers)

    cfg = effective_config(config, set_, **{"models.preset": preset})
    _export(lambda: export_refiner(resolve_refiner(cfg.models).refiner, checkpoint, out, weights=weights),
            f"exported refiner {checkpoint} ({weights} weights) -> {out}")


def _export(write, done: str) -> None:
    """Run an export; a missing model or checkpoint is one line, success says where it went."""
    try:
        write()
    except (ModelNotAvailable, FileNotFoundError) as e:
        fail(str(e))
    console.print(done)
