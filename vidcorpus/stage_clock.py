"""Where the time goes, worker side: every batch a stage processes is stamped on its rows.

``Stage.__call__`` times each batch and appends one stamp (stage, worker, start, end, rows in and
out, setup seconds, GPU busy seconds) to the ``stage_times`` of every row it returns. Rows carry
their stamps to the driver (a clip cut from a source inherits the source's), which de-duplicates
them by (stage, worker, start, end) and works out each stage's busy and waiting time
(``vidcorpus/stage_stats.py``). A batch that leaves no row at all still reports its time: its stamp
rides on a carrier row (as ``vidcorpus/events.py`` carries warnings), which every later stage passes
on untouched, so a stage's time is never lost with its rows.
"""

from __future__ import annotations

import os
import socket

import pyarrow as pa

STAGE_TIME_TYPE = pa.struct([
    ("stage", pa.string()),
    ("worker", pa.string()),  # host:pid of the process that ran the batch
    ("start", pa.float64()),  # epoch seconds (time.time()) when the batch reached the stage
    ("end", pa.float64()),  # when the stage handed the batch's rows back
    ("rows_in", pa.int64()),
    ("rows_out", pa.int64()),
    ("setup_s", pa.float64()),  # model loading etc. inside this batch (the worker's first), else 0
    ("gpu", pa.string()),  # the CUDA device the batch ran on (host:uuid); None on CPU
    ("gpu_busy_s", pa.float64()),  # seconds of the batch its GPU was busy (NVML); None when unknown
])

_WORKER: str | None = None


def worker_id() -> str:
    """host:pid of this process (a Ray worker, or the driver)."""
    global _WORKER
    if _WORKER is None or not _WORKER.endswith(f":{os.getpid()}"):
        _WORKER = f"{socket.gethostname()}:{os.getpid()}"
    return _WORKER


def stamp(stage: str, start: float, end: float, rows_in: int, rows_out: int, setup_s: float = 0.0,
          gpu: str | None = None, gpu_busy_s: float | None = None, worker: str | None = None) -> dict:
    return {"stage": stage, "worker": worker or worker_id(), "start": float(start), "end": float(end),
            "rows_in": int(rows_in), "rows_out": int(rows_out), "setup_s": float(setup_s), "gpu": gpu,
            "gpu_busy_s": None if gpu_busy_s is None else float(gpu_busy_s)}


def is_time_carrier(row: dict) -> bool:
    """A row that only carries stamps of batches that left no row (no source, clip or error)."""
    return (bool(row.get("stage_times")) and row.get("source_id") is None and row.get("clip_id") is None
            and not row.get("error_class"))


def take_carried(rows: list[dict]) -> list[dict]:
    """The stamps of the carrier rows among ``rows`` (which ``events.split`` drops)."""
    return [s for r in rows if is_time_carrier(r) for s in r["stage_times"]]


def stamp_rows(rows: list[dict], this: dict, carried: list[dict]) -> list[dict]:
    """``rows`` with ``this`` batch's stamp appended to each; the stamps that came on carrier rows
    (and ``this`` one too when the batch left no row) go on on one carrier row of their own, so that
    every row's own stamps stay the chain of batches it went through."""
    for r in rows:
        r["stage_times"] = [*(r.get("stage_times") or []), this]
    orphans = carried + ([] if rows else [this])
    if orphans:
        rows = rows + [{"stage_times": orphans}]
    return rows
