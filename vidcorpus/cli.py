"""The `vidcorpus` command line (typer + rich)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

# Never let a missing weight turn into a minute of hub retries: offline unless the user says otherwise
# (HF_HUB_OFFLINE=0 lets production presets download).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # per-file bars of model loading; stages have their own

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402

from vidcorpus.cli_errors import EXIT_MODEL, EXIT_STORAGE, UserErrorGroup, err, fail  # noqa: E402,F401 - err: cli_release
from vidcorpus.config import Config, ConfigError, dump_config, load_config  # noqa: E402
from vidcorpus.errors import ERROR_CLASSES  # noqa: E402

if __name__ == "__main__":  # pragma: no cover - `python -m vidcorpus.cli` (e.g. `torchrun -m vidcorpus.cli`)
    # Run the importable module, not this __main__ copy: the command modules import `vidcorpus.cli`,
    # which would otherwise be a second, half-initialised copy of this file.
    from vidcorpus.cli import main as _main

    _main()
    raise SystemExit(0)

app = typer.Typer(  # help and errors are shown as written: no rich markup eats "[...]" from them
    cls=UserErrorGroup,
    rich_markup_mode=None,
    help="vidcorpus: curate text-video and text-image corpora (ingest, shot split, score, caption, "
    "WebDataset shards, DuckDB catalog) and train I2VGen-XL-style video diffusion models on them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(rich_markup_mode=None, help="Inspect the effective configuration.", no_args_is_help=True)
catalog_app = typer.Typer(help="Inspect, verify and export the DuckDB catalog (funnel, tables, failures, snapshots).",
                          no_args_is_help=True, rich_markup_mode=None)
shards_app = typer.Typer(rich_markup_mode=None, help="Write and list WebDataset shards.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(catalog_app, name="catalog")
app.add_typer(shards_app, name="shards")

console = Console()

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (sections as in `vidcorpus config show`).")
SetOpt = typer.Option(None, "--set", "-s", help="Override a config value, e.g. --set filters.recipe=pretrain_v1 (repeatable).")
CatalogOpt = typer.Option(None, "--catalog", help="DuckDB catalog file (default: {workdir}/catalog.duckdb); read-only "
                                                  "commands also take a snapshot folder or s3:// URL (`catalog export`).")
WorkdirOpt = typer.Option(None, "--workdir", "-w", help="Root for staging and shards: a local path or s3:// URL "
                                                        "(default $VIDCORPUS_WORKDIR, else ./vidcorpus-work).")
RayAddressOpt = typer.Option(None, "--ray-address", help="Existing Ray cluster; default starts a local Ray.")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")
PresetOpt = typer.Option(None, "--preset", help="Model preset: 'tiny' (offline random test models) or 'production'.")


def _config(config: Optional[Path], overrides: Optional[List[str]], **fields) -> Config:
    """The effective config, with every local path in it made absolute once, here (vidcorpus/paths.py)."""
    from vidcorpus.paths import resolve_config_paths

    if config is not None and not Path(config).is_file():
        fail(f"no config file at {config}" + (" (a folder)" if Path(config).is_dir() else ""), prefix="config error:")
    try:
        return resolve_config_paths(load_config(config, overrides or [], **fields))
    except ConfigError as e:
        fail(str(e), prefix="config error:")


def _print_table(table, title: str | None = None, max_rows: int = 200) -> None:
    import pyarrow.types as pat

    t = Table(title=title, show_lines=False)
    for field in table.schema:  # numbers right-aligned, so digits line up
        numeric = pat.is_integer(field.type) or pat.is_floating(field.type) or pat.is_decimal(field.type)
        t.add_column(escape(field.name), overflow="fold", justify="right" if numeric else "left")
    for row in table.slice(0, max_rows).to_pylist():
        t.add_row(*[escape(_fmt(v)) for v in row.values()])
    console.print(t)
    if table.num_rows > max_rows:
        console.print(f"... {table.num_rows - max_rows} more rows (use --format csv/json for all)")


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def print_funnel(rows: list[dict], title: str = "funnel") -> None:
    t = Table(title=title)
    t.add_column("stage")
    t.add_column("items", justify="right")
    t.add_column("hours", justify="right")
    for r in rows:
        t.add_row(r["stage"], str(r["n"]), "" if r["hours"] is None else f"{r['hours']:.4f}")
    console.print(t)


@config_app.command("show")
def config_show(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    preset: Optional[str] = PresetOpt,
    resolved: bool = typer.Option(False, "--resolved", help="Also fill model paths from the preset (builds tiny models)."),
) -> None:
    """Print the effective configuration (defaults < --config file < --set overrides) as YAML."""
    cfg = _config(config, set_, **{"models.preset": preset})
    if resolved:
        from vidcorpus.presets import resolve_models

        cfg = cfg.model_copy(update={"models": resolve_models(cfg.models)})
    console.print(dump_config(cfg), end="", highlight=False, markup=False, soft_wrap=True)  # valid YAML at any width


@app.command()
def run(
    inputs: List[str] = typer.Argument(None, help="URL lists (txt/csv/jsonl/parquet), folders, s3:// prefixes or media URLs."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    workdir: Optional[str] = WorkdirOpt,
    catalog: Optional[str] = CatalogOpt,
    preset: Optional[str] = PresetOpt,
    ray_address: Optional[str] = RayAddressOpt,
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Only re-run sources that failed before."),
    error_class: Optional[str] = typer.Option(None, "--error-class", help="With --retry-failed: only this error class "
                                                                           "(`vidcorpus ingest --help` lists them)."),
    progress: bool = ProgressOpt,
) -> None:
    """Run the curation pipeline: download, probe, split shots, score, decide, caption, shard, catalog.

    Sources already done in the catalog are skipped, so rerunning a job never duplicates rows.
    """
    _run_job(inputs, config, set_, workdir, catalog, preset, ray_address, retry_failed, error_class, progress)


@app.command()
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
    _run_job(inputs, config, set_, workdir, catalog, preset, ray_address, retry_failed, error_class, progress)


def _run_job(inputs, config, set_, workdir, catalog, preset, ray_address, retry_failed: bool,
             error_class: Optional[str], progress: bool) -> None:
    """The one job behind `run` and `ingest`: config, inputs, run_pipeline, summary."""
    from vidcorpus.errors import ModelNotAvailable, StorageFullError
    from vidcorpus.jobs.curate.pipeline import run_pipeline

    if error_class and not retry_failed:
        fail("--error-class needs --retry-failed")
    if error_class and error_class not in ERROR_CLASSES and not error_class.startswith("internal:"):
        fail(f"unknown error class {error_class!r} (one of {', '.join(ERROR_CLASSES)})")
    cfg = _config(config, set_, workdir=workdir, catalog=catalog, **{"models.preset": preset, "ray.address": ray_address})
    if inputs:
        cfg = cfg.model_copy(update={"inputs": list(inputs)})
    if not cfg.inputs:
        fail("give URL lists, folders or media URLs, or set `inputs` in the config", prefix="no inputs:")
    from vidcorpus.paths import missing_inputs

    for missing in missing_inputs(cfg.inputs):  # before the catalog or a run row exists
        fail(f"input {missing} does not exist")
    if cfg.filters.recipe:  # an unknown recipe fails here, not as a failed run in a new catalog
        from vidcorpus.filters.recipes import load_recipe

        try:
            load_recipe(cfg.filters.recipe)
        except (FileNotFoundError, ValueError) as e:
            fail(str(e))
    try:
        summary = run_pipeline(cfg, retry_failed=retry_failed, error_class=error_class, progress=progress,
                               log=console.print)
    except ModelNotAvailable as e:
        fail(str(e), EXIT_MODEL, prefix="model not available:")
    except StorageFullError as e:
        fail(str(e), EXIT_STORAGE, prefix="storage full:")
    _print_run_summary(summary)


def _print_run_summary(summary) -> None:
    from vidcorpus.catalog.store import Catalog

    from vidcorpus.stage_stats import print_table

    with Catalog(summary.catalog, read_only=True) as cat:
        print_funnel(cat.funnel(), title=f"catalog funnel after run {summary.run_id}")
    print_table(summary.stages, console, title=f"where the time went in run {summary.run_id}")
    console.print(
        f"run {summary.run_id}: {summary.rows_committed} rows committed, {summary.failures} failed rows, "
        f"{len(summary.shards)} new shards, {summary.sources_skipped} sources skipped as done, {summary.seconds:.1f} s\n"
        f"catalog: {summary.catalog}\nshards:  {summary.shard_root}"
    )


@app.command()
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
    import duckdb

    from vidcorpus.catalog.safe_sql import RefusedSQL, first_line, run_user_sql
    from vidcorpus.catalog.store import CatalogError

    cfg = _config(config, None, workdir=workdir, catalog=catalog)
    try:  # a file, a snapshot folder or an s3:// snapshot; no file, extension or network access
        table = run_user_sql(cfg.catalog_path, query)
    except (CatalogError, RefusedSQL) as e:
        fail(str(e))
    except duckdb.Error as e:
        fail(first_line(e), prefix="SQL error:")
    _emit(table, fmt, output)


def _emit(table, fmt: str, output: Optional[Path]) -> None:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    if fmt == "table":
        _print_table(table)
    elif fmt == "csv":
        if output:
            pcsv.write_csv(table, output)
        else:
            import io

            buf = io.BytesIO()
            pcsv.write_csv(table, buf)
            sys.stdout.write(buf.getvalue().decode())
    elif fmt == "json":
        text = json.dumps(table.to_pylist(), default=str, indent=1)
        (output.write_text(text) if output else sys.stdout.write(text + "\n"))
    elif fmt == "parquet":
        if not output:
            fail("--format parquet needs --output FILE")
        pq.write_table(table, output)
    else:
        fail(f"unknown format {fmt!r} (table, csv, json, parquet)")


@catalog_app.command("funnel")
def catalog_funnel(catalog: Optional[str] = CatalogOpt, config: Optional[Path] = ConfigOpt,
                   workdir: Optional[str] = WorkdirOpt,
                   run_id: Optional[str] = typer.Option(None, "--run", help="Only the clips this run wrote."),
                   by_run: bool = typer.Option(False, "--by-run", help="One funnel per run, then the total.")) -> None:
    """Counts and hours per stage: sources, failed, shots, scored, kept, captioned, sharded, trained on."""
    cfg = _config(config, None, workdir=workdir, catalog=catalog)
    with _open_catalog(cfg.catalog_path) as cat:
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
    cfg = _config(config, None, workdir=workdir, catalog=catalog)
    with _open_catalog(cfg.catalog_path) as cat:
        _print_table(cat.query("SELECT * FROM failures_by_class"), title="failures by class")


@catalog_app.command("info")
def catalog_info(catalog: Optional[str] = CatalogOpt, config: Optional[Path] = ConfigOpt,
                 workdir: Optional[str] = WorkdirOpt) -> None:
    """Schema version and row count of every table."""
    cfg = _config(config, None, workdir=workdir, catalog=catalog)
    with _open_catalog(cfg.catalog_path) as cat:
        if cat.manifest is not None:
            names = sorted(cat.manifest["tables"])
            console.print(f"snapshot {cat.manifest['snapshot_id']} of {cat.manifest['source']}, "
                          f"made {cat.manifest['created_at']}")
        else:
            names = [r[0] for r in cat.con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' ORDER BY 1").fetchall()]
        table = cat.query(" UNION ALL ".join(f"SELECT '{n}' AS table_name, count(*) AS rows FROM \"{n}\"" for n in names))
        console.print(f"catalog {cfg.catalog_path}, schema version {cat.schema_version}")
        _print_table(table)
        if "events" in names and (events := cat.events(limit=20)):  # warnings and fast-path switch-offs in stages
            import pyarrow as pa

            shown = [{k: e[k] for k in ("stage", "kind", "count", "runs", "message")} for e in events]
            _print_table(pa.Table.from_pylist(shown), title="warnings raised in stages (all runs, most frequent first)")


def _require_catalog(cfg: Config) -> str:
    """The catalog path of a command that changes an existing catalog: never creates one."""
    from vidcorpus.paths import is_url
    from vidcorpus.workdir import missing_catalog_hint

    path = cfg.catalog_path
    if not is_url(path) and not os.path.isdir(path) and not os.path.exists(path.removeprefix("file://")):
        fail(f"no catalog at {path} ({missing_catalog_hint(path)})")
    return path


def _open_catalog(path: str, read_only: bool = True, **kw):
    """Open a catalog (file or snapshot URL) or exit 2 with the reason."""
    from vidcorpus.catalog.store import Catalog, CatalogError

    try:
        return Catalog(path, read_only=read_only, **kw)
    except CatalogError as e:
        fail(str(e))


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
    cfg = _config(config, None, workdir=workdir, catalog=catalog)
    with _open_catalog(cfg.catalog_path) as cat:
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
    cfg = _config(config, None, workdir=workdir, catalog=catalog)
    if rebuild_wide:
        with _open_catalog(_require_catalog(cfg), read_only=False) as cat:
            with cat.transaction():
                n = cat.rebuild_wide()
        console.print(f"clips_wide rebuilt: {n} rows")
    with _open_catalog(cfg.catalog_path) as cat:
        recorded = {u.rsplit("/", 2)[0] for (u,) in cat.con.execute("SELECT url FROM shards").fetchall() if u}
        roots = list(shards or []) or sorted(recorded | {cfg.url("shards")})
        problems = cat.verify(shard_roots=roots, checksums=checksums, deep=deep)
        from vidcorpus.cli_state import print_gaps

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


@shards_app.command("write")
def shards_write(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    workdir: Optional[str] = WorkdirOpt,
    catalog: Optional[str] = CatalogOpt,
    allow_uncaptioned: bool = typer.Option(False, "--allow-uncaptioned", help="Also pack kept clips without a "
                                           "caption (empty txt; `catalog verify` reports them)."),
) -> None:
    """Pack every clip the active recipe keeps that no shard holds yet into WebDataset shards, then
    record them. Clips without their caption are left out (`vidcorpus sync` captions them)."""
    from vidcorpus.catalog.store import Catalog
    from vidcorpus.ids import new_run_id
    from vidcorpus.jobs.curate.pipeline import write_pending_shards

    from vidcorpus.catalog.corpus_state import active_recipe_id, kept_without_file

    cfg = _config(config, set_, workdir=workdir, catalog=catalog)
    with Catalog(_require_catalog(cfg)) as cat:
        recipe = active_recipe_id(cat)
        unextracted = kept_without_file(cat, recipe) if recipe else {}
        if unextracted:  # filter before you encode: shards pack only clips that have files
            console.print(f"{len(unextracted)} kept clips have no clip file yet and were not sharded "
                          "(`vidcorpus sync` extracts them)", markup=False)
        written = write_pending_shards(cfg, cat, new_run_id(), log=lambda m: console.print(m, markup=False),
                                       allow_uncaptioned=allow_uncaptioned)
    console.print(f"{len(written)} shards written under {cfg.url('shards')}")


@shards_app.command("list")
def shards_list(catalog: Optional[str] = CatalogOpt, config: Optional[Path] = ConfigOpt,
                workdir: Optional[str] = WorkdirOpt) -> None:
    """Every shard with its bucket, sample count, size and checksum."""
    from vidcorpus.catalog.store import Catalog

    cfg = _config(config, None, workdir=workdir, catalog=catalog)
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        _print_table(cat.query("SELECT shard_id, bucket, n, bytes, sha256, url FROM shards ORDER BY bucket, shard_id"))


@app.command()
def train(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    workdir: Optional[str] = WorkdirOpt,
    catalog: Optional[str] = CatalogOpt,
    preset: Optional[str] = PresetOpt,
    select: Optional[str] = typer.Option(None, "--select", help="SQL predicate over clips_wide, e.g. \"kept AND aesthetic >= 5\"."),
    release: Optional[str] = typer.Option(None, "--release", help="Train on a release's shards (checksums from its manifest)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Run directory (default {workdir}/train/{run_id})."),
    progress: bool = ProgressOpt,
    resume: Optional[str] = typer.Option(None, "--resume", help="'latest' (newest checkpoint of --output) or a run/checkpoint path."),
    export: Optional[str] = typer.Option(None, "--export", help="After training, write the EMA weights as a diffusers I2VGenXLPipeline here."),
    launcher: Optional[str] = typer.Option(None, "--launcher", help="local (also under torchrun) or ray (Ray Train TorchTrainer)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Ray Train workers."),
    follow: Optional[bool] = typer.Option(None, "--follow/--no-follow", help="Ask the --select query again at every epoch: newly sealed shards join without a restart."),
) -> None:
    """Train the base image-to-video stage (I2VGen-XL UNet) on the shards a catalog query selects."""
    cfg = _config(config, set_, workdir=workdir, catalog=catalog,
                  **{"models.preset": preset, "train.select": select, "train.steps": steps,
                     "train.release": release, "train.launcher": launcher, "train.workers": workers,
                     "train.follow": follow})
    _train_and_export(cfg, "base", output, progress, resume, export)


def _train_and_export(cfg: Config, stage: str, output: str | None, progress: bool, resume: str | None,
                      export: str | None) -> None:
    """`train` and `train-refiner`: run the stage's training, report it, optionally export its EMA."""
    from vidcorpus.errors import ModelNotAvailable
    from vidcorpus.jobs.encode import LatentCacheMissing
    from vidcorpus.shards.reader import ShardChecksumError
    from vidcorpus.shards.release_files import ReleaseError
    from vidcorpus.train.loop import ResumeMismatch
    from vidcorpus.jobs.shard_selection import NoTrainingData
    from vidcorpus.jobs.train import run_training

    from vidcorpus.paths import absolute

    output, export = absolute(output), absolute(export)  # both are stored (train_runs, checkpoints)
    resume = resume if resume in (None, "latest") else absolute(resume)
    try:
        result = run_training(cfg, output=output, progress=progress, log=console.print, resume=resume, stage=stage)
    except (NoTrainingData, ModelNotAvailable, ReleaseError, ShardChecksumError, ResumeMismatch, LatentCacheMissing,
            FileNotFoundError, ValueError) as e:  # ValueError: --resume latest without --output
        fail(str(e))
    console.print(f"trained {'the refiner ' if stage == 'refiner' else ''}{result.steps} steps on "
                  f"{result.distinct_clips} clips from {result.n_shards} shards; loss {result.losses[0]:.4f} -> "
                  f"{result.losses[-1]:.4f}; checkpoint: {result.checkpoint_dir}")
    if not export:
        return
    if stage == "refiner":
        from vidcorpus.presets import resolve_refiner
        from vidcorpus.train.refiner import export_refiner

        export_refiner(resolve_refiner(cfg.models).refiner, result.checkpoint_dir, export)
        console.print(f"exported EMA weights as a VideoToVideoSDPipeline: {export}")
    else:
        from vidcorpus.presets import resolve_models
        from vidcorpus.train.export import export_pipeline

        export_pipeline(resolve_models(cfg.models).i2vgen, result.checkpoint_dir, export)
        console.print(f"exported EMA weights as an I2VGenXLPipeline: {export}")


