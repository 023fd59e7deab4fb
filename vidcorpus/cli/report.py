"""`vidcorpus report`: the static HTML audit of a catalog (``vidcorpus/jobs/report/``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vidcorpus.cli.options import CatalogOpt, ConfigOpt, WorkdirOpt, effective_config
from vidcorpus.cli.output import console
from vidcorpus.cli.user_errors import fail


def report(
    output: Path = typer.Option(..., "--output", "-o", help="Folder for index.html, plots, thumbnails and clip pages."),
    catalog: Optional[str] = CatalogOpt,
    config: Optional[Path] = ConfigOpt,
    workdir: Optional[str] = WorkdirOpt,
    run_id: Optional[str] = typer.Option(None, "--run", help="Only rows written by this run id."),
    release: Optional[str] = typer.Option(None, "--release", help="Only the clips a release's recipe decided; kept = released."),
) -> None:
    """Write a static HTML audit (funnel, score histograms with thresholds, galleries, failures, captions)."""
    from vidcorpus.catalog.store import CatalogError  # inside: keeps --help fast (duckdb, matplotlib)
    from vidcorpus.jobs.report.build import build_report

    cfg = effective_config(config, None, workdir=workdir, catalog=catalog)
    try:
        result = build_report(cfg.catalog_path, output, run=run_id, recipe_path=cfg.filters.recipe, console=console,
                              release=release)
    except (CatalogError, ValueError) as e:
        fail(str(e))
    console.print(f"report: {result.index} ({len(result.plots)} plots, {result.clip_pages} clip pages, "
                  f"{result.seconds:.1f} s)")
