"""The DuckDB catalog: the system of record. Only the driver writes, in transactions, as upserts.

Readers open the file read-only (``Catalog(path, read_only=True)``); ``vidcorpus sql`` does. A
catalog path may also be a published snapshot (a folder or ``s3://`` prefix with ``manifest.json``,
see ``catalog/snapshot.py``), which opens read-only over its Parquet files.

Concurrency: one process writes the file or several read it; a writer opened with ``hold=False``
(the pipeline driver) holds it only while it commits, and every open waits out other processes'
locks, writers first (``catalog/file_lock.py``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import duckdb
import pyarrow as pa

from vidcorpus.catalog.schema import (
    FUNNEL_BY_RUN_SQL,
    FUNNEL_SQL,
    MIGRATION_HOOKS,
    MIGRATIONS,
)
from vidcorpus.catalog import batch_commit, train_samples, wide_table
from vidcorpus.catalog.catalog_error import CatalogError
from vidcorpus.catalog.curation_records import CurationRecords
from vidcorpus.catalog.file_lock import READ_LOCK_TIMEOUT_S, WRITE_LOCK_TIMEOUT_S, connect
from vidcorpus.catalog.release_records import ReleaseRecords
from vidcorpus.catalog.safe_sql import check_predicate
from vidcorpus.catalog.snapshot import export_snapshot, is_snapshot, open_snapshot
from vidcorpus.catalog.timestamps import utc_now
from vidcorpus.catalog.upsert import upsert
from vidcorpus.catalog.verify import verify_catalog
from vidcorpus.storage import is_url, local_path
from vidcorpus.redact import redact_text
from vidcorpus.schemas import SHARD_SCHEMA
from vidcorpus.workdir import missing_catalog_hint


class Catalog(CurationRecords, ReleaseRecords):
    """The catalog file (or a snapshot): its transactions, the driver's writes and the reads callers share."""

    def __init__(self, path: str | os.PathLike, read_only: bool = False, hold: bool = True,
                 lock_timeout_s: float | None = None):
        """Open (and for a writer, create and migrate) the catalog at ``path``.

        ``hold=False`` (writers): the file is opened for each transaction and closed after it, so
        readers can open it between commits. ``lock_timeout_s``: how long an open waits for a lock
        another process holds (default 30 s for readers, 600 s for writers).
        """
        self.path = str(path)
        self.read_only = read_only
        self.hold = hold
        self.lock_timeout_s = lock_timeout_s if lock_timeout_s is not None else (
            READ_LOCK_TIMEOUT_S if read_only else WRITE_LOCK_TIMEOUT_S)
        self._con: duckdb.DuckDBPyConnection | None = None
        self._sessions = 0
        self.manifest: dict | None = None  # set for a snapshot
        if is_snapshot(self.path):
            if not read_only:
                raise CatalogError(f"{self.path} is a catalog snapshot: snapshots are read-only "
                                   "(write to the DuckDB file it was exported from)")
            self._con, self.manifest, self._snapshot_dir = open_snapshot(self.path)
            self.hold = True
            return
        if is_url(self.path):
            raise CatalogError(f"no catalog snapshot at {self.path} (no manifest.json there; "
                               "publish one with `vidcorpus catalog export URL`)")
        self.path = local_path(self.path)
        if read_only and not Path(self.path).exists():
            raise CatalogError(f"no catalog at {self.path} ({missing_catalog_hint(self.path)})")
        if not read_only:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with self._session():
            if not read_only:
                self._migrate()

    # -- connections -------------------------------------------------------------------------
    def _connect(self) -> duckdb.DuckDBPyConnection:
        """Open the file, waiting out other processes' locks (``catalog/file_lock.py``)."""
        return connect(self.path, self.read_only, self.lock_timeout_s)

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """A connection, held until ``close()`` (for ad-hoc SQL; methods open and close their own)."""
        if self._con is None:
            self._con = self._connect()
            self._sessions += 1  # held: no session closes it
        return self._con

    @contextlib.contextmanager
    def _session(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The connection for one method call; closed after it unless the catalog holds the file."""
        opened = self._con is None
        if opened:
            self._con = self._connect()
        self._sessions += 1
        try:
            yield self._con
        finally:
            self._sessions -= 1
            if opened and self._sessions == 0 and not self.hold:
                self._con.close()
                self._con = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One all-or-nothing write: BEGIN ... COMMIT, rolled back on any error."""
        if self.read_only:
            raise CatalogError(f"catalog {self.path} is open read-only")
        with self._session() as con:
            con.begin()
            try:
                yield con
                con.commit()
            except BaseException:
                con.rollback()
                raise

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
        self._sessions = 0
        if getattr(self, "_snapshot_dir", None) is not None:
            self._snapshot_dir.cleanup()
            self._snapshot_dir = None

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _migrate(self) -> None:
        """Apply every migration not yet recorded, in version order, each in its own transaction."""
        con = self._con
        con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)")
        applied = {r[0] for r in con.execute("SELECT version FROM schema_version").fetchall()}
        for version, ddl in sorted(MIGRATIONS, key=lambda m: m[0]):
            if version in applied:
                continue
            with self.transaction():
                con.execute(ddl)
                if version in MIGRATION_HOOKS:
                    getattr(self, MIGRATION_HOOKS[version])()
                con.execute("INSERT INTO schema_version VALUES (?, ?)", [version, utc_now()])
        with self.transaction():
            self.refresh_views()

    @property
    def schema_version(self) -> int:
        if self.manifest is not None:
            return int(self.manifest["schema_version"])
        with self._session() as con:
            return con.execute("SELECT max(version) FROM schema_version").fetchall()[0][0]

    def refresh_views(self) -> None:
        """Make clips_wide's columns follow clips and the scorers present; (re)create the funnels."""
        con = self._con
        wide_table.sync_columns(con)
        con.execute(FUNNEL_SQL)
        con.execute(FUNNEL_BY_RUN_SQL)

    # -- the materialised wide table (catalog/wide_table.py) -----------------------------------
    def rebuild_wide(self, clip_ids: Iterable[str] | None = None) -> int:
        """Recompute clips_wide (all of it, or some clips) from the long tables; returns rows written.

        The driver keeps the table current on every write; this is for migrations and repairs.
        """
        with self._session() as con:
            return wide_table.rebuild(con, clip_ids)

    # -- runs --------------------------------------------------------------------------------
    def begin_run(self, run_id: str, kind: str, config_json: str, code_version: str) -> None:
        with self.transaction() as con:
            con.execute(
                "INSERT OR REPLACE INTO runs VALUES (?, ?, 'running', ?, NULL, ?, ?, NULL)",
                [run_id, kind, utc_now(), redact_text(config_json), code_version],  # inputs may carry credentials
            )

    def finish_run(self, run_id: str, status: str, stats: dict) -> None:
        with self.transaction() as con:
            con.execute(
                "UPDATE runs SET status = ?, finished_at = ?, stats_json = ? WHERE run_id = ?",
                [status, utc_now(), json.dumps(stats, default=str), run_id],
            )

    # -- reads the driver needs --------------------------------------------------------------
    def done_source_ids(self) -> set[str]:
        return {r[0] for r in self._fetch("SELECT source_id FROM sources WHERE status = 'done'")}

    def failed_source_ids(self, error_class: str | None = None) -> set[str]:
        sql = "SELECT DISTINCT source_id FROM failures WHERE source_id IS NOT NULL"
        params: list[Any] = []
        if error_class:
            sql += " AND error_class = ?"
            params.append(error_class)
        return {r[0] for r in self._fetch(sql, params)}

    def unsharded_kept(self) -> list[dict]:
        """Kept clips that no shard holds yet and that have a clip file: what the shard writer must pack
        next (a kept clip not extracted yet waits for `vidcorpus sync`)."""
        return self.query_dicts(
            "SELECT * FROM clips_wide WHERE kept AND shard_id IS NULL AND clip_path IS NOT NULL ORDER BY clip_id"
        )

    def scores_of(self, clip_ids: list[str]) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {c: [] for c in clip_ids}
        rows = self._fetch(
            "SELECT clip_id, scorer, model, version, value FROM scores WHERE clip_id IN (SELECT unnest(?)) ORDER BY 1, 2",
            [clip_ids],
        )
        for clip, scorer, model, version, value in rows:
            out[clip].append({"scorer": scorer, "model": model, "version": version, "value": value})
        return out

    def captions_of(self, clip_ids: list[str]) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {c: [] for c in clip_ids}
        rows = self._fetch(
            "SELECT clip_id, version, kind, text, model, prompt_version, meta_json FROM captions "
            "WHERE clip_id IN (SELECT unnest(?)) ORDER BY 1, 2, 3",
            [clip_ids],
        )
        for clip, version, kind, text, model, pv, meta in rows:
            out[clip].append({"version": version, "kind": kind, "text": text, "model": model, "prompt_version": pv,
                              "meta_json": meta})
        return out

    def _user_predicate(self, predicate: str, params: list | None = None) -> str:
        """A user's --select, checked to read nothing but the catalog (catalog/safe_sql.py)."""
        return check_predicate(self, predicate, params)

    def shard_rows_for(self, predicate: str = "TRUE", params: list | None = None) -> list[dict]:
        """Shard rows (id, url, sha256, bytes, n, bucket) holding clips that match a SQL predicate
        (its ``?`` values in ``params``)."""
        predicate = self._user_predicate(predicate, params)
        return self.query_dicts(
            f"SELECT DISTINCT sh.shard_id, sh.url, sh.sha256, sh.bytes, sh.n, sh.bucket FROM shards sh "
            f"JOIN shard_members m USING (shard_id) JOIN (SELECT clip_id FROM clips_wide WHERE {predicate}) w "
            f"ON w.clip_id = m.clip_id ORDER BY sh.shard_id", params)

    def clip_ids_for(self, predicate: str = "TRUE", params: list | None = None) -> set[str]:
        """Ids of the clips that match a SQL predicate (its ``?`` values in ``params``)."""
        predicate = self._user_predicate(predicate, params)
        return {r[0] for r in self._fetch(f"SELECT clip_id FROM clips_wide WHERE {predicate}", params)}

    # -- writes ------------------------------------------------------------------------------
    def _fetch(self, sql: str, params: list | None = None) -> list[tuple]:
        with self._session() as con:
            return con.execute(sql, params).fetchall() if params is not None else con.execute(sql).fetchall()

    def _upsert(self, table: str, rows: list[dict] | pa.Table) -> int:
        """Insert or replace rows by the table's key, and keep clips_wide current (one transaction
        when called inside ``transaction()``; autocommit otherwise); see ``catalog/upsert.py``."""
        with self._session() as con:
            return upsert(con, table, rows)

    def commit_fragments(self, run_id: str, fragments: dict[str, pa.Table | str | list]) -> dict[str, int]:
        """Upsert whole Arrow tables or Parquet files (what Ray workers hand back) in one transaction;
        see ``catalog/batch_commit.py``."""
        return batch_commit.commit_fragments(self, run_id, fragments)

    def commit_results(self, run_id: str, rows: Iterable[dict], failed_before: Iterable[str] = (),
                       events: list[dict] | None = None) -> dict[str, int]:
        """Write one batch of pipeline rows and the warnings raised on it, in one transaction; see
        ``catalog/batch_commit.py``."""
        return batch_commit.commit_results(self, run_id, rows, failed_before, events)

    def add_events(self, run_id: str, raised: list[dict]) -> int:
        """Count warnings raised outside a pipeline window (`vidcorpus sync` captioning) into the run's events."""
        with self.transaction() as con:
            return batch_commit.count_events(con, run_id, raised, utc_now())

    def events(self, run_id: str | None = None, limit: int = 50, kind: str | None = None) -> list[dict]:
        """Warnings and fast-path switch-offs stages raised (of one run, or of all runs), most frequent
        first; ``kind="setup"``: model actors' setups instead (one per actor and run)."""
        conds, params = ["kind = ?" if kind else "kind <> 'setup'"], [kind] if kind else []
        if run_id:
            conds.append("run_id = ?")
            params.append(run_id)
        where = "WHERE " + " AND ".join(conds)
        try:
            return self.query_dicts(
                f"SELECT stage, kind, message, sum(count)::BIGINT AS count, count(DISTINCT run_id) AS runs, "
                f"max(last_at) AS last_at "
                f"FROM events {where} GROUP BY ALL ORDER BY count DESC, last_at DESC LIMIT ?", params + [int(limit)])
        except duckdb.CatalogException:  # a snapshot exported before the events table existed
            return []

    def mark_sources_done(self, source_ids: Iterable[str]) -> None:
        """After a run has committed every row of these sources: done, and old failures cleared."""
        ids = list(source_ids)
        if not ids:
            return
        with self.transaction() as con:
            con.execute("UPDATE sources SET status = 'done' WHERE source_id IN (SELECT unnest(?)) "
                        "AND status = 'partial'", [ids])
            con.execute("DELETE FROM failures WHERE source_id IN (SELECT unnest(?)) AND source_id IN "
                        "(SELECT source_id FROM sources WHERE status = 'done')", [ids])

    def commit_shards(self, run_id: str, shards: list[dict]) -> None:
        """Record published shards and their members; called only after the tar is visible."""
        now = utc_now()
        shards = pa.Table.from_pylist(shards, schema=SHARD_SCHEMA).to_pylist()  # a malformed manifest fails here
        with self.transaction():
            self._upsert("shards", [{k: v for k, v in s.items() if k != "members"} | {"run_id": run_id, "created_at": now}
                                    for s in shards])
            self._upsert("shard_members", [{"shard_id": s["shard_id"], "clip_id": c} for s in shards for c in s["members"]])

    def record_training(self, run_id: str, stage: str, select_sql: str, steps: int, final_loss: float | None,
                        checkpoint: str, shard_urls: list[str], config_json: str, started_at: dt.datetime,
                        samples, files: list[dict] | None = None, replace_from: int | None = None) -> None:
        """See ``catalog/train_samples.py`` (samples: (step, clip id) pairs or a table of them; None:
        DuckDB reads them from ``files``, the run's sample-log parts)."""
        train_samples.record_training(self, run_id, stage, select_sql, steps, final_loss, checkpoint, shard_urls, config_json,
                        started_at, samples, files, replace_from)

    def record_failure(self, item_id: str, stage: str, error_class: str, error: str, run_id: str,
                       source_id: str | None = None) -> None:
        self._upsert("failures", [{"item_id": item_id, "stage": stage, "source_id": source_id, "uri": None,
                                   "error_class": error_class, "error": redact_text(error[:2000]), "run_id": run_id,
                                   "failed_at": utc_now(), "attempts": 1}])

    # -- queries -----------------------------------------------------------------------------
    def query(self, sql: str, params: list | None = None) -> pa.Table:
        with self._session() as con:
            return con.sql(sql, params=params).to_arrow_table() if params else con.sql(sql).to_arrow_table()

    def query_dicts(self, sql: str, params: list | None = None) -> list[dict]:
        return self.query(sql, params).to_pylist()

    def funnel(self, run_id: str | None = None) -> list[dict]:
        """Counts and hours per stage: of the whole catalog, or of the clips one run wrote."""
        if run_id is None:
            return self.query_dicts("SELECT stage, n, hours FROM funnel ORDER BY step")
        return self.query_dicts("SELECT stage, n, hours FROM funnel_by_run WHERE run_id = ? ORDER BY step", [run_id])

    # -- audit and publication -----------------------------------------------------------------
    def verify(self, shard_roots: Iterable[str] = (), checksums: bool = True, deep: bool = False) -> list[dict]:
        """Consistency problems (empty when the catalog is sound); see ``catalog/verify.py``."""
        return verify_catalog(self, shard_roots=shard_roots, checksums=checksums, deep=deep)

    def export(self, url: str) -> dict:
        """Publish a Parquet snapshot with a manifest at ``url`` (local or s3://); returns the manifest."""
        return export_snapshot(self, url)
