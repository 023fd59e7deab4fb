"""The DuckDB catalog: the system of record. Only the driver writes, in transactions, as upserts.

Readers open the file read-only (``Catalog(path, read_only=True)``); ``vidcorpus sql`` does.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

import duckdb
import pyarrow as pa

from vidcorpus.catalog.schema import FUNNEL_SQL, LATEST_VERSION, MIGRATIONS, wide_view_sql
from vidcorpus.schemas import SHARD_SCHEMA


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class CatalogError(RuntimeError):
    """The catalog cannot be opened (missing file for a reader, locked by another writer...)."""


class Catalog:
    def __init__(self, path: str | os.PathLike, read_only: bool = False):
        self.path = str(path)
        if read_only and not Path(self.path).exists():
            raise CatalogError(f"no catalog at {self.path} (run `vidcorpus demo` or `vidcorpus run` first)")
        if not read_only:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.con = duckdb.connect(self.path, read_only=read_only)
        except duckdb.IOException as e:
            raise CatalogError(f"cannot open catalog {self.path}: {e}") from e
        self.read_only = read_only
        if not read_only:
            self._migrate()

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _migrate(self) -> None:
        self.con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)")
        current = self.con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchall()[0][0]
        for version, ddl in MIGRATIONS:
            if version <= current:
                continue
            self.con.begin()
            self.con.execute(ddl)
            self.con.execute("INSERT INTO schema_version VALUES (?, ?)", [version, _now()])
            self.con.commit()
        self.refresh_views()

    @property
    def schema_version(self) -> int:
        return self.con.execute("SELECT max(version) FROM schema_version").fetchall()[0][0]

    def refresh_views(self) -> None:
        """(Re)create the wide clip view with one column per scorer present, and the funnel."""
        scorers = [r[0] for r in self.con.execute("SELECT DISTINCT scorer FROM scores ORDER BY 1").fetchall()]
        self.con.execute(wide_view_sql(scorers))
        self.con.execute(FUNNEL_SQL)

    # -- runs --------------------------------------------------------------------------------
    def begin_run(self, run_id: str, kind: str, config_json: str, code_version: str) -> None:
        self.con.execute(
            "INSERT OR REPLACE INTO runs VALUES (?, ?, 'running', ?, NULL, ?, ?, NULL)",
            [run_id, kind, _now(), config_json, code_version],
        )

    def finish_run(self, run_id: str, status: str, stats: dict) -> None:
        self.con.execute(
            "UPDATE runs SET status = ?, finished_at = ?, stats_json = ? WHERE run_id = ?",
            [status, _now(), json.dumps(stats, default=str), run_id],
        )

    # -- reads the driver needs --------------------------------------------------------------
    def done_source_ids(self) -> set[str]:
        return {r[0] for r in self.con.execute("SELECT source_id FROM sources WHERE status = 'done'").fetchall()}

    def failed_source_ids(self, error_class: str | None = None) -> set[str]:
        sql = "SELECT DISTINCT source_id FROM failures WHERE source_id IS NOT NULL"
        params: list[Any] = []
        if error_class:
            sql += " AND error_class = ?"
            params.append(error_class)
        return {r[0] for r in self.con.execute(sql, params).fetchall()}

    def unsharded_kept(self) -> list[dict]:
        """Kept clips that no shard holds yet: what the shard writer must pack next."""
        return self.query_dicts(
            "SELECT * FROM clips_wide WHERE kept AND shard_id IS NULL ORDER BY clip_id"
        )

    def scores_of(self, clip_ids: list[str]) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {c: [] for c in clip_ids}
        rows = self.con.execute(
            "SELECT clip_id, scorer, model, version, value FROM scores WHERE clip_id IN (SELECT unnest(?)) ORDER BY 1, 2",
            [clip_ids],
        ).fetchall()
        for clip, scorer, model, version, value in rows:
            out[clip].append({"scorer": scorer, "model": model, "version": version, "value": value})
        return out

    def captions_of(self, clip_ids: list[str]) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {c: [] for c in clip_ids}
        rows = self.con.execute(
            "SELECT clip_id, version, kind, text, model, prompt_version, meta_json FROM captions "
            "WHERE clip_id IN (SELECT unnest(?)) ORDER BY 1, 2, 3",
            [clip_ids],
        ).fetchall()
        for clip, version, kind, text, model, pv, meta in rows:
            out[clip].append({"version": version, "kind": kind, "text": text, "model": model, "prompt_version": pv,
                              "meta_json": meta})
        return out

    def shard_urls_for(self, predicate: str = "TRUE") -> list[tuple[str, str, int]]:
        """(url, sha256, matching samples) of the shards that hold clips matching a SQL predicate."""
        return self.con.execute(
            f"SELECT sh.url, sh.sha256, count(*) FROM shards sh JOIN shard_members m USING (shard_id) "
            f"JOIN (SELECT * FROM clips_wide WHERE {predicate}) w ON w.clip_id = m.clip_id "
            f"GROUP BY sh.url, sh.sha256 ORDER BY sh.url"
        ).fetchall()

    def shard_rows_for(self, predicate: str = "TRUE") -> list[dict]:
        """Shard rows (id, url, sha256, bytes, n, bucket) holding clips that match a SQL predicate."""
        return self.query_dicts(
            f"SELECT DISTINCT sh.shard_id, sh.url, sh.sha256, sh.bytes, sh.n, sh.bucket FROM shards sh "
            f"JOIN shard_members m USING (shard_id) JOIN (SELECT clip_id FROM clips_wide WHERE {predicate}) w "
            f"ON w.clip_id = m.clip_id ORDER BY sh.shard_id")

    def clip_ids_for(self, predicate: str = "TRUE") -> set[str]:
        return {r[0] for r in self.con.execute(f"SELECT clip_id FROM clips_wide WHERE {predicate}").fetchall()}

    # -- writes ------------------------------------------------------------------------------
    def _upsert(self, table: str, rows: list[dict]) -> int:
        if not rows:
            return 0
        arrow = pa.Table.from_pylist(rows)
        self.con.register("_rows", arrow)
        try:
            self.con.execute(f"INSERT OR REPLACE INTO {table} BY NAME SELECT * FROM _rows")
        finally:
            self.con.unregister("_rows")
        return len(rows)

    def commit_results(self, run_id: str, rows: Iterable[dict], failed_before: Iterable[str] = ()) -> dict[str, int]:
        """Write one batch of pipeline rows (sources, clips, scores, captions, decisions, failures).

        All in one transaction. A source stays 'failed' once any of its rows failed in this run
        (``failed_before`` carries that across batches), so a rerun retries exactly the failed
        sources; failure rows of earlier runs are replaced by this run's.
        """
        now = _now()
        rows = list(rows)
        src_cols = ("source_id", "uri", "text", "meta_json", "media_type", "source_path", "sha256", "bytes",
                    "container", "codec", "width", "height", "fps", "n_frames", "duration_s",
                    "bitrate", "has_audio", "audio_codec", "rotation")
        sources: dict[str, dict] = {}
        failed_sources: set[str] = set()
        failed_before = set(failed_before)
        clips, scores, captions, decisions, failures = [], [], [], [], []
        for r in rows:
            sid = r.get("source_id")
            if sid and sid not in sources:
                sources[sid] = {c: r.get(c) for c in src_cols}
            if r.get("error_class"):
                item = r.get("clip_id") or sid or "input-" + hashlib.sha256(str(r.get("error")).encode()).hexdigest()[:16]
                failures.append({"item_id": item, "stage": r["error_stage"], "source_id": sid, "uri": r.get("uri"),
                                 "error_class": r["error_class"], "error": r.get("error"), "run_id": run_id,
                                 "failed_at": now, "attempts": 1})
                if sid:
                    failed_sources.add(sid)
                continue
            if not r.get("clip_id"):
                continue
            fps = r.get("fps")
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
        self.con.begin()
        try:
            # attempts count up across reruns of the same failing source or item
            for f in failures:
                prev = self.con.execute(
                    "SELECT max(attempts) FROM failures WHERE (item_id = ? AND stage = ?) OR source_id = ?",
                    [f["item_id"], f["stage"], f["source_id"]]).fetchall()[0][0]
                f["attempts"] = (prev or 0) + 1
            if failed_sources:
                self.con.execute("DELETE FROM failures WHERE source_id IN (SELECT unnest(?)) AND run_id <> ?",
                                 [sorted(failed_sources), run_id])
            counts["sources"] = self._upsert("sources", list(sources.values()))
            counts["clips"] = self._upsert("clips", clips)
            counts["scores"] = self._upsert("scores", scores)
            counts["captions"] = self._upsert("captions", captions)
            counts["decisions"] = self._upsert("decisions", decisions)
            counts["failures"] = self._upsert("failures", failures)
            self.con.commit()
        except BaseException:
            self.con.rollback()
            raise
        if scores:
            self.refresh_views()
        return counts

    def mark_sources_done(self, source_ids: Iterable[str]) -> None:
        """After a run has committed every row of these sources: done, and old failures cleared."""
        ids = list(source_ids)
        if not ids:
            return
        self.con.begin()
        try:
            self.con.execute("UPDATE sources SET status = 'done' WHERE source_id IN (SELECT unnest(?)) "
                             "AND status = 'partial'", [ids])
            self.con.execute("DELETE FROM failures WHERE source_id IN (SELECT unnest(?)) AND source_id IN "
                             "(SELECT source_id FROM sources WHERE status = 'done')", [ids])
            self.con.commit()
        except BaseException:
            self.con.rollback()
            raise

    def commit_shards(self, run_id: str, shards: list[dict]) -> None:
        """Record published shards and their members; called only after the tar is visible."""
        now = _now()
        shards = pa.Table.from_pylist(shards, schema=SHARD_SCHEMA).to_pylist()  # a malformed manifest fails here
        self.con.begin()
        try:
            self._upsert("shards", [{k: v for k, v in s.items() if k != "members"} | {"run_id": run_id, "created_at": now}
                                    for s in shards])
            self._upsert("shard_members", [{"shard_id": s["shard_id"], "clip_id": c} for s in shards for c in s["members"]])
            self.con.commit()
        except BaseException:
            self.con.rollback()
            raise

    def record_training(self, run_id: str, stage: str, select_sql: str, steps: int, final_loss: float | None,
                        checkpoint: str, shard_urls: list[str], config_json: str, started_at: dt.datetime,
                        samples: list[tuple[int, str]]) -> None:
        self.con.begin()
        try:
            self._upsert("train_runs", [{
                "run_id": run_id, "stage": stage, "select_sql": select_sql, "steps": steps, "final_loss": final_loss,
                "checkpoint": checkpoint, "shard_urls": json.dumps(shard_urls), "config_json": config_json,
                "started_at": started_at, "finished_at": _now()}])
            self._upsert("train_samples", [{"run_id": run_id, "step": s, "clip_id": c} for s, c in sorted(set(samples))])
            self.con.commit()
        except BaseException:
            self.con.rollback()
            raise

    def record_failure(self, item_id: str, stage: str, error_class: str, error: str, run_id: str,
                       source_id: str | None = None) -> None:
        self._upsert("failures", [{"item_id": item_id, "stage": stage, "source_id": source_id, "uri": None,
                                   "error_class": error_class, "error": error[:2000], "run_id": run_id,
                                   "failed_at": _now(), "attempts": 1}])

    # -- releases and the latent cache (issue 7) ----------------------------------------------
    def recipe_ids(self, name_or_id: str) -> list[str]:
        """Recipe ids (``name@version``) with decisions, matching a name or an exact id; newest first."""
        return [r[0] for r in self.con.execute(
            "SELECT recipe FROM decisions WHERE recipe = ? OR recipe LIKE ? || '@%' "
            "GROUP BY recipe ORDER BY max(decided_at) DESC", [name_or_id, name_or_id]).fetchall()]

    def release(self, name: str) -> dict | None:
        rows = self.query_dicts("SELECT * FROM releases WHERE name = ?", [name])
        return rows[0] if rows else None

    def releases(self) -> list[dict]:
        return self.query_dicts("SELECT name, recipe, caption_version, n_clips, n_shards, bytes, created_at, "
                                "manifest_url FROM releases ORDER BY created_at")

    def release_clip_ids(self, name: str) -> set[str]:
        return {r[0] for r in self.con.execute("SELECT clip_id FROM release_members WHERE name = ?", [name]).fetchall()}

    def record_release(self, row: dict, members: list[tuple[str, str]]) -> None:
        """The release row and its (clip, shard) members, in one transaction, after its manifest exists."""
        self.con.begin()
        try:
            self._upsert("releases", [row])
            self._upsert("release_members", [{"name": row["name"], "clip_id": c, "shard_id": s} for c, s in members])
            self.con.commit()
        except BaseException:
            self.con.rollback()
            raise

    def decisions_of(self, recipe: str, clip_ids: list[str]) -> dict[str, tuple[bool, str | None, dt.datetime]]:
        """clip id -> (kept, reason, decided_at) under one recipe id, for the given clips that have one."""
        rows = self.con.execute(
            "SELECT clip_id, kept, reason, decided_at FROM decisions WHERE recipe = ? AND clip_id IN (SELECT unnest(?))",
            [recipe, list(clip_ids)]).fetchall()
        return {c: (k, r, t) for c, k, r, t in rows}

    def existing_clip_ids(self, clip_ids: list[str]) -> set[str]:
        return {r[0] for r in self.con.execute(
            "SELECT clip_id FROM clips WHERE clip_id IN (SELECT unnest(?))", [list(clip_ids)]).fetchall()}

    def latent_shard(self, shard_id: str, cache_key: str) -> dict | None:
        rows = self.query_dicts("SELECT * FROM latent_shards WHERE shard_id = ? AND cache_key = ?", [shard_id, cache_key])
        return rows[0] if rows else None

    def record_latent_shards(self, run_id: str, rows: list[dict]) -> None:
        now = _now()
        self.con.begin()
        try:
            self._upsert("latent_shards", [r | {"run_id": run_id, "created_at": now} for r in rows])
            self.con.commit()
        except BaseException:
            self.con.rollback()
            raise

    # -- filters: recipes, re-decisions, extra scores, embeddings ------------------------------
    def register_recipe(self, recipe_id: str, name: str, version: str, yaml_text: str, description: str = "",
                        run_id: str | None = None) -> str:
        """Record a recipe by content; the same name@version with other content is refused."""
        digest = hashlib.sha256(yaml_text.encode()).hexdigest()
        row = self.con.execute("SELECT sha256 FROM recipes WHERE recipe = ?", [recipe_id]).fetchall()
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
        """Upsert (clip_id, recipe, kept, reason) rows in one transaction; scores are not touched."""
        now = _now()
        rows = [{"clip_id": d["clip_id"], "recipe": d["recipe"], "kept": bool(d["kept"]), "reason": d.get("reason"),
                 "run_id": run_id, "decided_at": now} for d in decisions]
        self.con.begin()
        try:
            n = self._upsert("decisions", rows)
            self.con.commit()
        except BaseException:
            self.con.rollback()
            raise
        self.refresh_views()  # the wide clip table shows each clip's latest decision
        return n

    def write_scores(self, run_id: str, scores: list[dict]) -> int:
        """Upsert (clip_id, scorer, model, version, value) rows computed outside the pipeline (dedup)."""
        now = _now()
        rows = [{**s, "run_id": run_id, "written_at": now} for s in scores]
        self.con.begin()
        try:
            n = self._upsert("scores", rows)
            self.con.commit()
        except BaseException:
            self.con.rollback()
            raise
        if rows:
            self.refresh_views()
        return n

    def commit_embeddings(self, run_id: str, index: list[dict]) -> int:
        """Index rows (clip_id, model, dim, url, content_sha256) of embeddings written to Parquet."""
        now = _now()
        return self._upsert("embeddings", [{**r, "run_id": run_id, "written_at": now} for r in index])

    def latest_scores(self, clip_ids: list[str] | None = None) -> dict[str, dict[str, float]]:
        """clip_id -> {scorer: latest value} for every clip in `clips` (or the given ones)."""
        where = "" if clip_ids is None else " WHERE c.clip_id IN (SELECT unnest(?))"
        rows = self.con.execute(
            "SELECT c.clip_id, s.scorer, arg_max(s.value, s.written_at) FROM clips c "
            f"LEFT JOIN scores s USING (clip_id){where} GROUP BY ALL ORDER BY 1, 2",
            [] if clip_ids is None else [clip_ids]).fetchall()
        out: dict[str, dict[str, float]] = {}
        for clip, scorer, value in rows:
            d = out.setdefault(clip, {})
            if scorer is not None and value is not None:
                d[scorer] = value
        return out

    def current_decisions(self) -> dict[str, dict]:
        """clip_id -> the latest decision (recipe, kept, reason)."""
        rows = self.con.execute(
            "SELECT clip_id, arg_max(recipe, decided_at), arg_max(kept, decided_at), arg_max(reason, decided_at) "
            "FROM decisions GROUP BY clip_id").fetchall()
        return {c: {"recipe": r, "kept": k, "reason": why} for c, r, k, why in rows}

    # -- queries -----------------------------------------------------------------------------
    def query(self, sql: str, params: list | None = None) -> pa.Table:
        return self.con.sql(sql, params=params).to_arrow_table() if params else self.con.sql(sql).to_arrow_table()

    def query_dicts(self, sql: str, params: list | None = None) -> list[dict]:
        return self.query(sql, params).to_pylist()

    def funnel(self) -> list[dict]:
        return self.query_dicts("SELECT stage, n, hours FROM funnel ORDER BY step")
