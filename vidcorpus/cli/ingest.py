"""`vidcorpus ingest`: the curation job of `vidcorpus run` (``run.py``), with the error classes listed."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vidcorpus.cli.options import (
    CatalogOpt,
    ConfigOpt,
    PresetOpt,
    ProgressOpt,
    RayAddressOpt,
    SetOpt,
    WorkdirOpt,
)
from vidcorpus.cli.run import run_job
from vidcorpus.errors import ERROR_CLASSES


def ingest(
    inputs: List[str] = typer.Argument(None, help="URL lists (txt/csv/jsonl/parquet with a url column; optional "
                                                  "text/caption, id, sha256), folders, s3:// prefixes or media URLs."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    workdir: Optional[str] = WorkdirOpt,
    catalog: Optional[str] = CatalogOpt,
    preset: Optional[str] = PresetOpt,
    ray_address: Optional[str] = RayAddressOpt,
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Re-queue only sources that failed before."),
    error_class: Optional[str] = typer.Option(
        None, "--error-class", help=f"With --retry-failed: only this class ({', '.join(ERROR_CLASSES)})."),
    progress: bool = ProgressOpt,
) -> None:
    """Ingest sources (download, probe, split, extract) and carry them through the same job as `run`.

    Completion is recorded per source: rerunning after a crash resumes, and
    `--retry-failed --error-class timeout` re-queues only the sources that failed with that class.
    """
    run_job(inputs, config, set_, workdir, catalog, preset, ray_address, retry_failed, error_class, progress)
