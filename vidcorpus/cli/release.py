"""`vidcorpus release ...`: freeze a recipe's kept clips into a named shard set, list, show and compare
releases (``vidcorpus/jobs/release.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from vidcorpus.cli.options import (CatalogOpt, ConfigOpt, ProgressOpt, SetOpt, WorkdirOpt, effective_config,
                                   require_catalog)
from vidcorpus.cli.output import console, emit, print_arrow_table
from vidcorpus.cli.user_errors import fail

release_app = typer.Typer(help="Freeze a recipe's kept clips into an immutable, named shard set; list and compare.",
                          no_args_is_help=True, rich_markup_mode=None)


@release_app.command("create")
def release_create(
    name: str = typer.Argument(..., help="Release name ([a-z0-9_.-]); becomes {workdir}/releases/NAME/."),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="Recipe name or id (name@version) whose kept clips form the release (default: the catalog's active recipe)."),
    caption_version: Optional[str] = typer.Option(None, "--caption-version", help="Caption version written as txt (default shards.caption_version)."),
    select: Optional[str] = typer.Option(None, "--select", help="Extra SQL predicate over clips_wide, e.g. \"duration_s >= 2\"."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    workdir: Optional[str] = WorkdirOpt,
    catalog: Optional[str] = CatalogOpt,
    progress: bool = ProgressOpt,
    allow_uncaptioned: bool = typer.Option(False, "--allow-uncaptioned", help="Release kept clips without their caption (empty txt)."),
) -> None:
    """Create release NAME: reuse or write shards, then publish its manifest and record it."""
    from vidcorpus.jobs.release import create_release  # inside: keeps --help fast (the jobs)
    from vidcorpus.shards.release_files import ReleaseError

    cfg = effective_config(config, set_, workdir=workdir, catalog=catalog)
    require_catalog(cfg)
    try:
        s = create_release(cfg, name, recipe, caption_version, select, progress=progress,
                           allow_uncaptioned=allow_uncaptioned)
    except ReleaseError as e:
        fail(str(e))
    console.print(f"release {s.name}: {s.n_clips} clips in {s.n_shards} shards ({s.reused_shards} reused, "
                  f"{s.new_shards} new), {s.bytes / 1e6:.1f} MB; manifest {s.manifest_url}")


@release_app.command("list")
def release_list(catalog: Optional[str] = CatalogOpt, config: Optional[Path] = ConfigOpt,
                 workdir: Optional[str] = WorkdirOpt) -> None:
    """Every release with its recipe, caption version, size and age (`release show NAME` for the rest)."""
    from vidcorpus.catalog.store import Catalog  # inside: keeps --help fast (duckdb)

    cfg = effective_config(config, None, workdir=workdir, catalog=catalog)
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        rows = cat.releases()
    # fits 80 columns: the manifest URL and checksums are in `release show`, not here
    console.print(f"{len(rows)} releases in {escape(cfg.catalog_path)}")
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    t.add_column("name", overflow="fold", ratio=3, min_width=16)
    t.add_column("recipe", overflow="fold", ratio=2)
    t.add_column("captions", overflow="fold", ratio=1)
    for col in ("clips", "shards", "MB"):
        t.add_column(col, justify="right", no_wrap=True)
    t.add_column("created", no_wrap=True)
    for r in rows:
        t.add_row(escape(r["name"]), escape(str(r["recipe"])), escape(str(r["caption_version"])), str(r["n_clips"]),
                  str(r["n_shards"]), f"{(r['bytes'] or 0) / 1e6:.1f}", r["created_at"].strftime("%Y-%m-%d"))
    console.print(t)


@release_app.command("show")
def release_show(name: str = typer.Argument(..., help="Release name or manifest URL."),
                 catalog: Optional[str] = CatalogOpt, config: Optional[Path] = ConfigOpt,
                 workdir: Optional[str] = WorkdirOpt) -> None:
    """A release's buckets and score summaries, from its manifest."""
    import pyarrow as pa  # inside: keeps --help fast

    from vidcorpus.jobs.release import release_manifest  # inside: keeps --help fast (the jobs, torch)
    from vidcorpus.shards.release_files import ReleaseError

    cfg = effective_config(config, None, workdir=workdir, catalog=catalog)
    try:
        m, _root = release_manifest(cfg, name)
    except ReleaseError as e:
        fail(str(e))
    console.print(f"release {m['name']} (created {m['created_at']}): recipe {m['recipe']}, captions "
                  f"{m['caption_version']}, {m['n_clips']} clips, {m['n_shards']} shards, {m['bytes'] / 1e6:.1f} MB")
    print_arrow_table(pa.Table.from_pylist([{"bucket": b, **v} for b, v in sorted(m["buckets"].items())]), title="buckets")
    scores = [{"score": k, "n": v["n"], "min": round(v["min"], 4), "mean": round(v["mean"], 4), "max": round(v["max"], 4)}
              for k, v in sorted(m["score_histograms"].items())]
    if scores:
        print_arrow_table(pa.Table.from_pylist(scores), title="scores")


@release_app.command("diff")
def release_diff(
    a: str = typer.Argument(..., help="The older release (name or manifest URL)."),
    b: str = typer.Argument(..., help="The newer release."),
    fmt: str = typer.Option("table", "--format", "-f", help="table (summary) | csv | json | parquet (one row per clip)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the per-clip rows to a file."),
    catalog: Optional[str] = CatalogOpt,
    config: Optional[Path] = ConfigOpt,
    workdir: Optional[str] = WorkdirOpt,
) -> None:
    """What B adds to and drops from A, and why (which recipe predicate, selection, or new clips)."""
    import pyarrow as pa  # inside: keeps --help fast

    from vidcorpus.jobs.release import diff_releases, release_reasons_table  # inside: keeps --help fast (the jobs)
    from vidcorpus.shards.release_files import ReleaseError

    cfg = effective_config(config, None, workdir=workdir, catalog=catalog)
    try:
        d = diff_releases(cfg, a, b)
    except ReleaseError as e:
        fail(str(e))
    if fmt == "table" and output is None:
        console.print(f"{d.a} -> {d.b}: +{len(d.added)} added, -{len(d.dropped)} dropped, {d.kept} in both "
                      f"(recipe {d.recipe_a} -> {d.recipe_b}, captions {d.caption_a} -> {d.caption_b})")
        summary = d.summary()
        if summary:
            print_arrow_table(pa.Table.from_pylist(summary), title="changes by reason")
        return
    emit(release_reasons_table(d), fmt if fmt != "table" else "csv", output)
