"""`vidcorpus demo`: a synthetic corpus through every stage with tiny offline models (``vidcorpus/jobs/demo.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vidcorpus.cli.options import ProgressOpt, RayAddressOpt
from vidcorpus.cli.output import console


def demo(
    directory: Path = typer.Argument(Path("vidcorpus-demo"), help="Where everything is written."),
    steps: int = typer.Option(20, "--steps", help="Training steps at the end."),
    ray_address: Optional[str] = RayAddressOpt,
    progress: bool = ProgressOpt,
) -> None:
    """Make a small synthetic corpus and run every stage on it with tiny offline models, then train."""
    from vidcorpus.jobs.demo import run_demo  # inside: keeps --help fast (ray, torch, the jobs)

    run_demo(directory, steps=steps, ray_address=ray_address, progress=progress, console=console)
