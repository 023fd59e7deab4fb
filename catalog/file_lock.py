"""Opening the catalog's DuckDB file while other processes hold it: retries, and writers first.

DuckDB lets one process write a file or several processes read it, never both at once. A writer
opened with ``hold=False`` (the pipeline driver) therefore holds the file only while it commits,
and every open retries a held lock with jittered exponential backoff for up to its timeout:
readers get in between a run's commits, and a run waits out a reader. Writers go first: a writer
that finds the file held keeps a marker file beside it (``<catalog>.writer-waiting``, touched at
every retry, removed once it has the file), and a reader does not open the file while a fresh
marker is there. Without that, a dashboard that re-opens the catalog back to back could keep a
run's commit waiting for minutes (57 s measured). The marker is advisory: only vidcorpus's readers
honour it, and one older than ``WRITER_MARK_STALE_S`` (a writer that died waiting) is ignored.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import duckdb

from vidcorpus.catalog.catalog_error import CatalogError

READ_LOCK_TIMEOUT_S = float(os.environ.get("VIDCORPUS_CATALOG_READ_TIMEOUT_S", 30))
WRITE_LOCK_TIMEOUT_S = float(os.environ.get("VIDCORPUS_CATALOG_WRITE_TIMEOUT_S", 600))
WRITER_MARK_STALE_S = 5.0  # a waiting writer touches its marker at least every WRITER_RETRY_MAX_S
WRITER_RETRY_MAX_S = 0.25


def is_lock_error(e: Exception) -> bool:
    text = str(e).lower()
    return "lock" in text and ("could not set" in text or "conflicting" in text)


def connect(path: str, read_only: bool, timeout_s: float) -> duckdb.DuckDBPyConnection:
    """Open the file, retrying while another process holds a conflicting lock (a waiting writer
    marks itself so that readers let it in first)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.02
    mark = Path(path + ".writer-waiting")
    marked = False
    try:
        while True:
            if read_only:
                wait_for_writer(mark, deadline)
            try:
                return duckdb.connect(path, read_only=read_only)
            except duckdb.IOException as e:
                left = deadline - time.monotonic()
                if not is_lock_error(e) or left <= 0:
                    raise CatalogError(f"cannot open catalog {path}: {e}") from e
                if not read_only:
                    mark.touch()  # readers now wait for this writer
                    marked = True
                time.sleep(min(left, delay * (0.5 + random.random())))
                delay = min(delay * 2, 1.0 if read_only else WRITER_RETRY_MAX_S)
            except duckdb.ConnectionException as e:  # same file already open in this process, other mode
                raise CatalogError(f"cannot open catalog {path}: {e}") from e
    finally:
        if marked:
            mark.unlink(missing_ok=True)


def wait_for_writer(mark: Path, deadline: float) -> None:
    """Wait while a writer is waiting for the file (a fresh marker), until ``deadline``."""
    while time.monotonic() < deadline:
        try:
            if time.time() - mark.stat().st_mtime > WRITER_MARK_STALE_S:
                return
        except FileNotFoundError:
            return
        time.sleep(0.02)
