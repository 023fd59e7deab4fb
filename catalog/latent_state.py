"""Latent encoding as pending work (issue 21): kept, sharded clips without latents of the cache key in use.

The latent cache (``shards/latents.py``, ``vidcorpus shards encode``) is optional: a corpus that never
encoded latents has no such work. Once it has, the key in use is the newest cache key recorded in
``latent_shards`` (its encoders, bucket, frames, fps and caption): training with that configuration
looks its sidecars up, so a kept clip whose shards have none of them is decoded and encoded on every
step instead (``train.latent_cache=auto``) or refused (``require``). ``vidcorpus status`` lists those
clips, ``catalog verify`` reports them as the gap ``pending_latents``, and ``vidcorpus sync`` names the
command that encodes them: encoding needs the VAE and CLIP encoders (a GPU's work in production), so
sync, which runs the curation stages, leaves it to ``vidcorpus shards encode`` on a GPU machine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from vidcorpus.catalog.store import Catalog


@dataclass(frozen=True)
class LatentKeyInUse:
    """The newest cache key recorded, with the parameters its entries were encoded with."""

    cache_key: str
    params: dict  # LatentParams fields: height, width, frames, fps, caption_version, caption_kind


def latent_key_in_use(cat: "Catalog") -> LatentKeyInUse | None:
    """The cache key the corpus encodes latents with (the newest one written); None when latents are not used."""
    if not cat.query_dicts("SELECT 1 AS x FROM information_schema.tables WHERE table_name = 'latent_shards'"):
        return None  # a catalog from before the latent cache (read-only, not migrated)
    rows = cat.query_dicts("SELECT cache_key, arg_max(params_json, created_at) AS params_json FROM latent_shards "
                           "GROUP BY cache_key ORDER BY max(created_at) DESC, cache_key LIMIT 1")
    if not rows:
        return None
    return LatentKeyInUse(rows[0]["cache_key"], json.loads(rows[0]["params_json"] or "{}"))


UNENCODED_SQL = """
SELECT w.clip_id AS item FROM clips_wide w
WHERE w.kept AND w.recipe = ?
  AND EXISTS (SELECT 1 FROM shard_members m WHERE m.clip_id = w.clip_id)
  AND NOT EXISTS (SELECT 1 FROM shard_members m JOIN latent_shards l ON l.shard_id = m.shard_id AND l.cache_key = ?
                  WHERE m.clip_id = w.clip_id)
ORDER BY 1
"""


def unencoded_clips(cat: "Catalog", recipe_id: str, key: LatentKeyInUse | None, limit: int | None = None) -> list[str]:
    """Clips kept by ``recipe_id`` and sharded, in no shard with latents of ``key``."""
    if key is None:
        return []
    sql, params = UNENCODED_SQL, [recipe_id, key.cache_key]
    if limit:
        sql, params = sql + " LIMIT ?", params + [int(limit)]
    return [r["item"] for r in cat.query_dicts(sql, params)]


def encode_command(key: LatentKeyInUse, cfg) -> str:
    """The `vidcorpus shards encode` line that writes the missing entries of ``key`` (encoded shards are
    reused), with ``--set`` where the key's caption differs from what ``cfg`` (a ``Config``) would encode."""
    p = key.params
    parts = ["vidcorpus shards encode --select kept"]
    parts += [f"--{name} {p[name]}" for name in ("height", "width", "frames", "fps") if name in p]
    if p.get("caption_version") and p["caption_version"] != (cfg.train.caption_version or cfg.shards.caption_version):
        parts.append(f"--set train.caption_version={p['caption_version']}")
    if p.get("caption_kind", "long") != cfg.train.caption_kind:
        parts.append(f"--set train.caption_kind={p['caption_kind']}")
    return " ".join(parts)
