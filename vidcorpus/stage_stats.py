"""Where the time goes, driver side: each stage's busy and waiting seconds over a run's wall time.

The driver feeds every committed batch to ``StageStats.add`` (the rows' ``stage_times`` stamps,
``vidcorpus/stage_clock.py``; a batch's stamp rides on each of its rows, so stamps are counted once
by (stage, worker, start, end)), plus the driver's own steps (``commit``: writing a batch to the
catalog; ``shards``: writing the run's shards). ``finish`` splits the run's wall time, per stage, into
- **busy**: the union of its batches' intervals (some worker of the stage was processing);
- **waiting for output**: idle while its input was queued: some row had left the stage before it
  (or, for the first stage, the run had started) and had not reached this one. The stage could
  have worked and was held back: Ray Data's backpressure on its output, no free CPU/GPU slot, or
  its workers still starting (a model stage's actors);
- **waiting for input**: the rest: idle with nothing to do (the stages before it are the bound).
The three add up to the wall time by construction. The stage busy for the largest share of the
wall time bounds the job. The driver's start-up (preflight, models, Ray) is the step ``start``.
Stamps on carrier rows (batches that left no row) count towards busy time and rows, not towards
queues (their chains end). Busy is "some worker busy": ``work_s`` sums the batches over workers.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from rich import box
from rich.table import Table

from vidcorpus.stage_clock import decode, stamp

Interval = tuple[float, float]
COMPACT_AT = 20_000  # queued intervals kept per stage before they are merged into their union
DRAW_POINTS = 2_000  # intervals drawn per stage and state at most (gaps shorter than wall/2000 merge)


def union(intervals) -> list[Interval]:
    """The sorted, disjoint union of [start, end] intervals (touching ones merge)."""
    out: list[list[float]] = []
    for a, b in sorted(i for i in intervals if i[1] > i[0]):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def clip(intervals: list[Interval], lo: float, hi: float) -> list[Interval]:
    return [(max(a, lo), min(b, hi)) for a, b in intervals if min(b, hi) > max(a, lo)]


def total(intervals: list[Interval]) -> float:
    return sum(b - a for a, b in intervals)


def subtract(a: list[Interval], b: list[Interval]) -> list[Interval]:
    """a minus b, both sorted and disjoint (``union``'s output)."""
    out: list[Interval] = []
    j = 0
    for start, end in a:
        cur = start
        while j < len(b) and b[j][1] <= cur:
            j += 1
        k = j
        while k < len(b) and b[k][0] < end:
            if b[k][0] > cur:
                out.append((cur, b[k][0]))
            cur = max(cur, b[k][1])
            k += 1
        if cur < end:
            out.append((cur, end))
    return out


def coalesce(intervals: list[Interval], gap: float) -> list[Interval]:
    """Disjoint intervals with gaps shorter than ``gap`` closed (for drawing, not for the numbers)."""
    out: list[list[float]] = []
    for a, b in intervals:
        if out and a - out[-1][1] < gap:
            out[-1][1] = b
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


@dataclass
class StageRow:
    """One stage's line of the table (seconds over the run's wall time)."""

    stage: str
    step: int
    rows_in: int = 0
    rows_out: int = 0
    batches: int = 0
    workers: int = 0
    wall_s: float = 0.0
    busy_s: float = 0.0
    wait_input_s: float = 0.0
    wait_output_s: float = 0.0
    work_s: float = 0.0  # batch seconds summed over workers (> busy_s when workers ran side by side)
    setup_s: float = 0.0
    gpu_busy_share: float | None = None  # GPU-busy seconds / (wall time x GPUs the stage used); None on CPU
    busy: list[Interval] = field(default_factory=list, repr=False)  # offsets from the run's start
    held: list[Interval] = field(default_factory=list, repr=False)  # waiting for output

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("busy", "held")}


