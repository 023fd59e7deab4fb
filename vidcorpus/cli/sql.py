"""`vidcorpus sql`: read-only SQL over a catalog or a published snapshot."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vidcorpus.cli.options import CatalogOpt, ConfigOpt, WorkdirOpt, effective_config
from vidcorpus.cli.output import emit
from vidcorpus.cli.user_errors import fail


def sql(
    query: str = typer.Argument(..., help="SQL to run, e.g. \"SELECT * FROM funnel\". Tables: runs, sources, clips, "
                                          "scores, captions, decisions, recipes, embeddings, shards, shard_members, "
                                          "releases, release_members, latent_shards, failures, train_runs, "
                                          "train_samples, clips_wide; views: funnel, funnel_by_run, failures_by_class."),
    catalog: Optional[str] = CatalogOpt,
    config: Optional[Path] = ConfigOpt,
    workdir: Optional[str] = WorkdirOpt,
    fmt: str = typer.Option("table", "--format", "-f", help="table | csv | json | parquet"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to a file instead of stdout (parquet needs it)."),
) -> None:
    """Query the catalog with SQL (read-only, no file, extension or network access; a running job's
    commits are waited out).

    --catalog also takes a snapshot published by `vidcorpus catalog export` (folder or s3:// URL).
    Tables: runs, sources, clips, scores, captions, decisions, shards, shard_members, releases,
    failures, train_runs, train_samples, clips_wide (one row per clip, a column per scorer); views:
    funnel, funnel_by_run, failures_by_class. Example audits: docs/queries.md.
    """
    import duckdb  # inside: keeps --help fast

    # inside: keeps --help fast (duckdb)
    from vidcorpus.catalog.safe_sql import RefusedSQL, first_line
    from vidcorpus.catalog.user_sql import run_user_sql
    from vidcorpus.catalog.store import CatalogError

    cfg = effective_config(config, None, workdir=workdir, catalog=catalog)
    try:  # a file, a snapshot folder or an s3:// snapshot; no file, extension or network access
        table = run_user_sql(cfg.catalog_path, query)
    except (CatalogError, RefusedSQL) as e:
        fail(str(e))
    except duckdb.Error as e:
        fail(first_line(e), prefix="SQL error:")
    emit(table, fmt, output)
