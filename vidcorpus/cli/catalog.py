"""`vidcorpus catalog ...`: inspect, verify and export the DuckDB catalog (funnel, tables, failures, snapshots)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from vidcorpus.catalog.sql_names import ident, name_literal
from vidcorpus.cli.options import CatalogOpt, ConfigOpt, WorkdirOpt, effective_config, open_catalog, require_catalog
from vidcorpus.cli.output import console, print_arrow_table, print_funnel
from vidcorpus.cli.status import print_gaps
from vidcorpus.cli.user_errors import fail

catalog_app = typer.Typer(help="Inspect, verify and export the DuckDB catalog (funnel, tables, failures, snapshots).",
                          no_args_is_help=True, rich_markup_mode=None)


@catalog_app.command("funnel")
def catalog_funnel(catalog: Optional[str] = CatalogOpt, config: Optional[Path] = ConfigOpt,
                   workdir: Optional[str] = WorkdirOpt,
                   run_id: Optional[str] = typer.Option(None, "--run", help="Only the clips this run wrote."),
                   by_run: bool = typer.Option(False, "--by-run", help="One funnel per run, then the total.")) -> None:
    """Counts and hours per stage: sources, failed, shots, scored, kept, captioned, sharded, trained on."""
    cfg = effective_config(config, None, workdir=workdir, catalog=catalog)
    with open_catalog(cfg.catalog_path) as cat:
        if by_run:
            for r in cat.query_dicts("SELECT DISTINCT run_id FROM funnel_by_run ORDER BY run_id"):
                print_funnel(cat.funnel(r["run_id"]), title=f"funnel of run {r['run_id']}")
        if run_id:
            if not cat.query_dicts("SELECT 1 AS x FROM runs WHERE run_id = ?", [run_id]):
                fail(f"no run {run_id!r} in {cfg.catalog_path} (`vidcorpus sql \"SELECT run_id, kind FROM runs\"`)")
            print_funnel(cat.funnel(run_id), title=f"funnel of run {run_id}")
        else:
            print_funnel(cat.funnel(), title="funnel (all runs)")


@catalog_app.command("failures")
def catalog_failures(catalog: Optional[str] = CatalogOpt, config: Optional[Path] = ConfigOpt,
                     workdir: Optional[str] = WorkdirOpt) -> None:
    """Failures by stage and error class, with an example message each."""
    cfg = effective_config(config, None, workdir=workdir, catalog=catalog)
    with open_catalog(cfg.catalog_path) as cat:
        print_arrow_table(cat.query("SELECT * FROM failures_by_class"), title="failures by class")


@catalog_app.command("info")
def catalog_info(catalog: Optional[str] = CatalogOpt, config: Optional[Path] = ConfigOpt,
                 workdir: Optional[str] = WorkdirOpt) -> None:
    """Schema version and row count of every table."""
    cfg = effective_config(config, None, workdir=workdir, catalog=catalog)
    with open_catalog(cfg.catalog_path) as cat:
        if cat.manifest is not None:
            names = sorted(cat.manifest["tables"])
            console.print(f"snapshot {cat.manifest['snapshot_id']} of {cat.manifest['source']}, "
                          f"made {cat.manifest['created_at']}")
        else:
            names = [r[0] for r in cat.con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' ORDER BY 1").fetchall()]
        table = cat.query(" UNION ALL ".join(f"SELECT {name_literal(n)} AS table_name, count(*) AS rows FROM {ident(n)}"
                                             for n in names))
        console.print(f"catalog {cfg.catalog_path}, schema version {cat.schema_version}")
        print_arrow_table(table)
        if "events" in names and (events := cat.events(limit=20)):  # warnings and fast-path switch-offs in stages
            import pyarrow as pa  # inside: keeps --help fast

            shown = [{k: e[k] for k in ("stage", "kind", "count", "runs", "message")} for e in events]
            print_arrow_table(pa.Table.from_pylist(shown), title="warnings raised in stages (all runs, most frequent first)")


@catalog_app.command("export")
def catalog_export(
    url: str = typer.Argument(..., help="Where the snapshot goes: a folder or an s3:// prefix (AWS_* variables "
                                        "such as AWS_ENDPOINT_URL configure S3)."),
    catalog: Optional[str] = CatalogOpt,
    config: Optional[Path] = ConfigOpt,
    workdir: Optional[str] = WorkdirOpt,
) -> None:
    """Publish a Parquet snapshot of every table with a manifest.json (row counts, sha256, schema version).

    Query it from anywhere with `vidcorpus sql --catalog URL "..."`.
    """
    cfg = effective_config(config, None, workdir=workdir, catalog=catalog)
    with open_catalog(cfg.catalog_path) as cat:
        manifest = cat.export(url)
    t = Table(title=f"snapshot {manifest['snapshot_id']} at {url} (schema version {manifest['schema_version']})")
    for col in ("table", "rows", "bytes", "sha256"):
        t.add_column(col, justify="right" if col in ("rows", "bytes") else "left")
    for name, e in sorted(manifest["tables"].items()):
        t.add_row(name, str(e["rows"]), str(e["bytes"]), e["sha256"][:16])
    console.print(t)


@catalog_app.command("verify")
def catalog_verify(
    catalog: Optional[str] = CatalogOpt,
    config: Optional[Path] = ConfigOpt,
    workdir: Optional[str] = WorkdirOpt,
    shards: Optional[List[str]] = typer.Option(None, "--shards", help="Also look for orphan .tar files here "
                                                                        "(default: {workdir}/shards and every folder "
                                                                        "holding a recorded shard)."),
    checksums: bool = typer.Option(True, "--checksums/--no-checksums", help="Hash every shard file (reads them all)."),
    deep: bool = typer.Option(False, "--deep", help="Also recompute clips_wide from the long tables and compare."),
    rebuild_wide: bool = typer.Option(False, "--rebuild-wide", help="First recompute clips_wide (repairs wide_* problems)."),
) -> None:
    """Check the catalog against itself and the shard files; exit 1 with a report when anything is off.

    Every shard member has a clip row and a shard row, shard counts match their members, every
    shard file exists with its recorded size and sha256, no .tar in a shard folder is unrecorded,
    no score/caption/decision row is orphaned, clips_wide holds exactly the catalog's clips, and no
    shard or release holds a clip without its caption. Every frame of a video source is in a clip or
    a dropped segment with a reason (frames_uncovered). Gaps under the active recipe (clips not yet
    captioned or sharded, sharded clips it drops) are listed too, without failing: `vidcorpus sync`.
    """
    cfg = effective_config(config, None, workdir=workdir, catalog=catalog)
    if rebuild_wide:
        with open_catalog(require_catalog(cfg), read_only=False) as cat:
            with cat.transaction():
                n = cat.rebuild_wide()
        console.print(f"clips_wide rebuilt: {n} rows")
    with open_catalog(cfg.catalog_path) as cat:
        recorded = {u.rsplit("/", 2)[0] for (u,) in cat.con.execute("SELECT url FROM shards").fetchall() if u}
        roots = list(shards or []) or sorted(recorded | {cfg.url("shards")})
        problems = cat.verify(shard_roots=roots, checksums=checksums, deep=deep)
        print_gaps(cat)  # work `vidcorpus sync` completes and clips readers skip: listed, not failures
        counts = cat.query_dicts("SELECT (SELECT count(*) FROM clips) AS clips, (SELECT count(*) FROM shards) AS shards, "
                                 "(SELECT count(*) FROM shard_members) AS members")[0]
    summary = f"{counts['clips']} clips, {counts['shards']} shards, {counts['members']} shard members checked"
    if not problems:
        console.print(f"[green]catalog consistent[/green]: {summary}")
        return
    t = Table(title=f"{len(problems)} problems in {cfg.catalog_path}")
    for col in ("check", "item", "detail"):
        t.add_column(col, overflow="fold")
    for p in problems[:500]:
        t.add_row(p["check"], str(p["item"]), p["detail"])
    console.print(t)
    by = {}
    for p in problems:
        by[p["check"]] = by.get(p["check"], 0) + 1
    console.print(f"[red]catalog inconsistent[/red] ({summary}): " + ", ".join(f"{k} {v}" for k, v in sorted(by.items())))
    raise typer.Exit(1)
