"""What the catalog records of curation outside a pipeline window, as ``Catalog`` methods: recipes
by content, re-decisions, scores and captions added later (dedup, ``vidcorpus sync``), embeddings.

A mixin of ``Catalog`` (``catalog/store.py``), kept apart so that the store holds the file's
transactions and the driver's batch writes; these go through the same ``_fetch``,
``transaction`` and ``_upsert``.
"""

from __future__ import annotations

import hashlib

from vidcorpus.catalog.catalog_error import CatalogError
from vidcorpus.catalog.timestamps import utc_now


class CurationRecords:
    """Recipes, decisions, scores, captions and embeddings written by the filter commands (mixed into ``Catalog``)."""

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
                                      "created_at": utc_now()}])
        return digest

    def record_decisions(self, run_id: str, decisions: list[dict]) -> int:
        """Upsert (clip_id, recipe, kept, reason) rows in one transaction; scores are not touched.

        clips_wide follows (each clip shows its latest decision): ``_upsert`` maintains it."""
        now = utc_now()
        rows = [{"clip_id": d["clip_id"], "recipe": d["recipe"], "kept": bool(d["kept"]), "reason": d.get("reason"),
                 "run_id": run_id, "decided_at": now} for d in decisions]
        with self.transaction():
            return self._upsert("decisions", rows)

    def write_captions(self, run_id: str, captions: list[dict]) -> int:
        """Upsert caption rows (clip_id, version, kind, text, model, prompt_version, meta_json) made
        outside a pipeline window (`vidcorpus sync` captioning newly kept clips)."""
        now = utc_now()
        with self.transaction():
            return self._upsert("captions", [{**c, "run_id": run_id, "written_at": now} for c in captions])

    def write_scores(self, run_id: str, scores: list[dict]) -> int:
        """Upsert (clip_id, scorer, model, version, value) rows computed outside the pipeline (dedup)."""
        now = utc_now()
        rows = [{**s, "run_id": run_id, "written_at": now} for s in scores]
        with self.transaction():
            return self._upsert("scores", rows)

    def commit_embeddings(self, run_id: str, index: list[dict]) -> int:
        """Index rows (clip_id, model, dim, url, content_sha256) of embeddings written to Parquet."""
        now = utc_now()
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