class StageStats:
    """Accumulates stamps as batches are committed; ``finish`` gives the per-stage rows."""

    def __init__(self, start: float | None = None):
        self.start = time.time() if start is None else start
        self.inputs_at = self.start  # since when the first stage's input is queued (pipeline_started)
        self.order: list[str] = []  # stages in pipeline order, as the rows' chains show them
        self._seen: set[tuple] = set()
        self._busy: dict[str, list[Interval]] = defaultdict(list)
        self._queued: dict[str, set[Interval]] = defaultdict(set)
        self._queued_union: dict[str, list[Interval]] = defaultdict(list)
        self._sums: dict[str, dict] = defaultdict(lambda: defaultdict(float))
        self._workers: dict[str, set[str]] = defaultdict(set)
        self._gpus: dict[str, set[str]] = defaultdict(set)

    def _stage(self, name: str) -> None:
        if name not in self.order:
            self.order.append(name)

    def _stamp(self, s: dict) -> None:
        key = (s["stage"], s["worker"], s["start"], s["end"])
        if key in self._seen:
            return
        self._seen.add(key)
        name = s["stage"]
        self._stage(name)
        self._busy[name].append((s["start"], s["end"]))
        sums = self._sums[name]
        sums["rows_in"] += s.get("rows_in") or 0
        sums["rows_out"] += s.get("rows_out") or 0
        sums["batches"] += 1
        sums["work_s"] += s["end"] - s["start"]
        sums["setup_s"] += s.get("setup_s") or 0.0
        self._workers[name].add(s["worker"])
        if s.get("gpu"):
            self._gpus[name].add(s["gpu"])
            if s.get("gpu_busy_s") is not None:
                sums["gpu_busy_s"] += s["gpu_busy_s"]
                sums["gpu_measured"] += 1

    def _queue(self, name: str, since: float, until: float) -> None:
        if until > since:
            q = self._queued[name]
            q.add((since, until))
            if len(q) > COMPACT_AT:
                self._queued_union[name] = union([*self._queued_union[name], *q])
                q.clear()

    def _place(self, names: list[str]) -> None:
        """Stages new to the table go where this chain puts them: before the first stage after them
        that is already placed (a caption actor's ``caption_read`` first shows after the actor's set-up
        batch placed ``caption``)."""
        for i, name in enumerate(names):
            if name in self.order:
                continue
            later = next((n for n in names[i + 1:] if n in self.order), None)
            self.order.insert(self.order.index(later) if later else len(self.order), name)

    def add_chain(self, stamps: list[dict], carrier: bool = False) -> None:
        """One row's stamps, in the order of the stages it went through."""
        self._place([s["stage"] for s in stamps])
        prev_end = self.inputs_at
        for s in stamps:
            self._stamp(s)
            if not carrier:
                self._queue(s["stage"], prev_end, s["start"])
                prev_end = s["end"]

    def add(self, batch, commit: Interval | None = None) -> None:
        """A result batch (Arrow table, or row dicts) the driver committed over ``commit`` (start, end).
        Rows of one stage batch share their chain: each distinct chain is decoded once."""
        groups = _distinct_chains(batch) if hasattr(batch, "select") else _distinct_row_chains(batch)
        n_real = sum(n for carrier, _chain, n in groups if not carrier)
        done = stamp("commit", commit[0], commit[1], n_real, n_real, worker="driver") if commit else None
        for carrier, chain, _n in groups:
            stamps = decode(chain) if isinstance(chain, str) or chain is None else list(chain)
            self.add_chain(stamps + ([done] if done and not carrier else []), carrier)
        if done and not n_real:
            self._stamp(done)

    def pipeline_started(self, inputs: int = 0) -> None:
        """The driver hands the inputs to the pipeline now: the run's start-up (preflight, recipe,
        reading inputs, starting Ray) becomes the driver step ``start``, and the first stage's input
        counts as queued from now on (not from the run's start)."""
        now = time.time()
        self.driver_step("start", self.start, now, inputs)
        self.inputs_at = now

    def driver_step(self, name: str, start: float, end: float, rows: int = 0, setup_s: float = 0.0,
                    gpu: str | None = None, gpu_busy_s: float | None = None) -> None:
        """A step the driver ran itself (e.g. writing shards): busy from start to end."""
        self._stamp(stamp(name, start, end, rows, rows, setup_s, gpu, gpu_busy_s, worker="driver"))

    def finish(self, end: float | None = None) -> list[StageRow]:
        """Each stage's row over [start, end] (end: now)."""
        end = time.time() if end is None else end
        wall = max(0.0, end - self.start)
        gap = wall / DRAW_POINTS if wall else 0.0
        out = []
        # the driver's start-up first, then the pipeline's stages, then the driver's steps (commit, shards)
        order = sorted(self.order, key=lambda n: (0 if n == "start" else 1 + (self._workers[n] == {"driver"}),
                                                  self.order.index(n)))
        for step, name in enumerate(order, 1):
            busy = clip(union(self._busy[name]), self.start, end)
            queued = clip(union([*self._queued_union[name], *self._queued[name]]), self.start, end)
            held = subtract(queued, busy)
            sums = self._sums[name]
            n_gpus = len(self._gpus[name])
            share = (sums["gpu_busy_s"] / (wall * n_gpus)
                     if n_gpus and sums["gpu_measured"] and wall > 0 else None)
            row = StageRow(
                name, step, int(sums["rows_in"]), int(sums["rows_out"]), int(sums["batches"]),
                len(self._workers[name]), wall, total(busy), 0.0, total(held), sums["work_s"], sums["setup_s"],
                share,
                busy=[(a - self.start, b - self.start) for a, b in coalesce(busy, gap)],
                held=[(a - self.start, b - self.start) for a, b in coalesce(held, gap)])
            row.wait_input_s = max(0.0, wall - row.busy_s - row.wait_output_s)
            out.append(row)
        return out


