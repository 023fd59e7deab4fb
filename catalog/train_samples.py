"""Recording a training run: ``train_runs``, ``train_samples`` (which clips trained which step) and
``train_sample_files`` (the per-rank Parquet parts of the run's sample log those rows came from).

``train_samples`` stays exact across resumes: a run's rows are replaced, from the first step its
sample log covers, by the log's rows, so steps a resumed run trained again (or never reached again)
are not kept twice or left behind, and ``clips_wide.trained`` is recomputed for clips that lost rows.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from typing import TYPE_CHECKING, Iterator

import fsspec
import pyarrow as pa

from vidcorpus.catalog.timestamps import utc_now
from vidcorpus.storage import is_local_fs, is_url, local_path

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


@contextlib.contextmanager
def parquet_paths(con, urls: list[str]) -> Iterator[list[str]]:
    """``urls`` as ``read_parquet`` on ``con`` can open them: local files by path; files of any other
    store (s3://) through its fsspec file system, registered on ``con`` for the block (DuckDB's own
    httpfs would need the network to install)."""
    added: list[str] = []
    try:
        for url in urls:
            fs = fsspec.core.url_to_fs(url)[0]
            if not is_local_fs(fs):
                protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
                if not set(protocols) & set(con.list_filesystems()):
                    before = set(con.list_filesystems())
                    con.register_filesystem(fs)
                    added += sorted(set(con.list_filesystems()) - before)
        yield [url if is_url(url) else local_path(url) for url in urls]
    finally:
        for name in added:
            con.unregister_filesystem(name)


def _insert_from_files(con, run_id: str, urls: list[str], first_step: int) -> None:
    """The run's (step, clip_id) rows, read by DuckDB straight from the sample log's Parquet parts
    (the caller holds none of them), and clips_wide.trained for their clips. The run's rows from
    ``first_step`` on were just deleted, so none of these can exist yet."""
    with parquet_paths(con, urls) as paths:
        con.execute("INSERT INTO train_samples BY NAME SELECT DISTINCT ? AS run_id, step, clip_id "
                    "FROM read_parquet(?)", [run_id, paths])
    con.execute("UPDATE clips_wide SET trained = TRUE WHERE clip_id IN (SELECT clip_id FROM train_samples "
                "WHERE run_id = ? AND step >= ?) AND trained IS DISTINCT FROM TRUE", [run_id, first_step])


def record_training(cat: "Catalog", run_id: str, stage: str, select_sql: str, steps: int,
                    final_loss: float | None, checkpoint: str, shard_urls: list[str], config_json: str,
                    started_at: dt.datetime, samples: pa.Table | list[tuple[int, str]] | None,
                    files: list[dict] | None = None, replace_from: int | None = None) -> None:
    """One transaction: the run's row, its sample rows and its sample files. ``replace_from``: the
    first step ``samples`` covers; the run's rows from that step on are replaced (None: only added).
    ``samples`` None: the rows are those of ``files`` (the run's sample-log parts), which DuckDB
    reads itself, so memory does not grow with the run's length; they replace the run's rows from
    the parts' first step (or ``replace_from``, if earlier)."""
    from_files = samples is None
    if from_files and (firsts := [f["first_step"] for f in files or []]):
        replace_from = min(firsts) if replace_from is None else min(replace_from, *firsts)
    with cat.transaction() as con:
        cat._upsert("train_runs", [{
            "run_id": run_id, "stage": stage, "select_sql": select_sql, "steps": steps, "final_loss": final_loss,
            "checkpoint": checkpoint, "shard_urls": json.dumps(shard_urls), "config_json": config_json,
            "started_at": started_at, "finished_at": utc_now()}])
        if replace_from is not None:  # the clips of the replaced rows, kept in DuckDB (not in Python)
            con.execute("CREATE OR REPLACE TEMP TABLE _replaced AS SELECT DISTINCT clip_id FROM train_samples "
                        "WHERE run_id = ? AND step >= ?", [run_id, replace_from])
            con.execute("DELETE FROM train_samples WHERE run_id = ? AND step >= ?", [run_id, replace_from])
        if from_files:
            if files:
                _insert_from_files(con, run_id, [f["url"] for f in files], replace_from)
        else:
            cat._upsert("train_samples", _sample_rows(run_id, samples))
        if replace_from is not None:  # clips no row of any run names any more are no longer trained on
            con.execute("UPDATE clips_wide SET trained = FALSE WHERE clip_id IN (SELECT clip_id FROM _replaced) "
                        "AND clip_id NOT IN (SELECT clip_id FROM train_samples)")
            con.execute("DROP TABLE _replaced")
        if files is not None:
            con.execute("DELETE FROM train_sample_files WHERE run_id = ?", [run_id])
            cat._upsert("train_sample_files", pa.Table.from_pylist([{"run_id": run_id, **f} for f in files],
                                                                   schema=FILE_SCHEMA))
