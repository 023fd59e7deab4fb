"""Answers computed once per catalog state: what a grid query's order is, the filter bar's choices,
the score columns, the recipe in force.

Every entry is keyed by the catalog's stamp (``CatalogAccess.stamp``: the file and its log as of
the open read), so an entry can only be served while the catalog is exactly as it was when it was
computed: a job's commit or a label changes the stamp and empties the cache. Concurrent requests
for the same missing entry compute it once (the others wait for it): fifty clients asking for the
same sorted grid do not run fifty sorts of a million rows.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable


class StampedCache:
    """A bounded LRU of values valid for one catalog stamp; counts hits and misses."""

    def __init__(self, max_entries: int = 256):
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._stamp: Hashable = None
        self._values: OrderedDict[Hashable, Any] = OrderedDict()
        self._pending: dict[Hashable, threading.Event] = {}
        self.hits = 0
        self.misses = 0

    def _reset_if_changed(self, stamp: Hashable) -> None:
        if stamp != self._stamp:
            self._stamp = stamp
            self._values.clear()

    def peek(self, stamp: Hashable, key: Hashable) -> Any | None:
        """The value kept for ``key`` under ``stamp``, or None (counted as a hit when found)."""
        with self._lock:
            self._reset_if_changed(stamp)
            if key not in self._values:
                return None
            self._values.move_to_end(key)
            self.hits += 1
            return self._values[key]

    def put(self, stamp: Hashable, key: Hashable, value: Any) -> None:
        """Keep ``value`` for ``key``, unless the catalog has moved on from ``stamp`` meanwhile."""
        with self._lock:
            if stamp == self._stamp:
                self._values[key] = value
                while len(self._values) > self.max_entries:
                    self._values.popitem(last=False)

    def get(self, stamp: Hashable, key: Hashable, compute: Callable[[], Any]) -> tuple[Any, bool]:
        """(value, was it cached) for ``key`` under ``stamp``; ``compute`` runs at most once at a time per key."""
        while True:
            with self._lock:
                self._reset_if_changed(stamp)
                if key in self._values:
                    self._values.move_to_end(key)
                    self.hits += 1
                    return self._values[key], True
                waiting = self._pending.get((stamp, key))
                if waiting is None:
                    mine = self._pending[(stamp, key)] = threading.Event()
                    self.misses += 1
                    break
            waiting.wait(timeout=60)  # another request is computing it; then look again
        try:
            value = compute()
            with self._lock:
                if stamp == self._stamp:
                    self._values[key] = value
                    while len(self._values) > self.max_entries:
                        self._values.popitem(last=False)
            return value, False
        finally:
            with self._lock:
                self._pending.pop((stamp, key), None)
            mine.set()
