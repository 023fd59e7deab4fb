"""The `vidcorpus` app: every command module's commands and groups on one typer app.

The console script (``pyproject.toml``) and `python -m vidcorpus.cli` both run ``app``. Each command's
code is in the module named for it (see ``vidcorpus/cli/__init__.py``).
"""

from __future__ import annotations

import typer

from vidcorpus.cli import catalog, config, demo, export, filter, generate, ingest, release, report, run, serve
from vidcorpus.cli import shards, sql, status, sync, train
from vidcorpus.cli.errors import UserErrorGroup
from vidcorpus.cli.output import show_job_logs

app = typer.Typer(  # help and errors are shown as written: no rich markup eats "[...]" from them
    cls=UserErrorGroup,
    rich_markup_mode=None,
    help="vidcorpus: curate text-video and text-image corpora (ingest, shot split, score, caption, "
    "WebDataset shards, DuckDB catalog) and train I2VGen-XL-style video diffusion models on them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.callback()(show_job_logs)  # before every command: the jobs' log lines reach the console
app.add_typer(config.config_app, name="config")
app.command("run")(run.run)
app.command("ingest")(ingest.ingest)
app.command("sql")(sql.sql)
app.add_typer(catalog.catalog_app, name="catalog")
app.add_typer(shards.shards_app, name="shards")
app.command("train")(train.train)
app.command("export")(export.export)
app.command("train-refiner")(train.train_refiner)
app.command("export-refiner")(export.export_refiner_cmd)
app.command("generate")(generate.generate)
app.command("demo")(demo.demo)
app.command("report")(report.report)
app.command("status")(status.status)
app.command("sync")(sync.sync)
app.command("serve")(serve.serve)
app.add_typer(release.release_app, name="release")
app.add_typer(filter.filter_app, name="filter")


def main() -> None:  # pragma: no cover - `python -m vidcorpus.cli`
    app()
