"""Recording a training run: ``train_runs``, ``train_samples`` (which clips trained which step) and
``train_sample_files`` (the per-rank Parquet parts of the run's sample log those rows came from).

``train_samples`` stays exact across resumes: a run's rows are replaced, from the first step its
sample log covers, by the log's rows, so steps a resumed run trained again (or never reached again)
are not kept twice or left behind, and ``clips_wide.trained`` is recomputed for clips that lost rows.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:  # pragma: no cover
    from vidcorpus.catalog.store import Catalog

FILE_SCHEMA = pa.schema([("run_id", pa.string()), ("rank", pa.int32()), ("url", pa.string()),
                         ("first_step", pa.int32()), ("end_step", pa.int32()), ("rows", pa.int64())])


def _sample_rows(run_id: str, samples: pa.Table | list[tuple[int, str]]) -> pa.Table:
    """Distinct (run_id, step, clip_id) rows (a clip twice in one step is one row)."""
    if not isinstance(samples, pa.Table):
        samples = pa.table({"step": pa.array([s for s, _c in samples], pa.int32()),
                            "clip_id": pa.array([c for _s, c in samples], pa.string())})
    table = samples.select(["step", "clip_id"]).group_by(["step", "clip_id"]).aggregate([])
    return table.add_column(0, "run_id", pa.array([run_id] * table.num_rows, pa.string()))


def record_training(cat: "Catalog", run_id: str, stage: str, select_sql: str, steps: int,
                    final_loss: float | None, checkpoint: str, shard_urls: list[str], config_json: str,
                    started_at: dt.datetime, samples: pa.Table | list[tuple[int, str]],
                    files: list[dict] | None = None, replace_from: int | None = None) -> None:
    """One transaction: the run's row, its sample rows and its sample files. ``replace_from``: the
    first step ``samples`` covers; the run's rows from that step on are replaced (None: only added)."""
    from vidcorpus.catalog.store import _now

    rows = _sample_rows(run_id, samples)
    with cat.transaction() as con:
        cat._upsert("train_runs", [{
            "run_id": run_id, "stage": stage, "select_sql": select_sql, "steps": steps, "final_loss": final_loss,
            "checkpoint": checkpoint, "shard_urls": json.dumps(shard_urls), "config_json": config_json,
            "started_at": started_at, "finished_at": _now()}])
        gone: list[str] = []
        if replace_from is not None:
            gone = [r[0] for r in con.execute("SELECT DISTINCT clip_id FROM train_samples WHERE run_id = ? AND step >= ?",
                                              [run_id, replace_from]).fetchall()]
            con.execute("DELETE FROM train_samples WHERE run_id = ? AND step >= ?", [run_id, replace_from])
        cat._upsert("train_samples", rows)
        if gone:  # clips no row of any run names any more are no longer trained on
            con.execute("UPDATE clips_wide SET trained = FALSE WHERE clip_id IN (SELECT unnest(?)) "
                        "AND clip_id NOT IN (SELECT clip_id FROM train_samples)", [gone])
        if files is not None:
            con.execute("DELETE FROM train_sample_files WHERE run_id = ?", [run_id])
            cat._upsert("train_sample_files", pa.Table.from_pylist([{"run_id": run_id, **f} for f in files],
                                                                   schema=FILE_SCHEMA))