@app.command("export")
def export_cmd(
    checkpoint: str = typer.Argument(..., help="A checkpoint directory or a run directory (its newest checkpoint)."),
    out: str = typer.Argument(..., help="Where the diffusers I2VGenXLPipeline directory is written."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    preset: Optional[str] = PresetOpt,
    weights: str = typer.Option("ema", "--weights", help="ema (default) or unet (the raw trained weights)."),
) -> None:
    """Export a training checkpoint's EMA UNet with the frozen components as an I2VGenXLPipeline."""
    from vidcorpus.errors import ModelNotAvailable
    from vidcorpus.presets import resolve_models
    from vidcorpus.train.export import export_pipeline

    cfg = _config(config, set_, **{"models.preset": preset})
    try:
        export_pipeline(resolve_models(cfg.models).i2vgen, checkpoint, out, weights=weights)
    except (ModelNotAvailable, FileNotFoundError) as e:
        fail(str(e))
    console.print(f"exported {checkpoint} ({weights} weights) -> {out}")


# -- refiner stage and cascade (issue 9) ----------------------------------------------------------

@app.command("train-refiner")
def train_refiner_cmd(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    workdir: Optional[str] = WorkdirOpt,
    catalog: Optional[str] = CatalogOpt,
    preset: Optional[str] = PresetOpt,
    select: Optional[str] = typer.Option(None, "--select", help="SQL predicate over clips_wide (default \"height >= 720\")."),
    release: Optional[str] = typer.Option(None, "--release", help="Train on a release's shards (one whose recipe keeps height >= 720)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Run directory (default {workdir}/train/{run_id})."),
    progress: bool = ProgressOpt,
    resume: Optional[str] = typer.Option(None, "--resume", help="'latest' (newest checkpoint of --output) or a run/checkpoint path."),
    export: Optional[str] = typer.Option(None, "--export", help="After training, write the EMA weights as a diffusers VideoToVideoSDPipeline here."),
    launcher: Optional[str] = typer.Option(None, "--launcher", help="local (also under torchrun) or ray (Ray Train TorchTrainer)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Ray Train workers."),
) -> None:
    """Train the refiner stage (UNet3D video-to-video, 1280x720, brief captions) on random crops of high-resolution clips."""
    cfg = _config(config, set_, workdir=workdir, catalog=catalog,
                  **{"models.preset": preset, "refiner.select": select, "refiner.steps": steps,
                     "refiner.release": release, "refiner.launcher": launcher, "refiner.workers": workers})
    _train_and_export(cfg, "refiner", output, progress, resume, export)


@app.command("export-refiner")
def export_refiner_cmd(
    checkpoint: str = typer.Argument(..., help="A refiner checkpoint directory or run directory (its newest checkpoint)."),
    out: str = typer.Argument(..., help="Where the diffusers VideoToVideoSDPipeline directory is written."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    preset: Optional[str] = PresetOpt,
    weights: str = typer.Option("ema", "--weights", help="ema (default) or unet (the raw trained weights)."),
) -> None:
    """Export a refiner checkpoint's EMA UNet with the frozen components as a VideoToVideoSDPipeline."""
    from vidcorpus.errors import ModelNotAvailable
    from vidcorpus.presets import resolve_refiner
    from vidcorpus.train.refiner import export_refiner

    cfg = _config(config, set_, **{"models.preset": preset})
    try:
        export_refiner(resolve_refiner(cfg.models).refiner, checkpoint, out, weights=weights)
    except (ModelNotAvailable, FileNotFoundError) as e:
        fail(str(e))
    console.print(f"exported refiner {checkpoint} ({weights} weights) -> {out}")


@app.command()
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
    from vidcorpus.errors import ModelNotAvailable
    from vidcorpus.jobs.generate import generate_video

    cfg = _config(config, set_, **{"models.preset": preset, "generate.seed": seed, "generate.height": height,
                                   "generate.width": width, "generate.num_frames": frames})
    try:
        result = generate_video(cfg, image, prompt, short_prompt, base, refiner, output, progress=progress)
    except (ModelNotAvailable, FileNotFoundError, ValueError) as e:
        fail(str(e))
    f, h, w = result.frames.shape[:3]
    timing = ", ".join(f"{k} {v:.1f} s" + (f" (peak {result.peak_gib[k]:.1f} GiB)" if k in result.peak_gib else "")
                       for k, v in result.seconds.items())
    console.print(f"wrote {output}: {f} frames at {w}x{h} (refined from t={result.t_start}); {timing}")


@app.command()
def demo(
    directory: Path = typer.Argument(Path("vidcorpus-demo"), help="Where everything is written."),
    steps: int = typer.Option(20, "--steps", help="Training steps at the end."),
    ray_address: Optional[str] = RayAddressOpt,
    progress: bool = ProgressOpt,
) -> None:
    """Make a small synthetic corpus and run every stage on it with tiny offline models, then train."""
    from vidcorpus.jobs.demo import run_demo

    run_demo(directory, steps=steps, ray_address=ray_address, progress=progress, console=console)


@app.command()
def report(
    output: Path = typer.Option(..., "--output", "-o", help="Folder for index.html, plots, thumbnails and clip pages."),
    catalog: Optional[str] = CatalogOpt,
    config: Optional[Path] = ConfigOpt,
    workdir: Optional[str] = WorkdirOpt,
    run_id: Optional[str] = typer.Option(None, "--run", help="Only rows written by this run id."),
    release: Optional[str] = typer.Option(None, "--release", help="Only the clips a release's recipe decided; kept = released."),
) -> None:
    """Write a static HTML audit (funnel, score histograms with thresholds, galleries, failures, captions)."""
    from vidcorpus.catalog.store import CatalogError
    from vidcorpus.jobs.report.build import build_report

    cfg = _config(config, None, workdir=workdir, catalog=catalog)
    try:
        result = build_report(cfg.catalog_path, output, run=run_id, recipe_path=cfg.filters.recipe, console=console,
                              release=release)
    except (CatalogError, ValueError) as e:
        fail(str(e))
    console.print(f"report: {result.index} ({len(result.plots)} plots, {result.clip_pages} clip pages, "
                  f"{result.seconds:.1f} s)")


from vidcorpus.cli_release import release_app  # noqa: E402 - also registers `shards encode`
from vidcorpus.cli_serve import register_serve_command  # noqa: E402 - `serve`
from vidcorpus.cli_state import register_state_commands  # noqa: E402 - `status`, `sync`

register_state_commands(app)
register_serve_command(app)

app.add_typer(release_app, name="release")
filter_app = typer.Typer(help="Re-decide from stored scores: apply recipes, sweep thresholds, find duplicates.",
                         no_args_is_help=True, rich_markup_mode=None)
app.add_typer(filter_app, name="filter")


@filter_app.command("apply")
def filter_apply(
    recipe: str = typer.Argument(..., help="Bundled recipe name (pretrain_v1, finetune_hq_v1, demo_v1) or a YAML path."),
    catalog: Optional[str] = CatalogOpt,
    config: Optional[Path] = ConfigOpt,
    workdir: Optional[str] = WorkdirOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would change; record nothing."),
) -> None:
    """Decide every clip again with RECIPE from the scores in the catalog (no score is recomputed).

    Each clip gets a decision naming the recipe version and, when dropped, the first predicate it
    failed; the recipe is recorded by content, so a changed recipe needs a new version.
    """
    from vidcorpus import __version__
    from vidcorpus.catalog.store import Catalog, CatalogError
    from vidcorpus.filters.apply import apply_recipe
    from vidcorpus.filters.recipes import load_recipe
    from vidcorpus.ids import new_run_id

    cfg = _config(config, None, workdir=workdir, catalog=catalog)
    try:
        r = load_recipe(recipe)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    run_id = new_run_id()
    try:
        with Catalog(_require_catalog(cfg)) as cat:
            if not dry_run:
                cat.begin_run(run_id, "filter-apply", json.dumps({"recipe": r.id}), __version__)
            from vidcorpus.catalog.corpus_state import active_recipe_id, set_active_recipe

            was = active_recipe_id(cat)
            res = apply_recipe(cat, r, run_id, dry_run=dry_run)
            if not dry_run:
                set_active_recipe(cat, r, "filter apply", run_id)  # in force for every later command
                cat.finish_run(run_id, "succeeded", {"recipe": r.id, "clips": res.clips, "kept": res.kept})
    except CatalogError as e:
        fail(str(e))
    t = Table(title=f"{r.id}: {res.kept} of {res.clips} clips kept" + (" (dry run)" if dry_run else ""))
    t.add_column("dropped by", overflow="fold")
    t.add_column("clips", justify="right")
    t.add_column("share", justify="right")
    for reason, n in res.reasons.most_common():
        t.add_row(reason, str(n), f"{n / max(1, res.clips):.1%}")
    console.print(t)
    console.print(f"against the previous decisions: {res.newly_kept} newly kept, {res.newly_dropped} newly dropped, "
                  f"{res.changed_reason} dropped for another reason; scores untouched")
    if not dry_run:
        console.print(f"active recipe: {r.id}" + (f" (was {was})" if was and was != r.id else "")
                      + "; `vidcorpus status` lists the captions and shards it still needs, `vidcorpus sync` makes them",
                      markup=False)


@filter_app.command("sweep")
def filter_sweep(
    score: str = typer.Argument(..., help="Score name, e.g. aesthetic, motion, blur, dup_sim."),
    op: str = typer.Option(">=", "--op", help="Comparison a clip must pass: >=, >, <=, <."),
    steps: int = typer.Option(11, "--steps", help="Thresholds at this many quantiles of the score."),
    threshold: Optional[List[float]] = typer.Option(None, "--threshold", "-t", help="Explicit thresholds (repeatable)."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Also show what the whole recipe keeps with this threshold."),
    catalog: Optional[str] = CatalogOpt,
    config: Optional[Path] = ConfigOpt,
    workdir: Optional[str] = WorkdirOpt,
) -> None:
    """Print retention against a threshold on SCORE, from the stored scores (read-only)."""
    from vidcorpus.catalog.store import Catalog, CatalogError
    from vidcorpus.filters.apply import sweep
    from vidcorpus.filters.recipes import load_recipe

    if op not in (">=", ">", "<=", "<"):
        fail(f"--op must be one of >=, >, <=, < (got {op!r})")
    cfg = _config(config, None, workdir=workdir, catalog=catalog)
    try:
        r = load_recipe(recipe) if recipe else None
        with Catalog(cfg.catalog_path, read_only=True) as cat:
            rows = sweep(cat, score, op, steps, r, thresholds=threshold or None)
    except (CatalogError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    t = Table(title=f"retention of {score} {op} threshold ({rows[0]['scored']} clips scored)")
    t.add_column("threshold", justify="right")
    t.add_column("kept", justify="right")
    t.add_column("retained", justify="right")
    if r is not None:
        t.add_column(f"kept by {r.id}", justify="right")
        t.add_column("retained (recipe)", justify="right")
    for row in rows:
        cells = [f"{row['threshold']:.4g}", str(row["kept"]), f"{row['kept_frac']:.1%}"]
        if r is not None:
            cells += [str(row["recipe_kept"]), f"{row['recipe_frac']:.1%}"]
        t.add_row(*cells)
    console.print(t)


@filter_app.command("dedup")
def filter_dedup(
    catalog: Optional[str] = CatalogOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    workdir: Optional[str] = WorkdirOpt,
) -> None:
    """Score duplicates (dup_exact, dup_sim) of every clip with an embedding, then re-decide them with
    the catalog's active recipe (a filters.recipe set in --config/--set replaces it, said). Runs use
    the same code on their new clips."""
    from vidcorpus import __version__
    from vidcorpus.catalog.store import Catalog
    from vidcorpus.ids import new_run_id
    from vidcorpus.jobs.curate.pipeline import dedup_and_redecide
    from vidcorpus.jobs.curate.sync import adopt_recipe, pin_recipe

    cfg = _config(config, set_, workdir=workdir, catalog=catalog)
    run_id = new_run_id()
    with Catalog(_require_catalog(cfg)) as cat:
        cat.begin_run(run_id, "filter-dedup", json.dumps({"recipe": cfg.filters.recipe}), __version__)
        recipe = adopt_recipe(cfg, cat, run_id, "filter dedup", lambda m: console.print(m, markup=False))
        cfg = pin_recipe(cfg, recipe)
        console.print(f"deciding with the active recipe {recipe.id}", markup=False)
        ids = cat.query_dicts("SELECT clip_id FROM embeddings")
        n = dedup_and_redecide(cfg, cat, run_id, [r["clip_id"] for r in ids], log=console.print)
        cat.finish_run(run_id, "succeeded", {"clips": n})
    console.print(f"{n} clips scored for duplicates and re-decided")


from vidcorpus.cli_measure import register_filter_suggest  # noqa: E402 - `filter suggest`

register_filter_suggest(filter_app)


def main() -> None:  # pragma: no cover - console entry point
    app()


