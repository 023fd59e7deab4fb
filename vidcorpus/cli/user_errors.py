"""How the command line ends on a user's mistake: one plain line on stderr and a documented code.

Exit codes (README, "Exit codes"):

- 0 done
- 1 ``catalog verify`` found problems (the report is printed)
- 2 the input is wrong: a missing file or folder, an unknown recipe or release, a bad path,
  config or option, an empty selection, SQL that is invalid or refused
- 3 a model's weights are not available (the message names the command that fetches them)
- 4 the store is full (nothing partial was published; free space and run again)

``VIDCORPUS_TRACEBACK=1`` lets the top-level handler re-raise instead (a traceback for bug reports).
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

try:  # typer 0.2x brings its own click
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - a typer on the public click
    from click.exceptions import NoArgsIsHelpError, UsageError

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_MODEL, EXIT_STORAGE = 0, 1, 2, 3, 4

err = Console(stderr=True)


def say_error(message: str, prefix: str = "") -> None:
    """One line on stderr: the message's own brackets shown as typed, never wrapped."""
    text = " ".join(str(message).split())  # multi-line library messages become one line
    head = f"[red]{escape(prefix)}[/red] " if prefix else ""
    err.print(f"{head}{'' if prefix else '[red]'}{escape(text)}{'' if prefix else '[/red]'}", soft_wrap=True,
              highlight=False)


def fail(message: str, code: int = EXIT_USAGE, prefix: str = "") -> NoReturn:
    """Print ``message`` as one error line and exit with ``code``."""
    say_error(message, prefix)
    raise typer.Exit(code)


# (module, class, exit code): a user's mistake, reported as one line. Looked up in sys.modules, so
# the handler imports nothing (a class whose module was never imported cannot have been raised).
USER_ERRORS = [
    ("vidcorpus.errors", "StorageFullError", EXIT_STORAGE),
    ("vidcorpus.errors", "ModelNotAvailable", EXIT_MODEL),
    ("vidcorpus.config", "ConfigError", EXIT_USAGE),
    ("vidcorpus.catalog.catalog_error", "CatalogError", EXIT_USAGE),
    ("vidcorpus.catalog.safe_sql", "RefusedSQL", EXIT_USAGE),
    ("vidcorpus.shards.release_files", "ReleaseError", EXIT_USAGE),
    ("vidcorpus.shard_reader", "ShardChecksumError", EXIT_USAGE),
    ("vidcorpus.shard_reader", "ShardUnavailable", EXIT_USAGE),  # a manifest or shard named that is not there
    ("duckdb", "ParserException", EXIT_USAGE),  # a user's --select predicate or query
    ("duckdb", "BinderException", EXIT_USAGE),
    ("vidcorpus.ingest.sources", "InputError", EXIT_USAGE),
    ("vidcorpus.jobs.shard_selection", "NoTrainingData", EXIT_USAGE),
    ("vidcorpus.jobs.encode", "LatentCacheMissing", EXIT_USAGE),
    ("vidcorpus.train.resume", "ResumeMismatch", EXIT_USAGE),
]
PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def user_error_code(exc: BaseException) -> int | None:
    """The exit code for an exception that is the user's mistake, else None (a bug: let it raise)."""
    for module, name, code in USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(exc, cls):
            return code
    return EXIT_USAGE if isinstance(exc, PATH_ERRORS) else None


def user_error_message(exc: BaseException) -> str:
    if type(exc).__module__.split(".")[0] in ("duckdb", "_duckdb"):
        return f"invalid SQL: {exc}"
    if isinstance(exc, PATH_ERRORS) and getattr(exc, "filename", None):
        return f"{(exc.strerror or type(exc).__name__).lower()}: {exc.filename}"
    return str(exc) or type(exc).__name__


def _usage_error(e: UsageError, ctx) -> NoReturn:
    """A missing argument, an unknown option or command: one line, not usage + hint + error."""
    if isinstance(e, NoArgsIsHelpError):
        raise e  # `vidcorpus release` alone prints its help
    where = e.ctx.command_path if e.ctx is not None else ctx.command_path
    say_error(f"{e.format_message()} (`{where} --help` shows the usage)")
    raise typer.Exit(e.exit_code) from None


class UserErrorGroup(TyperGroup):
    """The app's command group: a user's mistake raised anywhere below ends as one line and its code."""

    def parse_args(self, ctx, args):
        """The group's own options (`vidcorpus --bogus run`) are parsed here, before any invoke."""
        try:
            return super().parse_args(ctx, args)
        except UsageError as e:
            _usage_error(e, ctx)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UsageError as e:
            _usage_error(e, ctx)
        except Exception as e:  # noqa: BLE001 - anything not a user error is re-raised unchanged
            code = user_error_code(e)
            if code is None or os.environ.get("VIDCORPUS_TRACEBACK"):  # =1: the full traceback, for debugging
                raise
            say_error(user_error_message(e))
            raise typer.Exit(code) from None
