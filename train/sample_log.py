"""Which clips trained which step: per-rank Parquet parts beside the checkpoints, not inside them.

A checkpoint holds the data cursor, never the history, so its size does not grow with the step
count. The history (the rows ``train_samples`` is filled from) streams to::

    {run}/train_samples/rank-00000/steps-00000000-00000010.parquet   rows of steps [0, 10)

with columns ``step`` (int32), ``rank`` (int16), ``clip_id`` (string) and ``loss`` (float64, the
step's loss averaged over micro-batches and ranks, repeated on each of the step's rows). Each rank
buffers its rows and writes one part at every checkpoint, *before* the checkpoint itself, so a
checkpoint at step S always finds the rows of steps [0, S) on disk. A run killed between a part and
its checkpoint leaves a part that ends past its newest checkpoint: resuming from step S deletes
every part ending past S, so no step's rows are ever kept twice. A resume from another run
directory's checkpoint first copies that run's parts up to S, so every run directory holds its
whole history.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vidcorpus.storage import join_url, write_atomic

SAMPLES_DIR = "train_samples"
SCHEMA = pa.schema([("step", pa.int32()), ("rank", pa.int16()), ("clip_id", pa.string()), ("loss", pa.float64())])
_PART_RE = re.compile(r"^steps-(\d+)-(\d+)\.parquet$")
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Part:
    """One flushed part: rows of steps [start, end) of one rank."""

    rank: int
    start: int
    end: int
    url: str


def rank_dir(run_dir: str, rank: int) -> str:
    return join_url(run_dir, SAMPLES_DIR, f"rank-{rank:05d}")


def list_parts(run_dir: str, rank: int | None = None) -> list[Part]:
    """The parts of a run (of one rank, or of all), ordered by rank then step."""
    root = join_url(run_dir, SAMPLES_DIR)
    fs, path = fsspec.core.url_to_fs(root)
    if not fs.exists(path):
        return []
    out: list[Part] = []
    for rdir in fs.ls(path, detail=False):
        rname = rdir.rstrip("/").rsplit("/", 1)[-1]
        if not rname.startswith("rank-") or (rank is not None and rname != f"rank-{rank:05d}"):
            continue
        for entry in fs.ls(rdir, detail=False):
            base = entry.rstrip("/").rsplit("/", 1)[-1]
            m = _PART_RE.match(base)
            if m:
                out.append(Part(int(rname[5:]), int(m.group(1)), int(m.group(2)), join_url(root, rname, base)))
    return sorted(out, key=lambda p: (p.rank, p.start, p.end))


def read_samples(run_dir: str, through_step: int | None = None) -> pa.Table:
    """Every rank's rows of a run (steps below ``through_step`` when given), ordered by step, then
    rank, then the order the rank trained them in."""
    tables = []
    for part in list_parts(run_dir):
        if through_step is not None and part.end > through_step:
            continue
        with fsspec.open(part.url, "rb") as f:
            tables.append(pq.read_table(f, schema=SCHEMA))
    if not tables:
        return SCHEMA.empty_table()
    table = pa.concat_tables(tables)
    table = table.append_column("_i", pa.array(range(table.num_rows), pa.int64()))
    return table.sort_by([("step", "ascending"), ("rank", "ascending"), ("_i", "ascending")]).drop_columns(["_i"])


def losses_of(table: pa.Table) -> list[float]:
    """One loss per step, in step order (the rows of a step all carry the step's loss)."""
    if table.num_rows == 0:
        return []
    first = pc.not_equal(table["step"].slice(1), table["step"].slice(0, table.num_rows - 1))
    keep = pa.concat_arrays([pa.array([True]), first.combine_chunks()])
    return table.filter(keep)["loss"].to_pylist()


def _run_dir_of(ckpt: str) -> str:
    parts = ckpt.rstrip("/").rsplit("/", 2)
    return parts[0] if len(parts) == 3 and parts[1] == "checkpoints" else ""


class SampleLog:
    """One rank's writer: ``add`` each trained step's clip ids, ``flush`` at each checkpoint."""

    def __init__(self, run_dir: str, rank: int):
        self.run_dir, self.rank = run_dir, rank
        self.flushed = 0  # rows of steps below this are on disk
        self.rows_flushed = 0  # how many (recorded in the checkpoint, to check a resume's history)
        self._steps: list[int] = []
        self._keys: list[str] = []
        self._losses: list[float] = []

    def add(self, step: int, keys: list[str], loss: float) -> None:
        self._steps.extend([step] * len(keys))
        self._keys.extend(keys)
        self._losses.extend([loss] * len(keys))

    def flush(self, end_step: int) -> None:
        """Write the buffered rows as the part [flushed, end_step) (nothing when none is buffered)."""
        if self._keys:
            table = pa.table({"step": pa.array(self._steps, pa.int32()),
                              "rank": pa.array([self.rank] * len(self._keys), pa.int16()),
                              "clip_id": pa.array(self._keys, pa.string()),
                              "loss": pa.array(self._losses, pa.float64())}, schema=SCHEMA)
            _write_atomic(table, join_url(rank_dir(self.run_dir, self.rank),
                                          f"steps-{self.flushed:08d}-{end_step:08d}.parquet"))
            self.rows_flushed += table.num_rows
        self._steps, self._keys, self._losses = [], [], []
        self.flushed = end_step

    def resume(self, ckpt: str, step: int, rows: int | None) -> None:
        """Continue after checkpoint ``ckpt`` at ``step``: parts ending past it are dropped (rows of a
        run that died after a flush, or of steps a resume from an older checkpoint trains again);
        a checkpoint of another run directory brings its parts up to ``step`` along."""
        source = _run_dir_of(ckpt)
        mine = list_parts(self.run_dir, self.rank)
        fs = fsspec.core.url_to_fs(rank_dir(self.run_dir, self.rank))[0]
        for part in mine:
            if part.end > step:
                fs.rm(fsspec.core.url_to_fs(part.url)[1])
        if source and source.rstrip("/") != self.run_dir.rstrip("/") and not any(p.end <= step for p in mine):
            for part in list_parts(source, self.rank):
                if part.end <= step:
                    with fsspec.open(part.url, "rb") as f:
                        _write_atomic(pq.read_table(f, schema=SCHEMA), join_url(rank_dir(self.run_dir, self.rank),
                                                                               part.url.rsplit("/", 1)[-1]))
        kept = [p for p in list_parts(self.run_dir, self.rank) if p.end <= step]
        self.rows_flushed = sum(_num_rows(p.url) for p in kept)
        self.flushed = step
        if rows is not None and rows != self.rows_flushed:
            _log.warning("rank %d: the checkpoint at step %d counts %d trained rows, %s holds %d: the run's "
                         "history before it is incomplete (the catalog keeps what it recorded before)",
                         self.rank, step, rows, rank_dir(self.run_dir, self.rank), self.rows_flushed)


def adopt_legacy_history(log: SampleLog, step: int, step_keys: list, losses: list) -> None:
    """A checkpoint written before the sample log kept every (step, clip id) of all ranks and every
    loss in its ``train_state.json``: they become the part [0, step) of rank 0 (the rank of a row
    was not recorded), unless the run directory already holds rows of those steps."""
    if log.rank != 0 or any(p.end <= step for p in list_parts(log.run_dir)):
        return
    for s, key in step_keys:
        if int(s) < step:
            log.add(int(s), [key], float(losses[int(s)]) if int(s) < len(losses) else float("nan"))
    log.flushed = 0
    log.flush(step)


def _num_rows(url: str) -> int:
    with fsspec.open(url, "rb") as f:
        return pq.read_metadata(f).num_rows


def _write_atomic(table: pa.Table, url: str) -> None:
    """The part as one Parquet file, whole or not at all (vidcorpus/storage.py)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_atomic(url, sink.getvalue().to_pybytes())
