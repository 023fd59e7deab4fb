"""The pipeline driver's batch writes: a window of stage rows, or the fragments Ray workers wrote.

Each is one transaction, so a killed driver leaves either the whole batch or none of it; the
unpacking of rows into tables is ``catalog/result_rows.py``, the upserts ``Catalog._upsert``.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Iterable

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from vidcorpus import events as stage_events
from vidcorpus.catalog import wide_table
from vidcorpus.catalog.result_rows import table_rows
from vidcorpus.catalog.timestamps import utc_now

if TYPE_CHECKING:
    from vidcorpus.catalog.store import Catalog

FRAGMENT_ORDER = ["runs", "sources", "clips", "scores", "captions", "decisions", "shards", "shard_members", "failures"]
"""Parents before children, so clips_wide finds a clip's source and a score's clip."""


def commit_fragments(cat: "Catalog", run_id: str, fragments: dict[str, pa.Table | str | list]) -> dict[str, int]:
    """Upsert whole Arrow tables or Parquet files (what Ray workers hand back) in one transaction.

    ``fragments`` maps a long table (sources, clips, scores, captions, decisions, shards,
    shard_members, failures...) to an Arrow table or a Parquet path/URL (or a list of them).
    Rows without a run_id get this run's; clips_wide is kept current as for any write.
    """
    order = FRAGMENT_ORDER
    tables = sorted(fragments, key=lambda t: order.index(t) if t in order else len(order))
    counts: dict[str, int] = {}
    with cat.transaction() as con:
        for table in tables:
            has_run = "run_id" in wide_table.columns(con, table)
            parts = fragments[table]
            parts = parts if isinstance(parts, list) else [parts]
            counts[table] = 0
            for part in parts:
                if not isinstance(part, pa.Table):
                    with fsspec.open(str(part), "rb") as f:
                        part = pq.read_table(f)
                if has_run and "run_id" not in part.column_names:
                    part = part.append_column("run_id", pa.array([run_id] * part.num_rows, pa.string()))
                counts[table] += cat._upsert(table, part)
    return counts


def commit_results(cat: "Catalog", run_id: str, rows: Iterable[dict], failed_before: Iterable[str] = (),
                   events: list[dict] | None = None) -> dict[str, int]:
    """Write one batch of pipeline rows (sources, clips, scores, captions, decisions, failures) and
    the warnings the stages raised on it (``events``, plus any still carried by the rows).

    All in one transaction. A source stays 'failed' once any of its rows failed in this run
    (``failed_before`` carries that across batches), so a rerun retries exactly the failed
    sources; failure rows of earlier runs are replaced by this run's.
    """
    now = utc_now()
    rows = list(rows)
    raised = stage_events.merge(list(events or []), stage_events.take(rows))
    batch = table_rows(run_id, rows, failed_before, now)
    counts: dict[str, int] = {}
    with cat.transaction() as con:
        # attempts count up across reruns of the same failing source or item
        for f in batch.failures:
            prev = con.execute(
                "SELECT max(attempts) FROM failures WHERE (item_id = ? AND stage = ?) OR source_id = ?",
                [f["item_id"], f["stage"], f["source_id"]]).fetchall()[0][0]
            f["attempts"] = (prev or 0) + 1
        if batch.failed_sources:
            con.execute("DELETE FROM failures WHERE source_id IN (SELECT unnest(?)) AND run_id <> ?",
                        [sorted(batch.failed_sources), run_id])
        counts["sources"] = cat._upsert("sources", list(batch.sources.values()))
        for table in ("clips", "scores", "captions", "decisions", "failures"):
            counts[table] = cat._upsert(table, getattr(batch, table))
        counts["events"] = count_events(con, run_id, raised, now)
        if batch.resplit:  # a source split again replaces its earlier runs' segments
            con.execute("DELETE FROM dropped_segments WHERE source_id IN (SELECT unnest(?)) AND run_id <> ?",
                        [batch.resplit, run_id])
        if batch.dropped:
            counts["dropped_segments"] = cat._upsert("dropped_segments", list(batch.dropped.values()))
    return counts


def count_events(con, run_id: str, raised: list[dict], now: dt.datetime) -> int:
    """Count a batch's warnings into the run's events rows (one row per stage, kind and message)."""
    for e in raised:
        con.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, stage, kind, message) "
            "DO UPDATE SET count = events.count + excluded.count, last_at = excluded.last_at",
            [run_id, e["stage"], e["kind"], e["message"], int(e["count"]), now, now])
    return len(raised)
