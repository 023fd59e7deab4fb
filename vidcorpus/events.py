"""Warnings raised inside stages, carried to the driver with the rows.

A stage runs in a Ray worker whose output the driver does not show (``log_to_driver=False``), so a
``warnings.warn`` there (a fast path switching itself off, caption QA failing, a decoder falling
back) would be lost. ``Stage.__call__`` records the warnings of each batch (``captured``) and puts
them, counted, on the batch's first row (``events_json``); the driver logs each new one and adds
them to the run's ``events`` table (stage, kind, message, count) in the same transaction as the rows.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections import Counter
from typing import Iterator

MAX_MESSAGE = 500  # characters kept of a warning's message (the key of its row)

Event = dict  # {"stage": str, "kind": str, "message": str, "count": int}
SETUP = "setup"  # the kind of the event a model actor adds when it loads its models (not a warning)


def setup_event(stage: str) -> Event:
    """One model actor set up: the run's events count these, so a user sees how often models loaded."""
    return {"stage": stage, "kind": SETUP, "message": "model actor set up", "count": 1}


@contextlib.contextmanager
def captured(stage: str) -> Iterator[list[Event]]:
    """Record every warning raised inside the block; on exit the list holds them, counted."""
    out: list[Event] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield out
    counts = Counter((w.category.__name__, str(w.message)[:MAX_MESSAGE]) for w in caught)
    out.extend({"stage": stage, "kind": kind, "message": msg, "count": n} for (kind, msg), n in counts.items())


def merge(*groups: list[Event]) -> list[Event]:
    """Events of several batches or stages, counts added for the same (stage, kind, message)."""
    counts: Counter = Counter()
    for group in groups:
        for e in group:
            counts[(e["stage"], e["kind"], e["message"])] += int(e.get("count", 1))
    return [{"stage": s, "kind": k, "message": m, "count": n} for (s, k, m), n in counts.items()]


def take(rows: list[dict]) -> list[Event]:
    """The events carried by ``rows`` (removed from them, so a stage that copies a row into many
    does not copy its events)."""
    found: list[Event] = []
    for r in rows:
        if r.get("events_json"):
            found.extend(json.loads(r["events_json"]))
            r["events_json"] = None
    return found


def attach(rows: list[dict], events: list[Event]) -> list[dict]:
    """``rows`` with ``events`` on the first of them; when a stage left no row at all (a source whose
    every shot was trimmed away), a carrier row of the events alone, which stages pass through and
    the driver's commit reads for its events only."""
    if events:
        if not rows:
            rows = [{"events_json": None}]
        rows[0]["events_json"] = json.dumps(merge(events), sort_keys=True)
    return rows


def is_carrier(row: dict) -> bool:
    """A row that only carries events (``attach`` made it) or stage timings (``stage_clock``): no
    source, no clip, no error."""
    return ((bool(row.get("events_json")) or bool(row.get("stage_times"))) and row.get("source_id") is None and row.get("clip_id") is None
            and not row.get("error_class"))


def split(rows: list[dict]) -> tuple[list[dict], list[Event]]:
    """(the rows without carrier rows, every event the rows carried, now taken off them)."""
    kept = [r for r in rows if not is_carrier(r)]
    return kept, take(rows)


def log_new(raised: list[Event], seen: set[tuple], log) -> None:
    """Log each event not logged before (``seen`` holds the keys already said in this run)."""
    for e in raised:
        if e["kind"] == SETUP:  # bookkeeping, not a warning
            continue
        if (key := (e["stage"], e["kind"], e["message"])) not in seen:
            seen.add(key)
            log(f"warning from {describe(e)}")


def describe(e: Event) -> str:
    times = f" ({e['count']} times)" if e.get("count", 1) > 1 else ""
    return f"{e['stage']}: {e['kind']}: {e['message']}{times}"
