"""Loads the grid's columns of a large catalog in the background, one short read at a time.

At 10 M clips reading the grid's base columns takes ~8 to 11 s and a score column with its sort ~2 to 3 s
(docs/benchmarks.md), against ~0.15 s for the same page's top-N in DuckDB. So above
``SYNC_MAX_CLIPS`` a page whose columns are not loaded yet is answered by DuckDB, and this one
thread loads them meanwhile; the next pages of that query come from memory. Each load is its own
read (``CatalogAccess.read``), skipped when the catalog has changed since it was asked for, so a
waiting job is let in between loads as between requests.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Hashable

import duckdb

SYNC_MAX_CLIPS = 2_000_000
"""Up to this many clips the grid's columns are read inside the request that first needs them."""


class Warmer:
    """One daemon thread running queued loads, each under a read of the catalog's current state."""

    def __init__(self, access):
        self.access = access
        self._queue: queue.Queue = queue.Queue()
        self._pending: set[Hashable] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def stop(self) -> None:
        """No more loads (the server's shutdown: its last read must end for the file to close)."""
        self._stopped.set()

    def want(self, stamp: Hashable, key: Hashable, load: Callable[[duckdb.DuckDBPyConnection], object]) -> None:
        """Run ``load`` soon, once per ``key``, if the catalog is still at ``stamp`` then."""
        with self._lock:
            if key in self._pending:
                return
            self._pending.add(key)
            self._queue.put((stamp, key, load))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name="vidcorpus-serve-warmer")
                self._thread.start()

    def _run(self) -> None:
        while True:
            stamp, key, load = self._queue.get()
            if self._stopped.is_set():
                return
            try:
                with self.access.read() as con:
                    if self.access.stamp == stamp:
                        load(con)
            except Exception:  # noqa: BLE001 - a failed load leaves the page to DuckDB, as before
                pass
            finally:
                with self._lock:
                    self._pending.discard(key)
