"""`vidcorpus ingest`: the curation job of `vidcorpus run` (``run.py``), under the name of its first steps."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from vidcorpus.cli.options import (CatalogOpt, ConfigOpt, PresetOpt, ProgressOpt, RayAddressOpt, SetOpt,
                                   WorkdirOpt)
from vidcorpus.cli.run import ErrorClassOpt, InputsArg, RetryFailedOpt, run_job


def ingest(
    inputs: List[str] = InputsArg,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    workdir: Optional[str] = WorkdirOpt,
    catalog: Optional[str] = CatalogOpt,
    preset: Optional[str] = PresetOpt,
    ray_address: Optional[str] = RayAddressOpt,
    retry_failed: bool = RetryFailedOpt,
    error_class: Optional[str] = ErrorClassOpt,
    progress: bool = ProgressOpt,
) -> None:
    """Ingest sources (download, probe, split, extract) and carry them through the same job as `run`.

    Completion is recorded per source: rerunning after a crash resumes, and
    `--retry-failed --error-class timeout` re-queues only the sources that failed with that class.
    """
    run_job(inputs, config, set_, workdir, catalog, preset, ray_address, retry_failed, error_class, progress)
