"""What every raw result in bench/results/ records about its run: when, where, under what load, how.

docs/benchmarks.md is rendered from these files (bench/render_benchmarks.py); a figure whose run
cannot be told apart from another (date, machine, load, command) cannot be checked or repeated.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def run_metadata() -> dict:
    """Date (UTC), device, 1-minute load, the command line and commit, for the top of a result file."""
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
                  f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_1min_start": os.getloadavg()[0],
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "commit": _commit(),
    }


def finish_metadata(meta: dict) -> dict:
    """The load at the end of the run, beside the one at the start."""
    return {**meta, "load_1min_end": os.getloadavg()[0]}


def emit(result: dict, out: str | None) -> None:
    """A result on stdout (one line) and, with ``out``, in that file (indented)."""
    import json

    print(json.dumps(result))
    if out:
        Path(out).write_text(json.dumps(result, indent=1))
