"""What the catalog records of releases and of the latent cache (issue 7), as ``Catalog`` methods.

A mixin of ``Catalog`` (``catalog/store.py``), kept apart so that the store holds the file's
transactions and the driver's writes, and this the records the release and encode commands read
and write through the same connection (``_fetch``, ``query_dicts``, ``transaction``, ``_upsert``).
"""

from __future__ import annotations

import datetime as dt

from vidcorpus.catalog.timestamps import utc_now


class ReleaseRecords:
    """Releases, their members, and latent-cache entries (mixed into ``Catalog``)."""

    def recipe_ids(self, name_or_id: str) -> list[str]:
        """Recipe ids (``name@version``) with decisions, matching a name or an exact id; newest first."""
        return [r[0] for r in self._fetch(
            "SELECT recipe FROM decisions WHERE recipe = ? OR starts_with(recipe, ? || '@') "
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
        now = utc_now()
        with self.transaction():
            self._upsert("latent_shards", [r | {"run_id": run_id, "created_at": now} for r in rows])
