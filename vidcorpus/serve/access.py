"""How the server reads and writes the catalog without ever keeping a job from it.

DuckDB lets one process write a file or many read it, never both, and within one process a file
cannot be open read-only and read-write at once. So:

- Reads share one read-only connection (each request gets its own cursor, so requests run side by
  side). The connection stays open between requests, so DuckDB's buffer pool stays warm (a grid
  page on a fresh connection of a 1 M-clip catalog costs 4x the same page on a warm one), but only
  while nobody else needs the file: it is closed when idle for ``idle_close_s`` and at once when a
  job waits for the file.
- A job that waits for the file (``<catalog>.writer-waiting``, see ``catalog/store.py``) is let in
  first: new requests stop joining the open connection, the ones in flight finish, the file is
  closed (a watcher thread notices the marker even when no request comes), and the next open
  waits until the job has committed. Back-to-back readers cannot keep a job's commit waiting (the
  57 s measured in docs/benchmarks.md), nor can an idle server.
- A label write takes the file exclusively in this process (no read in flight, the read
  connection closed) for one short transaction, opened and closed around it (``Catalog(hold=False)``).
  Every ``CatalogAccess`` of one file in a process shares this state, so a second server (or a
  writer opened through ``exclusive``) never meets the first one's read connection.

``stamp`` names the catalog's state while a read is open: the size and modification time of the
file and its write-ahead log, taken when the connection opened. Nothing can change the file while
the connection is open, and any commit changes one of them, so caches keyed by the stamp
(``serve/cache.py``) are never stale.

A snapshot (Parquet, read-only) is an in-memory DuckDB over its files: it is opened once and its
queries are serialised (its datasets are registered on one connection).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Iterator

import duckdb

from vidcorpus.catalog.safe_sql import lock_down
from vidcorpus.catalog.snapshot import is_snapshot
from vidcorpus.catalog.file_lock import WRITER_MARK_STALE_S
from vidcorpus.catalog.store import Catalog, CatalogError

LABEL_WRITE_TIMEOUT_S = 30.0
IDLE_CLOSE_S = 10.0
"""An idle read connection is closed after this long (a waiting job gets the file at once anyway)."""
WATCH_EVERY_S = 0.05


def file_stamp(path: str) -> tuple:
    """(size, mtime) of the catalog file and of its write-ahead log: changes with every commit."""
    out: list = []
    for p in (path, path + ".wal"):
        try:
            st = os.stat(p)
            out += [st.st_size, st.st_mtime_ns]
        except FileNotFoundError:
            out += [None, None]
    return tuple(out)


class _SharedReads:
    """The read connection of one catalog file in this process, and who is using it."""

    def __init__(self, path: str):
        self.path = path
        self.cond = threading.Condition()
        self.readers = 0
        self.writing = False
        self.con: duckdb.DuckDBPyConnection | None = None
        self.stamp: tuple | None = None
        self.idle_since = 0.0
        self.opens = 0
        self.watcher: threading.Thread | None = None

    def job_waiting(self) -> bool:
        try:
            return time.time() - Path(self.path + ".writer-waiting").stat().st_mtime <= WRITER_MARK_STALE_S
        except FileNotFoundError:
            return False

    def close_locked(self) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None
        self.cond.notify_all()

    def watch(self, idle_close_s: float) -> None:
        """Close the idle connection when a job waits for the file or nobody used it for a while."""
        while True:
            time.sleep(WATCH_EVERY_S)
            with self.cond:
                if self.con is None:
                    self.watcher = None
                    return
                if self.readers == 0 and (self.job_waiting() or time.monotonic() - self.idle_since > idle_close_s):
                    self.close_locked()
                    self.watcher = None
                    return


_SHARED: dict[str, _SharedReads] = {}
_SHARED_LOCK = threading.Lock()


def _shared(path: str) -> _SharedReads:
    key = os.path.realpath(path)
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = _SharedReads(path)
        return _SHARED[key]


def release_file(path: str) -> None:
    """Close this process's idle read connection of ``path``, for another use of the file in the same
    process: DuckDB shares one database per file and process, and the server's has external access
    disabled (a ``catalog export`` from the process that embeds the server needs it)."""
    st = _shared(path)
    with st.cond:
        while st.readers:
            st.cond.wait(timeout=0.05)
        st.close_locked()


class CatalogAccess:
    """Per-request access to one catalog (DuckDB file or snapshot) for a threaded server."""

    def __init__(self, path: str, read_timeout_s: float = 30.0, idle_close_s: float = IDLE_CLOSE_S,
                 query_threads: int | None = None):
        self.path = str(path)
        self.query_threads = query_threads  # DuckDB's threads per query (None: its default, every core)
        self.read_timeout_s = read_timeout_s
        self.idle_close_s = idle_close_s
        self.snapshot = is_snapshot(self.path)
        self._snapshot_cat: Catalog | None = None
        self._snapshot_lock = threading.Lock()
        if self.snapshot:
            self._snapshot_cat = Catalog(self.path, read_only=True)
            self._configure(self._snapshot_cat.con)
            self._state = None
        else:
            self._state = _shared(self.path)
            # opening as a writer creates the labels table (migration 14); both keep the file closed
            # except inside a transaction (hold=False) or while reads are open (``read``)
            with self.exclusive():
                self._writer = Catalog(self.path, hold=False, lock_timeout_s=LABEL_WRITE_TIMEOUT_S)
            self._reader = Catalog(self.path, read_only=True, hold=False)

    def _configure(self, con: duckdb.DuckDBPyConnection) -> None:
        """Threads per query (before the configuration is locked), then external access off."""
        if self.query_threads:
            con.execute(f"SET threads = {int(self.query_threads)}")
        lock_down(con)

    @property
    def writable(self) -> bool:
        return not self.snapshot

    @property
    def opens(self) -> int:
        """How many times this process opened the file for reading (tests and the benchmark read it)."""
        return self._state.opens if self._state else 1

    @property
    def stamp(self) -> tuple:
        """The catalog's state as of the open read (call inside ``read``)."""
        return ("snapshot", self.path) if self._state is None else self._state.stamp

    @contextlib.contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor for one request's queries (external access disabled)."""
        if self._snapshot_cat is not None:
            with self._snapshot_lock:
                yield self._snapshot_cat.con
            return
        st = self._state
        deadline = time.monotonic() + self.read_timeout_s
        with st.cond:
            # do not join an open connection while a job waits for the file, nor read during a write
            while st.writing or (st.con is not None and st.job_waiting()):
                if st.con is not None and st.readers == 0:
                    st.close_locked()  # the job is waiting for this file: let it in now
                if time.monotonic() > deadline:
                    raise CatalogError(f"catalog {self.path} stayed busy for {self.read_timeout_s:.0f} s")
                st.cond.wait(timeout=0.05)
            if st.con is None:
                self._reader.lock_timeout_s = max(0.1, deadline - time.monotonic())
                con = self._reader._connect()  # lock-aware: waits while a job waits for the file
                self._configure(con)
                st.con, st.stamp = con, file_stamp(self.path)
                st.opens += 1
                if st.watcher is None:
                    st.watcher = threading.Thread(target=st.watch, args=(self.idle_close_s,), daemon=True,
                                                  name="vidcorpus-serve-catalog-watch")
                    st.watcher.start()
            st.readers += 1
            cursor = st.con.cursor()
        try:
            yield cursor
        finally:
            cursor.close()
            with st.cond:
                st.readers -= 1
                st.idle_since = time.monotonic()
                if st.readers == 0 and st.con is not None and (self.idle_close_s <= 0 or st.job_waiting()):
                    st.close_locked()
                st.cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """No read of this process in flight and the read connection closed, for a write of this process."""
        st = self._state
        with st.cond:
            while st.writing or st.readers:
                st.cond.wait(timeout=0.05)
            st.close_locked()
            st.writing = True
        try:
            yield
        finally:
            with st.cond:
                st.writing = False
                st.cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One short write transaction (labels), with no read of this process in flight."""
        if self.snapshot:
            raise CatalogError("this catalog is a snapshot: labels need the DuckDB file it was exported from")
        with self.exclusive():
            with self._writer.transaction() as con:
                yield con

    def close(self) -> None:
        """Close the file (the server's shutdown), once no request reads it."""
        if self._snapshot_cat is not None:
            self._snapshot_cat.close()
        else:
            release_file(self.path)