def _is_carrier(row: dict) -> bool:
    return not (row.get("source_id") or row.get("clip_id") or row.get("error_class"))


def _distinct_row_chains(rows: list[dict]) -> list[tuple[bool, object, int]]:
    """(carrier, stamps, rows) per distinct chain of row dicts (stamps: a string, or stamp dicts)."""
    out: dict[tuple, list] = {}
    for r in rows:
        chain = r.get("stage_times")
        key = (_is_carrier(r), chain if isinstance(chain, str) or chain is None else repr(chain))
        out.setdefault(key, [key[0], chain, 0])[2] += 1
    return [tuple(v) for v in out.values()]


def _distinct_chains(table) -> list[tuple[bool, str | None, int]]:
    """(carrier, stamps, rows) per distinct chain of an Arrow batch, computed in Arrow: the rows of
    one stage batch share their stamps, so the driver decodes a handful of strings per batch."""
    n = table.num_rows
    nulls = [pc.is_null(table[c]) for c in ("source_id", "clip_id") if c in table.column_names]
    if "error_class" in table.column_names:  # an error class of "" counts as none, as in row dicts
        nulls.append(pc.fill_null(pc.equal(pc.utf8_length(table["error_class"].cast(pa.string())), 0), True))
    carrier = functools.reduce(pc.and_, nulls) if nulls else pa.array([False] * n)
    chains = (table["stage_times"].cast(pa.string()) if "stage_times" in table.column_names
              else pa.nulls(n, pa.string()))
    grouped = pa.table({"carrier": carrier, "chain": chains}).group_by(
        ["carrier", "chain"], use_threads=False).aggregate([([], "count_all")])
    return [(r["carrier"], r["chain"], r["count_all"]) for r in grouped.to_pylist()]


def bound_by(rows: list[StageRow]) -> str:
    """The sentence that names the stage bounding the job: the one busy for the largest share of it."""
    if not rows or rows[0].wall_s <= 0:
        return "bound by: nothing measured"
    top = max(rows, key=lambda r: r.busy_s)
    share = top.busy_s / top.wall_s
    text = f"bound by: {top.stage} (busy {share:.0%} of the {top.wall_s:.1f} s wall time"
    if top.setup_s >= 0.2 * top.busy_s and top.setup_s > 0:
        text += f", {top.setup_s:.1f} s of it setting up"
    text += ")"
    if share < 0.5:
        text += "; no stage is busy half the time: start-up, the driver or scheduling take the rest"
    return text


def print_table(rows: list[StageRow], console, title: str = "where the time goes") -> None:
    """The per-stage table (rich) and the bound-by sentence."""
    if not any(r.rows_in for r in rows):  # nothing went through (a rerun with everything done)
        return
    table = Table(title=f"{title}: seconds of its {rows[0].wall_s:.1f} s", box=box.SIMPLE_HEAD)
    table.add_column("stage", no_wrap=True, min_width=max(len(r.stage) for r in rows))
    for col in ("rows in", "out", "workers", "busy", "wait in", "wait out", "setup", "GPU busy"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r.stage, str(r.rows_in), str(r.rows_out), str(r.workers), f"{r.busy_s:.1f}",
                      f"{r.wait_input_s:.1f}", f"{r.wait_output_s:.1f}", f"{r.setup_s:.1f}",
                      "" if r.gpu_busy_share is None else f"{r.gpu_busy_share:.0%}")
    console.print(table)
    console.print(bound_by(rows))
