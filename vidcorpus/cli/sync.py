"""`vidcorpus sync`: complete the active recipe's pending work (``vidcorpus/jobs/curate/sync.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vidcorpus.cli.options import (CatalogOpt, ConfigOpt, PresetOpt, ProgressOpt, SetOpt, WorkdirOpt,
                                   effective_config)
from vidcorpus.cli.output import console
from vidcorpus.cli.user_errors import EXIT_MODEL, fail
from vidcorpus.errors import ModelNotAvailable


def sync(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    workdir: Optional[str] = WorkdirOpt,
    catalog: Optional[str] = CatalogOpt,
    preset: Optional[str] = PresetOpt,
    allow_uncaptioned: bool = typer.Option(False, "--allow-uncaptioned", help="Also shard kept clips whose "
                                           "captioning failed (empty txt)."),
    progress: bool = ProgressOpt,
) -> None:
    """Complete the active recipe's pending work: decide, caption newly kept clips, shard them."""
    from vidcorpus.catalog.store import CatalogError  # inside: keeps --help fast (duckdb, the jobs)
    from vidcorpus.jobs.curate.sync import sync as sync_pending
    from vidcorpus.stage_stats import print_table

    cfg = effective_config(config, set_, workdir=workdir, catalog=catalog, **{"models.preset": preset})
    try:
        s = sync_pending(cfg, allow_uncaptioned=allow_uncaptioned, progress=progress)
    except ModelNotAvailable as e:  # exit code 3, as for `vidcorpus run` (README, "Exit codes")
        fail(str(e), EXIT_MODEL, prefix="model not available:")
    except (CatalogError, FileNotFoundError) as e:
        fail(str(e))
    if s.captioned or s.caption_failures:  # a sync that captioned: where its time went
        print_table(s.stages, console, title=f"where the time went in sync {s.run_id}")
    console.print(f"sync {s.run_id} under {s.recipe}: {s.captioned} clips captioned, {len(s.shards)} shards "
                  f"written, {s.pending_after} still pending, {s.seconds:.1f} s", markup=False)
    if s.pending_after:
        raise typer.Exit(1)
