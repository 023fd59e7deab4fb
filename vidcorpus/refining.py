"""Driver side of the refiner stage and the cascade: select high-resolution shards, train the refiner
with the base stage's loop and launchers, record the run; generate a video with both stages."""

from __future__ import annotations

from typing import Callable

from vidcorpus.config import Config
from vidcorpus.training import TrainingSummary, run_training


def run_refiner_training(cfg: Config, output: str | None = None, progress: bool = True,
                         log: Callable[[str], None] = print, resume: str | None = None) -> TrainingSummary:
    """Train the refiner (``cfg.refiner``, initialised from ``models.refiner``) on the clips that
    ``refiner.release`` / ``refiner.select`` choose; the base stage's driver with ``stage="refiner"``."""
    return run_training(cfg, output=output, progress=progress, log=log, resume=resume, stage="refiner")


def generate_video(cfg: Config, image: str, prompt: str, short_prompt: str | None, base: str, refiner: str,
                   output: str, progress: bool = True, console=None):
    """Run the cascade and write the mp4; returns the ``CascadeResult``. Progress bars (per stage and
    step) go to ``console`` (default stderr) when it is a terminal and ``progress`` is on."""
    from vidcorpus.train.cascade import generate
    from vidcorpus.train.export import write_mp4

    from vidcorpus.presets import resolve_models

    needs_base = not _is_export(base)
    needs_refiner = not _is_export(refiner)
    models = resolve_models(cfg.models, build=False)  # only the components a checkpoint needs are built
    if cfg.models.preset == "tiny" and (needs_base or needs_refiner):
        from vidcorpus.train.models import build_tiny_i2vgen
        from vidcorpus.train.refiner import build_tiny_refiner

        if not _is_export(models.i2vgen):
            build_tiny_i2vgen(models.i2vgen)
        if needs_refiner and not _is_export(models.refiner):
            build_tiny_refiner(models.refiner, models.i2vgen)
    result = generate(image, prompt, short_prompt, base, refiner, cfg.generate,
                      i2vgen_dir=models.i2vgen if needs_base else None,
                      refiner_dir=models.refiner if needs_refiner else None,
                      refiner_t_max=cfg.refiner.t_max, progress=progress, console=console)
    write_mp4(result.frames, cfg.generate.fps, output)
    return result


def _is_export(path: str) -> bool:
    from pathlib import Path

    return (Path(path.removeprefix("file://")) / "model_index.json").exists()
