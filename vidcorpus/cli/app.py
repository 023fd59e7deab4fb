"""The `vidcorpus` app: every command module's commands and groups on one typer app.

The console script (``pyproject.toml``) and `python -m vidcorpus.cli` both run ``app``. Each command's
code is in the module named for it (see ``vidcorpus/cli/__init__.py``).
"""

from __future__ import annotations

import typer

from vidcorpus.cli.catalog import catalog_app
from vidcorpus.cli.config import config_app
from vidcorpus.cli.demo import demo
from vidcorpus.cli.export import export, export_refiner_cmd
from vidcorpus.cli.filter import filter_app
from vidcorpus.cli.generate import generate
from vidcorpus.cli.ingest import ingest
from vidcorpus.cli.output import show_job_logs
from vidcorpus.cli.release import release_app
from vidcorpus.cli.report import report
from vidcorpus.cli.run import run
from vidcorpus.cli.serve import serve
from vidcorpus.cli.shards import shards_app
from vidcorpus.cli.sql import sql
from vidcorpus.cli.status import status
from vidcorpus.cli.sync import sync
from vidcorpus.cli.train import train, train_refiner
from vidcorpus.cli.user_errors import UserErrorGroup

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
app.add_typer(config_app, name="config")
app.command("run")(run)
app.command("ingest")(ingest)
app.command("sql")(sql)
app.add_typer(catalog_app, name="catalog")
app.add_typer(shards_app, name="shards")
app.command("train")(train)
app.command("export")(export)
app.command("train-refiner")(train_refiner)
app.command("export-refiner")(export_refiner_cmd)
app.command("generate")(generate)
app.command("demo")(demo)
app.command("report")(report)
app.command("status")(status)
app.command("sync")(sync)
app.command("serve")(serve)
app.add_typer(release_app, name="release")
app.add_typer(filter_app, name="filter")


def main() -> None:  # pragma: no cover - `python -m vidcorpus.cli`
    app()
