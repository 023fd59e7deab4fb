"""The DuckDB catalog: the system of record. Only the driver writes, in transactions, as upserts.

Readers open the file read-only (``Catalog(path, read_only=True)``); ``vidcorpus sql`` does. A
catalog path may also be a published snapshot (a folder or ``s3://`` prefix with ``manifest.json``,
see ``catalog/snapshot.py``), which opens read-only over its Parquet files.

Concurrency: DuckDB lets one process write a file or several processes read it, never both at
once. A writer opened with ``hold=False`` (the pipeline driver) therefore holds the file only while
it commits, and every open retries a held lock with jittered exponential backoff for up to
``lock_timeout_s``: readers get in between a run's commits, and a run waits out a reader.
Writers go first: a writer that finds the file held keeps a marker file beside it
(``<catalog>.writer-waiting``, touched at every retry, removed once it has the file), and a
reader does not open the file while a fresh marker is there. Without that, a dashboard that
re-opens the catalog back to back could keep a run's commit waiting for minutes (57 s measured).
The marker is advisory: only vidcorpus's readers honour it, and one older than
``WRITER_MARK_STALE_S`` (a writer that died waiting) is ignored.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import random
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import duckdb
import pyarrow as pa

from vidcorpus.catalog.schema import (
    FUNNEL_BY_RUN_SQL,
    FUNNEL_SQL,
    MIGRATION_HOOKS,
    MIGRATIONS,
    check_scorer_name,
    wide_columns,
    wide_view_sql,
)
from vidcorpus.storage import is_url
from vidcorpus.redact import redact_text, redact_url
from vidcorpus.schemas import SHARD_SCHEMA


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class CatalogError(RuntimeError):
    """The catalog cannot be opened (missing file for a reader, locked by another writer...)."""


READ_LOCK_TIMEOUT_S = float(os.environ.get("VIDCORPUS_CATALOG_READ_TIMEOUT_S", 30))
WRITE_LOCK_TIMEOUT_S = float(os.environ.get("VIDCORPUS_CATALOG_WRITE_TIMEOUT_S", 600))
WRITER_MARK_STALE_S = 5.0  # a waiting writer touches its marker at least every WRITER_RETRY_MAX_S
WRITER_RETRY_MAX_S = 0.25
INLINE_IDS = 1024  # up to this many ids per statement are inlined so DuckDB probes the primary-key index


def _sql_str(v: str) -> str:
    return "'" + str(v).replace("'", "''") + "'"


def is_lock_error(e: Exception) -> bool:
    text = str(e).lower()
    return "lock" in text and ("could not set" in text or "conflicting" in text)


class Catalog:
    def __init__(self, path: str | os.PathLike, read_only: bool = False, hold: bool = True,
                 lock_timeout_s: float | None = None):
        """Open (and for a writer, create and migrate) the catalog at ``path``.

        ``hold=False`` (writers): the file is opened for each transaction and closed after it, so
        readers can open it between commits. ``lock_timeout_s``: how long an open waits for a lock
        another process holds (default 30 s for readers, 600 s for writers).
        """
        from vidcorpus.catalog.snapshot import is_snapshot, open_snapshot

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
        self.path = self.path.removeprefix("file://")
        if read_only and not Path(self.path).exists():
            from vidcorpus.workdir import missing_catalog_hint

            raise CatalogError(f"no catalog at {self.path} ({missing_catalog_hint(self.path)})")
        if not read_only:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with self._session():
            if not read_only:
                self._migrate()

    # -- connections -------------------------------------------------------------------------
    def _connect(self) -> duckdb.DuckDBPyConnection:
        """Open the file, retrying while another process holds a conflicting lock (a waiting
        writer marks itself so that readers let it in first; see the module docstring)."""
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.02
        mark = Path(self.path + ".writer-waiting")
        marked = False
        try:
            while True:
                if self.read_only:
                    self._wait_for_writer(mark, deadline)
                try:
                    return duckdb.connect(self.path, read_only=self.read_only)
                except duckdb.IOException as e:
                    left = deadline - time.monotonic()
                    if not is_lock_error(e) or left <= 0:
                        raise CatalogError(f"cannot open catalog {self.path}: {e}") from e
                    if not self.read_only:
                        mark.touch()  # readers now wait for this writer
                        marked = True
                    time.sleep(min(left, delay * (0.5 + random.random())))
                    delay = min(delay * 2, 1.0 if self.read_only else WRITER_RETRY_MAX_S)
                except duckdb.ConnectionException as e:  # same file already open in this process, other mode
                    raise CatalogError(f"cannot open catalog {self.path}: {e}") from e
        finally:
            if marked:
                mark.unlink(missing_ok=True)

    @staticmethod
    def _wait_for_writer(mark: Path, deadline: float) -> None:
        """Wait while a writer is waiting for the file (a fresh marker), until ``deadline``."""
        while time.monotonic() < deadline:
            try:
                if time.time() - mark.stat().st_mtime > WRITER_MARK_STALE_S:
                    return
            except FileNotFoundError:
                return
            time.sleep(0.02)

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
                con.execute("INSERT INTO schema_version VALUES (?, ?)", [version, _now()])
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
        self._sync_wide_columns(con)
        con.execute(FUNNEL_SQL)
        con.execute(FUNNEL_BY_RUN_SQL)

    # -- the materialised wide table -----------------------------------------------------------
    def _columns(self, con, table: str) -> list[str]:
        return [r[0] for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
            [table]).fetchall()]

    def _sync_wide_columns(self, con, scorers: Iterable[str] | None = None) -> None:
        """Add clips_wide columns for clip columns added by later migrations and for new scorers."""
        have = set(self._columns(con, "clips_wide"))
        types = dict(con.execute("SELECT column_name, data_type FROM information_schema.columns "
                                 "WHERE table_name = 'clips'").fetchall())
        for name, typ in types.items():
            if name not in have:
                con.execute(f'ALTER TABLE clips_wide ADD COLUMN "{name}" {typ}')
                have.add(name)
        if scorers is None:
            scorers = [r[0] for r in con.execute("SELECT DISTINCT scorer FROM scores ORDER BY 1").fetchall()]
        for name in wide_columns(sorted(set(scorers))):
            if name not in have:
                con.execute(f'ALTER TABLE clips_wide ADD COLUMN "{name}" DOUBLE')
                have.add(name)

    def rebuild_wide(self, clip_ids: Iterable[str] | None = None) -> int:
        """Recompute clips_wide (all of it, or some clips) from the long tables; returns rows written.

        The driver keeps the table current on every write; this is for migrations and repairs.
        """
        with self._session() as con:
            scorers = [r[0] for r in con.execute("SELECT DISTINCT scorer FROM scores ORDER BY 1").fetchall()]
            self._sync_wide_columns(con, scorers)
            if clip_ids is None:
                con.execute("DELETE FROM clips_wide")
                where = None
            else:
                ids = sorted(set(clip_ids))
                if not ids:
                    return 0
                con.execute("DELETE FROM clips_wide WHERE clip_id IN (SELECT unnest(?))", [ids])
                where = "clip_id IN (" + ",".join(_sql_str(i) for i in ids) + ")"
            con.execute("INSERT INTO clips_wide BY NAME " + wide_view_sql(scorers, where))
            return con.execute("SELECT count(*) FROM clips_wide").fetchall()[0][0] if where is None else len(ids)

    def _id_filter(self, con, column: str, ids: list[str]) -> str:
        """A predicate on clips_wide.column for these ids: inlined (index probe) when few."""
        if len(ids) <= INLINE_IDS:
            return f"clips_wide.{column} IN (" + ",".join(_sql_str(i) for i in ids) + ")"
        return f"clips_wide.{column} IN (SELECT {column} FROM _rows)"

    def _changed(self, con, table: str, key: str, cols: list[str], present: set[str]) -> list[str]:
        """Keys of rows in _rows that already exist in ``table`` with different values in ``cols``."""
        cols = [c for c in cols if c in present]
        if not cols:
            return []
        differs = " OR ".join(f't."{c}" IS DISTINCT FROM r."{c}"' for c in cols)
        return [r[0] for r in con.execute(
            f"SELECT r.{key} FROM _rows r JOIN {table} t ON t.{key} = r.{key} WHERE {differs}").fetchall()]

    def _maintain_wide(self, con, table: str, present: set[str], changed: list[str]) -> None:
        """Bring clips_wide up to date with the rows just upserted into ``table`` (registered as _rows).

        Every change is an update of the touched clips' rows: the latest score per scorer, the
        latest caption and decision, the first shard. Runs inside the caller's transaction.
        """
        if table == "sources":
            if changed:
                con.execute(
                    "UPDATE clips_wide SET uri = s.uri, source_text = s.text, source_sha256 = s.sha256 FROM sources s "
                    "WHERE clips_wide.source_id = s.source_id AND s.source_id IN (SELECT unnest(?))", [changed])
            return
        if table == "shards":
            if changed:
                con.execute("UPDATE clips_wide SET shard_url = s.url FROM shards s WHERE clips_wide.shard_id = s.shard_id "
                            "AND s.shard_id IN (SELECT unnest(?))", [changed])
            return
        if table not in ("clips", "scores", "captions", "decisions", "shard_members", "train_samples"):
            return
        ids = [r[0] for r in con.execute("SELECT DISTINCT clip_id FROM _rows WHERE clip_id IS NOT NULL").fetchall()]
        if not ids:
            return
        where = self._id_filter(con, "clip_id", ids)
        if table == "clips":
            clip_cols = [c for c in self._columns(con, "clips") if c in present]
            existing = {r[0] for r in con.execute(f"SELECT clip_id FROM clips_wide WHERE {where}").fetchall()}
            src = ("SELECT r.*, s.uri AS _uri, s.text AS _text, s.sha256 AS _sha FROM _rows r "
                   "LEFT JOIN sources s ON s.source_id = r.source_id")
            cols = ", ".join(f'b."{c}"' for c in clip_cols)
            if len(existing) < len(ids):
                con.execute(f"INSERT INTO clips_wide BY NAME SELECT {cols}, b._uri AS uri, b._text AS source_text, "
                            f"b._sha AS source_sha256, FALSE AS scored, FALSE AS captioned, FALSE AS trained FROM ({src}) b "
                            f"WHERE b.clip_id NOT IN (SELECT unnest(?))", [sorted(existing)])
            if existing:
                sets = ", ".join(f'"{c}" = b."{c}"' for c in clip_cols if c != "clip_id")
                ex = self._id_filter(con, "clip_id", sorted(existing))
                con.execute(f"UPDATE clips_wide SET {sets}, uri = b._uri, source_text = b._text, source_sha256 = b._sha "
                            f"FROM ({src}) b WHERE clips_wide.clip_id = b.clip_id AND {ex}")
        elif table == "scores":
            names = [r[0] for r in con.execute("SELECT DISTINCT scorer FROM _rows ORDER BY 1").fetchall()]
            self._sync_wide_columns(con, names)
            cols = wide_columns(names)
            pivot = "".join(f", arg_max(value, written_at) FILTER (WHERE scorer = '{n}') AS \"{n}\"" for n in cols)
            sets = "".join(f', "{n}" = coalesce(b."{n}", clips_wide."{n}")' for n in cols)
            con.execute(f"UPDATE clips_wide SET scored = TRUE{sets} FROM (SELECT clip_id{pivot} FROM _rows "
                        f"GROUP BY clip_id) b WHERE clips_wide.clip_id = b.clip_id AND {where}")
        elif table == "captions":
            con.execute(
                "UPDATE clips_wide SET caption = coalesce(b.caption, clips_wide.caption), "
                "short_caption = coalesce(b.short_caption, clips_wide.short_caption), caption_version = b.caption_version, "
                "captioned = coalesce(b.caption, clips_wide.caption) IS NOT NULL "
                "FROM (SELECT clip_id, arg_max(text, written_at) FILTER (WHERE kind = 'long') AS caption, "
                "arg_max(text, written_at) FILTER (WHERE kind = 'short') AS short_caption, "
                "arg_max(version, written_at) AS caption_version FROM _rows GROUP BY clip_id) b "
                f"WHERE clips_wide.clip_id = b.clip_id AND {where}")
        elif table == "decisions":
            con.execute(
                "UPDATE clips_wide SET kept = b.kept, reason = b.reason, recipe = b.recipe "
                "FROM (SELECT clip_id, arg_max(kept, decided_at) AS kept, arg_max_null(reason, decided_at) AS reason, "
                "arg_max(recipe, decided_at) AS recipe FROM _rows GROUP BY clip_id) b "
                f"WHERE clips_wide.clip_id = b.clip_id AND {where}")
        elif table == "train_samples":
            con.execute(f"UPDATE clips_wide SET trained = TRUE WHERE {where} AND trained IS DISTINCT FROM TRUE")
        elif table == "shard_members":
            con.execute(
                "UPDATE clips_wide SET shard_id = least(coalesce(clips_wide.shard_id, b.shard_id), b.shard_id) "
                "FROM (SELECT clip_id, min(shard_id) AS shard_id FROM _rows GROUP BY clip_id) b "
                f"WHERE clips_wide.clip_id = b.clip_id AND {where}")
            con.execute(f"UPDATE clips_wide SET shard_url = s.url FROM shards s WHERE clips_wide.shard_id = s.shard_id "
                        f"AND {where} AND clips_wide.shard_url IS DISTINCT FROM s.url")

    # -- runs --------------------------------------------------------------------------------
    def begin_run(self, run_id: str, kind: str, config_json: str, code_version: str) -> None:
        with self.transaction() as con:
            con.execute(
                "INSERT OR REPLACE INTO runs VALUES (?, ?, 'running', ?, NULL, ?, ?, NULL)",
                [run_id, kind, _now(), redact_text(config_json), code_version],  # inputs may carry credentials
            )

    def finish_run(self, run_id: str, status: str, stats: dict) -> None:
        with self.transaction() as con:
            con.execute(
                "UPDATE runs SET status = ?, finished_at = ?, stats_json = ? WHERE run_id = ?",
                [status, _now(), json.dumps(stats, default=str), run_id],
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

    def _user_predicate(self, predicate: str) -> str:
        """A user's --select, checked to read nothing but the catalog (catalog/safe_sql.py)."""
        from vidcorpus.catalog.safe_sql import check_predicate  # (safe_sql builds on this module)

        return check_predicate(self, predicate)

    def shard_rows_for(self, predicate: str = "TRUE") -> list[dict]:
        """Shard rows (id, url, sha256, bytes, n, bucket) holding clips that match a SQL predicate."""
        predicate = self._user_predicate(predicate)
        return self.query_dicts(
            f"SELECT DISTINCT sh.shard_id, sh.url, sh.sha256, sh.bytes, sh.n, sh.bucket FROM shards sh "
            f"JOIN shard_members m USING (shard_id) JOIN (SELECT clip_id FROM clips_wide WHERE {predicate}) w "
            f"ON w.clip_id = m.clip_id ORDER BY sh.shard_id")

    def clip_ids_for(self, predicate: str = "TRUE") -> set[str]:
        predicate = self._user_predicate(predicate)
        return {r[0] for r in self._fetch(f"SELECT clip_id FROM clips_wide WHERE {predicate}")}

    # -- writes ------------------------------------------------------------------------------
    def _fetch(self, sql: str, params: list | None = None) -> list[tuple]:
        with self._session() as con:
            return con.execute(sql, params).fetchall() if params is not None else con.execute(sql).fetchall()

    def _upsert(self, table: str, rows: list[dict] | pa.Table) -> int:
        """Insert or replace rows by the table's key, and keep clips_wide current (one transaction
        when called inside ``transaction()``; autocommit otherwise)."""
        arrow = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows) if rows else None
        if arrow is None or arrow.num_rows == 0:
            return 0
        if table == "scores":
            for name in set(arrow.column("scorer").to_pylist()):
                check_scorer_name(name)  # before anything is written
        with self._session() as con:
            con.register("_rows", arrow)
            try:
                present = set(arrow.column_names)
                changed: list[str] = []
                if table == "sources":
                    changed = self._changed(con, "sources", "source_id", ["uri", "text", "sha256"], present)
                elif table == "shards":
                    changed = self._changed(con, "shards", "shard_id", ["url"], present)
                self._insert_or_replace(con, table, arrow)
                self._maintain_wide(con, table, present, changed)
            finally:
                con.unregister("_rows")
        return arrow.num_rows

    # Tables keyed by clip whose rows can exist only when clips_wide says so (flag set by _maintain_wide).
    _CLIP_KEYED = {"scores": "scored", "captions": "caption_version IS NOT NULL", "decisions": "recipe IS NOT NULL",
                   "shard_members": "shard_id IS NOT NULL"}
    _SINGLE_KEY = {"clips": "clip_id", "sources": "source_id", "shards": "shard_id", "runs": "run_id"}

    def _insert_or_replace(self, con, table: str, arrow: pa.Table) -> None:
        """Upsert _rows by primary key. DuckDB's INSERT OR REPLACE costs a fixed 0.6 to 1 s at tens of
        millions of rows however few are inserted (measured: 64 clips' scores into 40 M rows), a plain
        INSERT 8 ms; so rows that cannot exist yet are inserted plainly and only the others replaced.
        Whether a row can exist is read from an index probe on the table's own key, or for the long
        clip-keyed tables from clips_wide (a clip with no scores yet has no score row)."""
        key = self._SINGLE_KEY.get(table)
        flag = self._CLIP_KEYED.get(table)
        if key is None and flag is None:
            con.execute(f"INSERT OR REPLACE INTO {table} BY NAME SELECT * FROM _rows")
            return
        if key is not None:
            ids = sorted({v for v in arrow.column(key).to_pylist() if v is not None})
            if len(ids) > INLINE_IDS:
                con.execute(f"INSERT OR REPLACE INTO {table} BY NAME SELECT * FROM _rows")
                return
            lit = ",".join(_sql_str(i) for i in ids) or "NULL"
            may_exist = [r[0] for r in con.execute(f"SELECT {key} FROM {table} WHERE {key} IN ({lit})").fetchall()]
        else:
            key = "clip_id"
            ids = sorted({v for v in arrow.column(key).to_pylist() if v is not None})
            if len(ids) > INLINE_IDS:
                fresh_sql = ("SELECT clip_id FROM clips_wide WHERE clip_id IN (SELECT clip_id FROM _rows) "
                             f"AND NOT coalesce({flag}, FALSE)")
            else:
                lit = ",".join(_sql_str(i) for i in ids) or "NULL"
                fresh_sql = f"SELECT clip_id FROM clips_wide WHERE clip_id IN ({lit}) AND NOT coalesce({flag}, FALSE)"
            fresh = {r[0] for r in con.execute(fresh_sql).fetchall()}
            may_exist = [i for i in ids if i not in fresh]
        if not may_exist:
            con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _rows")
        elif len(may_exist) == len(ids):
            con.execute(f"INSERT OR REPLACE INTO {table} BY NAME SELECT * FROM _rows")
        else:
            con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _rows WHERE {key} NOT IN (SELECT unnest(?))", [may_exist])
            con.execute(f"INSERT OR REPLACE INTO {table} BY NAME SELECT * FROM _rows WHERE {key} IN (SELECT unnest(?))",
                        [may_exist])

    def commit_fragments(self, run_id: str, fragments: dict[str, pa.Table | str | list]) -> dict[str, int]:
        """Upsert whole Arrow tables or Parquet files (what Ray workers hand back) in one transaction.

        ``fragments`` maps a long table (sources, clips, scores, captions, decisions, shards,
        shard_members, failures...) to an Arrow table or a Parquet path/URL (or a list of them).
        Rows without a run_id get this run's; clips_wide is kept current as for any write.
        """
        import pyarrow.parquet as pq

        order = ["runs", "sources", "clips", "scores", "captions", "decisions", "shards", "shard_members", "failures"]
        tables = sorted(fragments, key=lambda t: order.index(t) if t in order else len(order))
        counts: dict[str, int] = {}
        with self.transaction() as con:
            for table in tables:
                has_run = "run_id" in self._columns(con, table)
                parts = fragments[table]
                parts = parts if isinstance(parts, list) else [parts]
                counts[table] = 0
                for part in parts:
                    if not isinstance(part, pa.Table):
                        import fsspec

                        with fsspec.open(str(part), "rb") as f:
                            part = pq.read_table(f)
                    if has_run and "run_id" not in part.column_names:
                        part = part.append_column("run_id", pa.array([run_id] * part.num_rows, pa.string()))
                    counts[table] += self._upsert(table, part)
        return counts

    def commit_results(self, run_id: str, rows: Iterable[dict], failed_before: Iterable[str] = (),
                       events: list[dict] | None = None) -> dict[str, int]:
        """Write one batch of pipeline rows (sources, clips, scores, captions, decisions, failures) and
        the warnings the stages raised on it (``events``, plus any still carried by the rows).

        All in one transaction. A source stays 'failed' once any of its rows failed in this run
        (``failed_before`` carries that across batches), so a rerun retries exactly the failed
        sources; failure rows of earlier runs are replaced by this run's.
        """
        from vidcorpus import events as stage_events

        now = _now()
        rows = list(rows)
        raised = stage_events.merge(list(events or []), stage_events.take(rows))
        src_cols = ("source_id", "uri", "text", "meta_json", "media_type", "source_path", "sha256", "bytes",
                    "container", "codec", "width", "height", "fps", "n_frames", "duration_s",
                    "bitrate", "has_audio", "audio_codec", "rotation", "split_frames")
        sources: dict[str, dict] = {}
        failed_sources: set[str] = set()
        failed_before = set(failed_before)
        clips, scores, captions, decisions, failures = [], [], [], [], []
        dropped: dict[tuple, dict] = {}  # the segments no clip holds, of the sources split in this batch
        for r in rows:
            sid = r.get("source_id")
            if sid and sid not in sources:
                sources[sid] = {c: r.get(c) for c in src_cols}
                sources[sid]["uri"] = redact_url(sources[sid]["uri"]) if sources[sid]["uri"] else None
            if r.get("error_class"):
                item = r.get("clip_id") or sid or "input-" + hashlib.sha256(str(r.get("error")).encode()).hexdigest()[:16]
                failures.append({"item_id": item, "stage": r["error_stage"], "source_id": sid,
                                 "uri": redact_url(r["uri"]) if r.get("uri") else None,
                                 "error_class": r["error_class"], "error": redact_text(r.get("error")), "run_id": run_id,
                                 "failed_at": now, "attempts": 1})
                if sid:
                    failed_sources.add(sid)
                continue
            fps = r.get("fps")
            for d in r.get("dropped") or []:  # clip rows and a clip-less split row carry them alike
                dropped[(sid, d["first_frame"], d["last_frame"])] = {
                    "source_id": sid, **d, "start_s": d["first_frame"] / fps if fps else None,
                    "end_s": (d["last_frame"] + 1) / fps if fps else None, "run_id": run_id, "written_at": now}
            if not r.get("clip_id"):
                continue
            clips.append({
                "clip_id": r["clip_id"], "source_id": sid, "media_type": r["media_type"],
                "first_frame": r["first_frame"], "last_frame": r["last_frame"], "start_s": r["start_s"],
                "end_s": r["end_s"], "duration_s": (r["end_s"] or 0.0) - (r["start_s"] or 0.0),
                "n_frames": r.get("clip_frames") or ((r["last_frame"] - r["first_frame"] + 1)
                                                      if r["last_frame"] is not None else None),
                "fps": r.get("clip_fps") or fps, "width": r.get("clip_width") or r["width"],
                "height": r.get("clip_height") or r["height"], "clip_path": r["clip_path"],
                "first_frame_path": r["first_frame_path"], "extract_mode": r.get("extract_mode"),
                "run_id": run_id, "updated_at": now,
            })
            for s in r.get("scores") or []:
                scores.append({"clip_id": r["clip_id"], **s, "run_id": run_id, "written_at": now})
            for c in r.get("captions") or []:
                captions.append({"clip_id": r["clip_id"], **c, "run_id": run_id, "written_at": now})
            if r.get("recipe"):
                decisions.append({"clip_id": r["clip_id"], "recipe": r["recipe"], "kept": bool(r["kept"]),
                                  "reason": r.get("reason"), "run_id": run_id, "decided_at": now})
        for sid, s in sources.items():
            # 'partial' until the run has seen all of the source's rows (mark_sources_done)
            failed = sid in failed_sources or sid in failed_before
            s.update(status="failed" if failed else "partial", run_id=run_id, updated_at=now)
        counts: dict[str, int] = {}
        with self.transaction() as con:
            # attempts count up across reruns of the same failing source or item
            for f in failures:
                prev = con.execute(
                    "SELECT max(attempts) FROM failures WHERE (item_id = ? AND stage = ?) OR source_id = ?",
                    [f["item_id"], f["stage"], f["source_id"]]).fetchall()[0][0]
                f["attempts"] = (prev or 0) + 1
            if failed_sources:
                con.execute("DELETE FROM failures WHERE source_id IN (SELECT unnest(?)) AND run_id <> ?",
                            [sorted(failed_sources), run_id])
            counts["sources"] = self._upsert("sources", list(sources.values()))
            counts["clips"] = self._upsert("clips", clips)
            counts["scores"] = self._upsert("scores", scores)
            counts["captions"] = self._upsert("captions", captions)
            counts["decisions"] = self._upsert("decisions", decisions)
            counts["failures"] = self._upsert("failures", failures)
            counts["events"] = self._add_events(con, run_id, raised, now)
            resplit = sorted({r["source_id"] for r in rows if r.get("split_frames") is not None and not r.get("error_class")})
            if resplit:  # a source split again replaces its earlier runs' segments
                con.execute("DELETE FROM dropped_segments WHERE source_id IN (SELECT unnest(?)) AND run_id <> ?",
                            [resplit, run_id])
            if dropped:
                counts["dropped_segments"] = self._upsert("dropped_segments", list(dropped.values()))
        return counts

    @staticmethod
    def _add_events(con, run_id: str, raised: list[dict], now) -> int:
        """Count a batch's warnings into the run's events rows (one row per stage, kind and message)."""
        for e in raised:
            con.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, stage, kind, message) "
                "DO UPDATE SET count = events.count + excluded.count, last_at = excluded.last_at",
                [run_id, e["stage"], e["kind"], e["message"], int(e["count"]), now, now])
        return len(raised)

    def add_events(self, run_id: str, raised: list[dict]) -> int:
        """Count warnings raised outside a pipeline window (`vidcorpus sync` captioning) into the run's events."""
        with self.transaction() as con:
            return self._add_events(con, run_id, raised, _now())

    def events(self, run_id: str | None = None, limit: int = 50, kind: str | None = None) -> list[dict]:
        """Warnings and fast-path switch-offs stages raised (of one run, or of all runs), most frequent
        first; ``kind="setup"``: model actors' setups instead (one per actor and run)."""
        import duckdb

        conds, params = ["kind = ?" if kind else "kind <> 'setup'"], [kind] if kind else []
        if run_id:
            conds.append("run_id = ?")
            params.append(run_id)
        where = "WHERE " + " AND ".join(conds)
        try:
            return self.query_dicts(
                f"SELECT stage, kind, message, sum(count)::BIGINT AS count, count(DISTINCT run_id) AS runs, "
                f"max(last_at) AS last_at "
                f"FROM events {where} GROUP BY ALL ORDER BY count DESC, last_at DESC LIMIT {int(limit)}", params)
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
        now = _now()
        shards = pa.Table.from_pylist(shards, schema=SHARD_SCHEMA).to_pylist()  # a malformed manifest fails here
        with self.transaction():
            self._upsert("shards", [{k: v for k, v in s.items() if k != "members"} | {"run_id": run_id, "created_at": now}
                                    for s in shards])
            self._upsert("shard_members", [{"shard_id": s["shard_id"], "clip_id": c} for s in shards for c in s["members"]])

    def record_training(self, run_id: str, stage: str, select_sql: str, steps: int, final_loss: float | None,
                        checkpoint: str, shard_urls: list[str], config_json: str, started_at: dt.datetime,
                        samples, files: list[dict] | None = None, replace_from: int | None = None) -> None:
        """See ``catalog/train_samples.py`` (samples: (step, clip id) pairs or a table of them)."""
        from vidcorpus.catalog.train_samples import record_training

        record_training(self, run_id, stage, select_sql, steps, final_loss, checkpoint, shard_urls, config_json,
                        started_at, samples, files, replace_from)

    def record_failure(self, item_id: str, stage: str, error_class: str, error: str, run_id: str,
                       source_id: str | None = None) -> None:
        self._upsert("failures", [{"item_id": item_id, "stage": stage, "source_id": source_id, "uri": None,
                                   "error_class": error_class, "error": redact_text(error[:2000]), "run_id": run_id,
                                   "failed_at": _now(), "attempts": 1}])

    # -- releases and the latent cache (issue 7) ----------------------------------------------
    def recipe_ids(self, name_or_id: str) -> list[str]:
        """Recipe ids (``name@version``) with decisions, matching a name or an exact id; newest first."""
        return [r[0] for r in self._fetch(
            "SELECT recipe FROM decisions WHERE recipe = ? OR recipe LIKE ? || '@%' "
            "GROUP BY recipe ORDER BY max(decided_at) DESC", [name_or_id, name_or_id])]

    def release(self, name: str) -> dict | None:
        rows = self.query_dicts("SELECT * FROM releases WHERE name = ?", [name])
        return rows[0] if rows else None

    def releases(self) -> list[dict]:
        return self.query_dicts("SELECT name, recipe, caption_version, n_clips, n_shards, bytes, created_at, "
                                "manifest_url FROM releases ORDER BY created_at")

    def release_clip_ids(self, name: str) -> set[str]:
        return {r[0] for r in self._fetch("SELECT clip_id FROM release_members WHERE name = ?", [name])}

    def record_release(self, row: dict, members: list[tuple[str, str]]) -> None:
        """The release row and its (clip, shard) members, in one transaction, after its manifest exists."""
        with self.transaction():
            self._upsert("releases", [row])
            self._upsert("release_members", [{"name": row["name"], "clip_id": c, "shard_id": s} for c, s in members])

    def decisions_of(self, recipe: str, clip_ids: list[str]) -> dict[str, tuple[bool, str | None, dt.datetime]]:
        """clip id -> (kept, reason, decided_at) under one recipe id, for the given clips that have one."""
        rows = self._fetch(
            "SELECT clip_id, kept, reason, decided_at FROM decisions WHERE recipe = ? AND clip_id IN (SELECT unnest(?))",
            [recipe, list(clip_ids)])
        return {c: (k, r, t) for c, k, r, t in rows}

    def existing_clip_ids(self, clip_ids: list[str]) -> set[str]:
        return {r[0] for r in self._fetch("SELECT clip_id FROM clips WHERE clip_id IN (SELECT unnest(?))",
                                          [list(clip_ids)])}

    def latent_shards_for(self, cache_key: str) -> dict[str, dict]:
        """Every latent-cache entry of one cache key, by source shard id (one query, not one per shard)."""
        rows = self.query_dicts("SELECT * FROM latent_shards WHERE cache_key = ?", [cache_key])
        return {r["shard_id"]: r for r in rows}

    def record_latent_shards(self, run_id: str, rows: list[dict]) -> None:
        now = _now()
        with self.transaction():
            self._upsert("latent_shards", [r | {"run_id": run_id, "created_at": now} for r in rows])

    # -- filters: recipes, re-decisions, extra scores, embeddings ------------------------------
    def register_recipe(self, recipe_id: str, name: str, version: str, yaml_text: str, description: str = "",
                        run_id: str | None = None) -> str:
        """Record a recipe by content; the same name@version with other content is refused."""
        digest = hashlib.sha256(yaml_text.encode()).hexdigest()
        with self.transaction() as con:
            row = con.execute("SELECT sha256 FROM recipes WHERE recipe = ?", [recipe_id]).fetchall()
            if row:
                if row[0][0] != digest:
                    raise CatalogError(f"recipe {recipe_id} is recorded with other content (sha256 {row[0][0][:12]}); "
                                       f"give the changed recipe a new version")
                return digest
            self._upsert("recipes", [{"recipe": recipe_id, "name": name, "version": version, "sha256": digest,
                                      "yaml": yaml_text, "description": description, "run_id": run_id,
                                      "created_at": _now()}])
        return digest

    def record_decisions(self, run_id: str, decisions: list[dict]) -> int:
        """Upsert (clip_id, recipe, kept, reason) rows in one transaction; scores are not touched.

        clips_wide follows (each clip shows its latest decision): ``_upsert`` maintains it."""
        now = _now()
        rows = [{"clip_id": d["clip_id"], "recipe": d["recipe"], "kept": bool(d["kept"]), "reason": d.get("reason"),
                 "run_id": run_id, "decided_at": now} for d in decisions]
        with self.transaction():
            return self._upsert("decisions", rows)

    def write_captions(self, run_id: str, captions: list[dict]) -> int:
        """Upsert caption rows (clip_id, version, kind, text, model, prompt_version, meta_json) made
        outside a pipeline window (`vidcorpus sync` captioning newly kept clips)."""
        now = _now()
        with self.transaction():
            return self._upsert("captions", [{**c, "run_id": run_id, "written_at": now} for c in captions])

    def write_scores(self, run_id: str, scores: list[dict]) -> int:
        """Upsert (clip_id, scorer, model, version, value) rows computed outside the pipeline (dedup)."""
        now = _now()
        rows = [{**s, "run_id": run_id, "written_at": now} for s in scores]
        with self.transaction():
            return self._upsert("scores", rows)

    def commit_embeddings(self, run_id: str, index: list[dict]) -> int:
        """Index rows (clip_id, model, dim, url, content_sha256) of embeddings written to Parquet."""
        now = _now()
        return self._upsert("embeddings", [{**r, "run_id": run_id, "written_at": now} for r in index])

    def latest_scores(self, clip_ids: list[str] | None = None) -> dict[str, dict[str, float]]:
        """clip_id -> {scorer: latest value} for every clip in `clips` (or the given ones)."""
        where = "" if clip_ids is None else " WHERE c.clip_id IN (SELECT unnest(?))"
        rows = self._fetch(
            "SELECT c.clip_id, s.scorer, arg_max(s.value, s.written_at) FROM clips c "
            f"LEFT JOIN scores s USING (clip_id){where} GROUP BY ALL ORDER BY 1, 2",
            [] if clip_ids is None else [clip_ids])
        out: dict[str, dict[str, float]] = {}
        for clip, scorer, value in rows:
            d = out.setdefault(clip, {})
            if scorer is not None and value is not None:
                d[scorer] = value
        return out

    def current_decisions(self) -> dict[str, dict]:
        """clip_id -> the latest decision (recipe, kept, reason)."""
        rows = self._fetch(
            "SELECT clip_id, arg_max(recipe, decided_at), arg_max(kept, decided_at), arg_max_null(reason, decided_at) "
            "FROM decisions GROUP BY clip_id")
        return {c: {"recipe": r, "kept": k, "reason": why} for c, r, k, why in rows}

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
        from vidcorpus.catalog.verify import verify_catalog

        return verify_catalog(self, shard_roots=shard_roots, checksums=checksums, deep=deep)

    def export(self, url: str) -> dict:
        """Publish a Parquet snapshot with a manifest at ``url`` (local or s3://); returns the manifest."""
        from vidcorpus.catalog.snapshot import export_snapshot

        return export_snapshot(self, url)
