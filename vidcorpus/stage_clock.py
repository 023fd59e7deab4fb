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

import json
import os
import socket

import pyarrow as pa

# A row's stamps travel as one string, a stamp per line (a JSON list of FIELDS): a stage appends
# its stamp with one string concatenation per row, and Arrow moves one string column; the driver
# decodes only the distinct chains of a batch (rows of one batch share theirs).
FIELDS = ("stage", "worker", "start", "end", "rows_in", "rows_out", "setup_s", "gpu", "gpu_busy_s")
# stage; worker: host:pid of the process that ran the batch; start, end: epoch seconds (time.time())
# when the batch reached the stage and when it handed its rows back; rows in and out; setup_s: model
# loading etc. inside this batch (a worker's first), else 0; gpu: the CUDA device the batch ran on
# (host:uuid; None on CPU); gpu_busy_s: seconds of the batch its GPU was busy (NVML; None: unknown)
STAGE_TIME_TYPE = pa.string()

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


def encode(s: dict) -> str:
    return json.dumps([s[f] for f in FIELDS], separators=(",", ":"))


def decode(chain: str | None) -> list[dict]:
    """The stamps of a ``stage_times`` string, in order."""
    return [dict(zip(FIELDS, json.loads(line))) for line in (chain or "").split("\n") if line]


def is_time_carrier(row: dict) -> bool:
    """A row that only carries stamps of batches that left no row (no source, clip or error)."""
    return (bool(row.get("stage_times")) and row.get("source_id") is None and row.get("clip_id") is None
            and not row.get("error_class"))


def take_carried(rows: list[dict]) -> list[str]:
    """The stamps of the carrier rows among ``rows`` (which ``events.split`` drops), encoded."""
    return [r["stage_times"] for r in rows if is_time_carrier(r)]


def stamp_rows(rows: list[dict], this: dict, carried: list[str], before: dict | None = None) -> list[dict]:
    """``rows`` with ``this`` batch's stamp appended to each (after ``before``, a caller's stamp of
    work on the batch ahead of the stage's call); the stamps that came on carrier rows (and the new
    ones too when the batch left no row) go on on one carrier row of their own, so that every row's
    own stamps stay the chain of batches it went through."""
    line = encode(this) if before is None else f"{encode(before)}\n{encode(this)}"
    for r in rows:
        r["stage_times"] = f"{r['stage_times']}\n{line}" if r.get("stage_times") else line
    orphans = carried + ([] if rows else [line])
    if orphans:
        rows = rows + [{"stage_times": "\n".join(orphans)}]
    return rows
