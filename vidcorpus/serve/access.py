"""How the server reads and writes the catalog without ever holding it between requests.

DuckDB lets one process write a file or many read it, never both, and within one process a file
cannot be open read-only and read-write at once. So:

- Reads share one read-only connection while at least one request is in flight (each request
  gets its own cursor) and close it when the last one finishes: between requests the file is free.
- A job that waits for the file (``<catalog>.writer-waiting``, see ``catalog/store.py``) is let in
  first: new requests stop joining the open connection, the ones in flight finish, the file is
  closed, and the next open waits until the job has committed. Back-to-back readers cannot keep a
  job's commit waiting (the 57 s measured in docs/benchmarks.md).
- A label write takes the file exclusively in this process (no read in flight) for one short
  transaction, opened and closed around it (``Catalog(hold=False)``).

A snapshot (Parquet, read-only) is an in-memory DuckDB over its files: it is opened once and its
queries are serialised (its datasets are registered on one connection).
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Iterator

import duckdb

from vidcorpus.catalog.safe_sql import lock_down
from vidcorpus.catalog.snapshot import is_snapshot
from vidcorpus.catalog.store import WRITER_MARK_STALE_S, Catalog, CatalogError

LABEL_WRITE_TIMEOUT_S = 30.0


class CatalogAccess:
    """Per-request access to one catalog (DuckDB file or snapshot) for a threaded server."""

    def __init__(self, path: str, read_timeout_s: float = 30.0):
        self.path = str(path)
        self.read_timeout_s = read_timeout_s
        self.snapshot = is_snapshot(self.path)
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._con: duckdb.DuckDBPyConnection | None = None
        self._snapshot_cat: Catalog | None = None
        self._snapshot_lock = threading.Lock()
        self.opens = 0  # how many times the file was opened (tests and the benchmark read it)
        if self.snapshot:
            self._snapshot_cat = Catalog(self.path, read_only=True)
            lock_down(self._snapshot_cat.con)
        else:
            # opening as a writer creates the labels table (migration 14); both keep the file closed
            # except inside a transaction (hold=False) or a request (``read``)
            self._writer = Catalog(self.path, hold=False, lock_timeout_s=LABEL_WRITE_TIMEOUT_S)
            self._reader = Catalog(self.path, read_only=True, hold=False)

    @property
    def writable(self) -> bool:
        return not self.snapshot

    def _job_waiting(self) -> bool:
        try:
            return time.time() - Path(self.path + ".writer-waiting").stat().st_mtime <= WRITER_MARK_STALE_S
        except FileNotFoundError:
            return False

    @contextlib.contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor for one request's queries (external access disabled)."""
        if self._snapshot_cat is not None:
            with self._snapshot_lock:
                yield self._snapshot_cat.con
            return
        deadline = time.monotonic() + self.read_timeout_s
        with self._cond:
            # do not join an open connection while a job waits for the file, nor read during a label write
            while self._writing or (self._con is not None and self._job_waiting()):
                if time.monotonic() > deadline:
                    raise CatalogError(f"catalog {self.path} stayed busy for {self.read_timeout_s:.0f} s")
                self._cond.wait(timeout=0.05)
            if self._con is None:
                self._reader.lock_timeout_s = max(0.1, deadline - time.monotonic())
                con = self._reader._connect()  # lock-aware: waits while a job waits for the file
                lock_down(con)
                self._con = con
                self.opens += 1
            self._readers += 1
            cursor = self._con.cursor()
        try:
            yield cursor
        finally:
            cursor.close()
            with self._cond:
                self._readers -= 1
                if self._readers == 0 and self._con is not None:
                    self._con.close()
                    self._con = None
                self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One short write transaction (labels), with no read of this process in flight."""
        if self.snapshot:
            raise CatalogError("this catalog is a snapshot: labels need the DuckDB file it was exported from")
        with self._cond:
            while self._writing or self._readers:
                self._cond.wait(timeout=0.05)
            self._writing = True
        try:
            with self._writer.transaction() as con:
                yield con
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()

    def close(self) -> None:
        if self._snapshot_cat is not None:
            self._snapshot_cat.close()
