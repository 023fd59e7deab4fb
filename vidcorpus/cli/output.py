"""What the commands print: the console, Arrow tables as rich tables, the funnel, and query results
written as table, CSV, JSON or Parquet."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from vidcorpus.cli.user_errors import fail

console = Console()


def show_job_logs() -> None:
    """The one place a log handler is installed in a CLI process (a caption actor adds its own, to its
    worker log: vidcorpus/jobs/curate/caption_pool.py): the jobs' records (``logging``, INFO and up,
    under the ``vidcorpus`` logger) print on the console as the plain lines they are, beside the
    command's own output. Idempotent: the tests invoke the app many times in one process."""
    jobs = logging.getLogger("vidcorpus")
    jobs.setLevel(logging.INFO)
    if not any(getattr(h, "vidcorpus_cli", False) for h in jobs.handlers):
        handler = RichHandler(console=console, show_time=False, show_level=False, show_path=False, markup=False,
                              rich_tracebacks=False, keywords=[])
        handler.vidcorpus_cli = True
        jobs.addHandler(handler)


def print_arrow_table(table, title: str | None = None, max_rows: int = 200) -> None:
    """A pyarrow table as a rich table: numbers right-aligned, the first ``max_rows`` rows."""
    import pyarrow.types as pat  # inside: keeps --help fast

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


def emit(table, fmt: str, output: Optional[Path]) -> None:
    """``--format table|csv|json|parquet`` and ``--output``: a query's rows on stdout or in a file."""
    import pyarrow.csv as pcsv  # inside: keeps --help fast
    import pyarrow.parquet as pq

    if fmt == "table":
        print_arrow_table(table)
    elif fmt == "csv":
        if output:
            pcsv.write_csv(table, output)
        else:
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
