"""`vidcorpus generate`: image + prompt -> video through both stages (the cascade), written as an mp4.

The refiner is trained by `vidcorpus train-refiner` (``jobs/train.py`` with ``stage="refiner"``)."""

from __future__ import annotations

from pathlib import Path

from vidcorpus.config import Config
from vidcorpus.jobs.models import resolve_models, resolve_refiner
from vidcorpus.storage import is_url, local_path


def generate_video(cfg: Config, image: str, prompt: str, short_prompt: str | None, base: str, refiner: str,
                   output: str, progress: bool = True, console=None):
    """Run the cascade and write the mp4; returns the ``CascadeResult``. Progress bars (per stage and
    step) go to ``console`` (default stderr) when it is a terminal and ``progress`` is on."""
    from vidcorpus.train.cascade import generate  # inside: torch and diffusers load only when a video is made
    from vidcorpus.train.export import write_mp4

    needs_base = not _is_export(base)
    needs_refiner = not _is_export(refiner)
    # only the components a checkpoint needs are built (tiny preset): the base's, and the refiner's
    components = {"i2vgen"} if needs_base or needs_refiner else set()
    models = (resolve_refiner(cfg.models, only=components) if needs_refiner
              else resolve_models(cfg.models, only=components))
    result = generate(image, prompt, short_prompt, base, refiner, cfg.generate,
                      i2vgen_dir=models.i2vgen if needs_base else None,
                      refiner_dir=models.refiner if needs_refiner else None,
                      refiner_t_max=cfg.refiner.t_max, progress=progress, console=console)
    write_mp4(result.frames, cfg.generate.fps, output)
    return result


def _is_export(path: str) -> bool:
    return not is_url(path) and (Path(local_path(path)) / "model_index.json").exists()
