"""`vidcorpus generate`: image + prompt -> video through both stages (the cascade), written as an mp4.

The refiner is trained by `vidcorpus train-refiner` (``jobs/train.py`` with ``stage="refiner"``)."""

from __future__ import annotations

from pathlib import Path

from vidcorpus.config import Config
from vidcorpus.presets import resolve_models
from vidcorpus.storage import is_url, local_path


def generate_video(cfg: Config, image: str, prompt: str, short_prompt: str | None, base: str, refiner: str,
                   output: str, progress: bool = True, console=None):
    """Run the cascade and write the mp4; returns the ``CascadeResult``. Progress bars (per stage and
    step) go to ``console`` (default stderr) when it is a terminal and ``progress`` is on."""
    from vidcorpus.train.cascade import generate  # inside: torch and diffusers load only when a video is made
    from vidcorpus.train.export import write_mp4

    needs_base = not _is_export(base)
    needs_refiner = not _is_export(refiner)
    models = resolve_models(cfg.models, build=False)  # only the components a checkpoint needs are built
    if cfg.models.preset == "tiny" and (needs_base or needs_refiner):
        from vidcorpus.train.models import build_tiny_i2vgen  # inside: only the tiny preset builds models here
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
    return not is_url(path) and (Path(local_path(path)) / "model_index.json").exists()
