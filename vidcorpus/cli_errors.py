"""How the command line ends on a user's mistake: one plain line on stderr and a documented code.

Exit codes (README, "Exit codes"):

- 0 done
- 1 ``catalog verify`` found problems (the report is printed)
- 2 the input is wrong: a missing file or folder, an unknown recipe or release, a bad path,
  config or option, an empty selection, SQL that is invalid or refused
- 3 a model's weights are not available (the message names the command that fetches them)
- 4 the store is full (nothing partial was published; free space and run again)
"""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

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
