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
from rich.table import Table  # noqa: E402

from vidcorpus.config import Config, ConfigError, dump_config, load_config  # noqa: E402

app = typer.Typer(
    help="vidcorpus: curate text-video and text-image corpora (ingest, shot split, score, caption, "
    "WebDataset shards, DuckDB catalog) and train I2VGen-XL-style video diffusion models on them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
catalog_app = typer.Typer(help="Inspect the DuckDB catalog (funnel, tables, failures).", no_args_is_help=True)
shards_app = typer.Typer(help="Write and list WebDataset shards.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(catalog_app, name="catalog")
app.add_typer(shards_app, name="shards")

console = Console()
err = Console(stderr=True)

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (sections as in `vidcorpus config show`).")
SetOpt = typer.Option(None, "--set", "-s", help="Override a config value, e.g. --set filters.recipe=pretrain_v1 (repeatable).")
CatalogOpt = typer.Option(None, "--catalog", help="DuckDB catalog file (default: {workdir}/catalog.duckdb).")
WorkdirOpt = typer.Option(None, "--workdir", "-w", help="Root for staging and shards: a local path or s3:// URL.")
RayAddressOpt = typer.Option(None, "--ray-address", help="Existing Ray cluster; default starts a local Ray.")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")
PresetOpt = typer.Option(None, "--preset", help="Model preset: 'tiny' (offline random test models) or 'production'.")


def _config(config: Optional[Path], overrides: Optional[List[str]], **fields) -> Config:
    try:
        return load_config(config, overrides or [], **fields)
    except ConfigError as e:
        err.print(f"[red]config error:[/red] {e}")
        raise typer.Exit(2)


def _print_table(table, title: str | None = None, max_rows: int = 200) -> None:
    t = Table(title=title, show_lines=False)
    for name in table.column_names:
        t.add_column(name, overflow="fold")
    for row in table.slice(0, max_rows).to_pylist():
        t.add_row(*[_fmt(v) for v in row.values()])
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
    console.print(dump_config(cfg), end="", highlight=False, markup=False)


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
    error_class: Optional[str] = typer.Option(None, "--error-class", help="With --retry-failed: only this error class."),
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
        None, "--error-class", help="With --retry-failed: only this class (dns, connect, timeout, http_4xx, http_5xx, "
                                    "too_large, not_media, opted_out, decode_error, unsupported_codec, hash_mismatch, "
                                    "blocked_address)."),
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
    from vidcorpus.errors import ModelNotAvailable
    from vidcorpus.runner import run_pipeline

    if error_class and not retry_failed:
        err.print("[red]--error-class needs --retry-failed[/red]")
        raise typer.Exit(2)
    cfg = _config(config, set_, workdir=workdir, catalog=catalog, **{"models.preset": preset, "ray.address": ray_address})
    if inputs:
        cfg = cfg.model_copy(update={"inputs": list(inputs)})
    if not cfg.inputs:
        err.print("[red]no inputs:[/red] give URL lists, folders or media URLs, or set `inputs` in the config")
        raise typer.Exit(2)
    try:
        summary = run_pipeline(cfg, retry_failed=retry_failed, error_class=error_class, progress=progress,
                               log=console.print)
    except ModelNotAvailable as e:
        err.print(f"[red]model not available:[/red] {e}")
        raise typer.Exit(3)
    _print_run_summary(summary)


def _print_run_summary(summary) -> None:
    from vidcorpus.catalog.store import Catalog

    with Catalog(summary.catalog, read_only=True) as cat:
        print_funnel(cat.funnel(), title=f"catalog funnel after run {summary.run_id}")
    console.print(
        f"run {summary.run_id}: {summary.rows_committed} rows committed, {summary.failures} failed rows, "
        f"{len(summary.shards)} new shards, {summary.sources_skipped} sources skipped as done, {summary.seconds:.1f} s\n"
        f"catalog: {summary.catalog}\nshards:  {summary.shard_root}"
    )


@app.command()
def sql(
    query: str = typer.Argument(..., help="SQL to run, e.g. \"SELECT * FROM funnel\". Tables: runs, sources, clips, "
                                          "scores, captions, decisions, shards, shard_members, failures, train_runs, "
                                          "train_samples; views: clips_wide, funnel, failures_by_class."),
    catalog: Optional[str] = CatalogOpt,
    config: Optional[Path] = ConfigOpt,
    workdir: Optional[str] = WorkdirOpt,
    fmt: str = typer.Option("table", "--format", "-f", help="table | csv | json | parquet"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to a file instead of stdout (parquet needs it)."),
) -> None:
    """Query the catalog with SQL (opened read-only)."""
    import duckdb

    from vidcorpus.catalog.store import Catalog, CatalogError

    cfg = _config(config, None, workdir=workdir, catalog=catalog)
    try:
        with Catalog(cfg.catalog_path, read_only=True) as cat:
            table = cat.query(query)
    except CatalogError as e:
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(2)
    except duckdb.Error as e:
        err.print(f"[red]SQL error:[/red] {e}")
        raise typer.Exit(2)
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
            err.print("[red]--format parquet needs --output FILE[/red]")
            raise typer.Exit(2)
        pq.write_table(table, output)
    else:
        err.print(f"[red]unknown format {fmt!r}[/red] (table, csv, json, parquet)")
        raise typer.Exit(2)


@catalog_app.command("funnel")
def catalog_funnel(catalog: Optional[str] = CatalogOpt, config: Optional[Path] = ConfigOpt,
                   workdir: Optional[str] = WorkdirOpt) -> None:
    """Counts and hours per stage: sources, failed, shots, scored, kept, captioned, sharded, trained on."""
    from vidcorpus.catalog.store import Catalog

    cfg = _config(config, None, workdir=workdir, catalog=catalog)
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        print_funnel(cat.funnel())


@catalog_app.command("failures")
def catalog_failures(catalog: Optional[str] = CatalogOpt, config: Optional[Path] = ConfigOpt,
                     workdir: Optional[str] = WorkdirOpt) -> None:
    """Failures by stage and error class, with an example message each."""
    from vidcorpus.catalog.store import Catalog

    cfg = _config(config, None, workdir=workdir, catalog=catalog)
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        _print_table(cat.query("SELECT * FROM failures_by_class"), title="failures by class")


@catalog_app.command("info")
def catalog_info(catalog: Optional[str] = CatalogOpt, config: Optional[Path] = ConfigOpt,
                 workdir: Optional[str] = WorkdirOpt) -> None:
    """Schema version and row count of every table."""
    from vidcorpus.catalog.store import Catalog

    cfg = _config(config, None, workdir=workdir, catalog=catalog)
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        names = [r[0] for r in cat.con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' ORDER BY 1").fetchall()]
        table = cat.query(" UNION ALL ".join(f"SELECT '{n}' AS table_name, count(*) AS rows FROM {n}" for n in names))
        console.print(f"catalog {cfg.catalog_path}, schema version {cat.schema_version}")
        _print_table(table)


@shards_app.command("write")
def shards_write(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    workdir: Optional[str] = WorkdirOpt,
    catalog: Optional[str] = CatalogOpt,
) -> None:
    """Pack every kept clip that no shard holds yet into WebDataset shards, then record them."""
    from vidcorpus.catalog.store import Catalog
    from vidcorpus.ids import new_run_id
    from vidcorpus.runner import write_pending_shards

    cfg = _config(config, set_, workdir=workdir, catalog=catalog)
    with Catalog(cfg.catalog_path) as cat:
        written = write_pending_shards(cfg, cat, new_run_id())
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
) -> None:
    """Train the base image-to-video stage (I2VGen-XL UNet) on the shards a catalog query selects."""
    from vidcorpus.errors import ModelNotAvailable
    from vidcorpus.shards.reader import ShardChecksumError
    from vidcorpus.shards.release import ReleaseError
    from vidcorpus.training import NoTrainingData, run_training

    cfg = _config(config, set_, workdir=workdir, catalog=catalog,
                  **{"models.preset": preset, "train.select": select, "train.steps": steps,
                     "train.release": release, "train.launcher": launcher, "train.workers": workers})
    from vidcorpus.train.loop import ResumeMismatch

    try:
        result = run_training(cfg, output=output, progress=progress, log=console.print, resume=resume)
    except (NoTrainingData, ModelNotAvailable, ReleaseError, ShardChecksumError, ResumeMismatch,
            FileNotFoundError, ValueError) as e:  # ValueError: --resume latest without --output
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(2)
    console.print(f"trained {result.steps} steps on {result.distinct_clips} clips from {result.n_shards} shards; "
                  f"loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}; checkpoint: {result.checkpoint_dir}")
    if export:
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
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(2)
    console.print(f"exported {checkpoint} ({weights} weights) -> {out}")


@app.command()
def demo(
    directory: Path = typer.Argument(Path("vidcorpus-demo"), help="Where everything is written."),
    steps: int = typer.Option(20, "--steps", help="Training steps at the end."),
    ray_address: Optional[str] = RayAddressOpt,
    progress: bool = ProgressOpt,
) -> None:
    """Make a small synthetic corpus and run every stage on it with tiny offline models, then train."""
    from vidcorpus.demo import run_demo

    run_demo(directory, steps=steps, ray_address=ray_address, progress=progress, console=console)


@app.command()
def report(
    output: Path = typer.Option(..., "--output", "-o", help="Folder for index.html, plots, thumbnails and clip pages."),
    catalog: Optional[str] = CatalogOpt,
    config: Optional[Path] = ConfigOpt,
    workdir: Optional[str] = WorkdirOpt,
    run_id: Optional[str] = typer.Option(None, "--run", help="Only rows written by this run id."),
) -> None:
    """Write a static HTML audit (funnel, score histograms with thresholds, galleries, failures, captions)."""
    from vidcorpus.catalog.store import CatalogError
    from vidcorpus.report import build_report

    cfg = _config(config, None, workdir=workdir, catalog=catalog)
    try:
        result = build_report(cfg.catalog_path, output, run=run_id, recipe_path=cfg.filters.recipe, console=console)
    except (CatalogError, ValueError) as e:
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(2)
    console.print(f"report: {result.index} ({len(result.plots)} plots, {result.clip_pages} clip pages, "
                  f"{result.seconds:.1f} s)")


from vidcorpus.cli_release import release_app  # noqa: E402 - also registers `shards encode`

app.add_typer(release_app, name="release")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
