"""`vidcorpus generate`: image + prompt -> video through the base stage and the refiner
(``vidcorpus/jobs/generate.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vidcorpus.cli.options import ConfigOpt, PresetOpt, ProgressOpt, SetOpt, effective_config
from vidcorpus.cli.output import console
from vidcorpus.cli.user_errors import fail
from vidcorpus.errors import ModelNotAvailable


def generate(
    image: str = typer.Option(..., "--image", help="The first frame: an image path or URL."),
    prompt: str = typer.Option(..., "--prompt", help="Text for the base stage."),
    base: str = typer.Option(..., "--base", help="Base stage: an exported I2VGenXLPipeline directory, or a checkpoint/run directory."),
    refiner: str = typer.Option(..., "--refiner", help="Refiner: an exported VideoToVideoSDPipeline directory, or a checkpoint/run directory."),
    output: str = typer.Option(..., "--output", "-o", help="The mp4 to write (local path or URL)."),
    short_prompt: Optional[str] = typer.Option(None, "--short-prompt", help="Brief text for the refiner (default: --prompt)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed (same inputs and seed, same video)."),
    height: Optional[int] = typer.Option(None, "--height", help="Output height (default 720)."),
    width: Optional[int] = typer.Option(None, "--width", help="Output width (default 1280)."),
    frames: Optional[int] = typer.Option(None, "--frames", help="Number of frames (default 16)."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    preset: Optional[str] = PresetOpt,
    progress: bool = ProgressOpt,
) -> None:
    """Image + prompt -> video: the base stage at low resolution, upsampled, refined to 1280x720 with brief text."""
    from vidcorpus.jobs.generate import generate_video  # inside: keeps --help fast (torch, diffusers)

    cfg = effective_config(config, set_, **{"models.preset": preset, "generate.seed": seed, "generate.height": height,
                                   "generate.width": width, "generate.num_frames": frames})
    try:
        result = generate_video(cfg, image, prompt, short_prompt, base, refiner, output, progress=progress)
    except (ModelNotAvailable, FileNotFoundError, ValueError) as e:
        fail(str(e))
    f, h, w = result.frames.shape[:3]
    timing = ", ".join(f"{k} {v:.1f} s" + (f" (peak {result.peak_gib[k]:.1f} GiB)" if k in result.peak_gib else "")
                       for k, v in result.seconds.items())
    console.print(f"wrote {output}: {f} frames at {w}x{h} (refined from t={result.t_start}); {timing}")
