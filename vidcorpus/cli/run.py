"""`vidcorpus run`: the curation pipeline over new inputs (``vidcorpus/jobs/curate/pipeline.py``).

`vidcorpus ingest` (``ingest.py``) is the same job; ``run_job`` serves both.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vidcorpus.cli.options import (CatalogOpt, ConfigOpt, PresetOpt, ProgressOpt, RayAddressOpt, SetOpt,
                                   WorkdirOpt, effective_config)
from vidcorpus.cli.output import console, print_funnel
from vidcorpus.cli.user_errors import EXIT_MODEL, EXIT_STORAGE, fail
from vidcorpus.config import Config
from vidcorpus.errors import ERROR_CLASSES, ModelNotAvailable, StorageFullError

# The inputs and retry options of `run` and `ingest` (one job, two names).
InputsArg = typer.Argument(None, help="URL lists (txt/csv/jsonl/parquet with a url column; optional text/caption, "
                                      "id, sha256), folders, s3:// prefixes or media URLs.")
RetryFailedOpt = typer.Option(False, "--retry-failed", help="Re-run only the sources that failed before.")
ErrorClassOpt = typer.Option(None, "--error-class",
                             help=f"With --retry-failed: only this class ({', '.join(ERROR_CLASSES)}).")


def run(
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
    """Run the curation pipeline: download, probe, split shots, score, decide, caption, shard, catalog.

    Sources already done in the catalog are skipped, so rerunning a job never duplicates rows.
    """
    run_job(inputs, config, set_, workdir, catalog, preset, ray_address, retry_failed, error_class, progress)


def run_job(inputs, config, set_, workdir, catalog, preset, ray_address, retry_failed: bool,
            error_class: Optional[str], progress: bool) -> None:
    """The one job behind `run` and `ingest`: config, inputs, run_pipeline, summary."""
    from vidcorpus.jobs.curate.pipeline import run_pipeline  # inside: keeps --help fast (ray, the stages)

    if error_class and not retry_failed:
        fail("--error-class needs --retry-failed")
    if error_class and error_class not in ERROR_CLASSES and not error_class.startswith("internal:"):
        fail(f"unknown error class {error_class!r} (one of {', '.join(ERROR_CLASSES)})")
    cfg = effective_config(config, set_, workdir=workdir, catalog=catalog,
                           **{"models.preset": preset, "ray.address": ray_address})
    if inputs:
        cfg = cfg.model_copy(update={"inputs": list(inputs)})
    _check_inputs(cfg)
    try:
        summary = run_pipeline(cfg, retry_failed=retry_failed, error_class=error_class, progress=progress)
    except ModelNotAvailable as e:
        fail(str(e), EXIT_MODEL, prefix="model not available:")
    except StorageFullError as e:
        fail(str(e), EXIT_STORAGE, prefix="storage full:")
    _print_run_summary(summary)


def _check_inputs(cfg: Config) -> None:
    """Missing inputs and an unknown recipe fail here, before the catalog or a run row exists."""
    from vidcorpus.filters.recipes import load_recipe  # inside: keeps --help fast
    from vidcorpus.paths import missing_inputs

    if not cfg.inputs:
        fail("give URL lists, folders or media URLs, or set `inputs` in the config", prefix="no inputs:")
    for missing in missing_inputs(cfg.inputs):
        fail(f"input {missing} does not exist")
    if cfg.filters.recipe:  # an unknown recipe fails here, not as a failed run in a new catalog
        try:
            load_recipe(cfg.filters.recipe)
        except (FileNotFoundError, ValueError) as e:
            fail(str(e))


def _print_run_summary(summary) -> None:
    from vidcorpus.catalog.store import Catalog  # inside: keeps --help fast (duckdb)
    from vidcorpus.stage_stats import print_table

    with Catalog(summary.catalog, read_only=True) as cat:
        print_funnel(cat.funnel(), title=f"catalog funnel after run {summary.run_id}")
    print_table(summary.stages, console, title=f"where the time went in run {summary.run_id}")
    console.print(
        f"run {summary.run_id}: {summary.rows_committed} rows committed, {summary.failures} failed rows, "
        f"{len(summary.shards)} new shards, {summary.sources_skipped} sources skipped as done, {summary.seconds:.1f} s\n"
        f"catalog: {summary.catalog}\nshards:  {summary.shard_root}"
    )
