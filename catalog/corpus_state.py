"""One corpus state (issue 21): which recipe is in force, and what derived work it still needs.

The active recipe is catalog state, not a config default: ``filter apply`` (or a run whose config
names another recipe) records it in ``recipe_history`` by id and content hash, and every command
that decides, dedups, shards, releases, trains or reports reads it from here. Its content lives
in the ``recipes`` table, so a recipe that came from a YAML file stays readable by name after the
file is gone.

``pending_work`` says, for the active recipe's kept clips, what is not done yet (captions of the
configured version, shards, and latents once the corpus uses the latent cache: ``latent_state.py``);
``state_gaps`` turns the same facts, plus the ones that must never be
(a shard or release holding a clip without its caption), into ``catalog verify`` rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vidcorpus.catalog.latent_state import LatentKeyInUse, latent_key_in_use, unencoded_clips
from vidcorpus.catalog.schema import ACTIVE_RECIPE_SQL
from vidcorpus.catalog.timestamps import utc_now
from vidcorpus.recipe_model import Recipe, recipe_from_text, register
from vidcorpus.storage import is_url, local_path

if TYPE_CHECKING:  # pragma: no cover
    from vidcorpus.catalog.store import Catalog


def _has_history(cat: "Catalog") -> bool:
    return bool(cat.query_dicts("SELECT 1 AS x FROM information_schema.tables WHERE table_name = 'recipe_history'"))


def active_recipe_id(cat: "Catalog") -> str | None:
    """The recipe in force (``name@version``): the newest history row, else the newest decision's."""
    if not _has_history(cat):
        rows = cat.query_dicts("SELECT arg_max(recipe, decided_at) AS r FROM decisions")
    else:
        rows = cat.query_dicts(f"SELECT {ACTIVE_RECIPE_SQL} AS r")
    return rows[0]["r"] if rows else None


def recipe_history(cat: "Catalog") -> list[dict]:
    """Every change of the active recipe, oldest first (seq, recipe, sha256, origin, run_id, set_at)."""
    if not _has_history(cat):
        return []
    return cat.query_dicts("SELECT * FROM recipe_history ORDER BY seq")


def set_active_recipe(cat: "Catalog", recipe: Recipe, origin: str, run_id: str | None = None) -> bool:
    """Record ``recipe`` as the one in force (registering its content); False when it already was."""
    digest = register(cat, recipe, run_id)
    history = recipe_history(cat)
    if history and history[-1]["recipe"] == recipe.id and history[-1]["sha256"] == digest:
        return False
    seq = (history[-1]["seq"] + 1) if history else 1
    with cat.transaction() as con:
        con.execute("INSERT INTO recipe_history VALUES (?, ?, ?, ?, ?, ?)",
                    [seq, recipe.id, digest, origin, run_id, utc_now()])
    return True


def stored_recipe(cat: "Catalog", name_or_id: str) -> Recipe | None:
    """A recipe the catalog recorded, by id (``name@version``) or name (its newest version)."""
    rows = cat.query_dicts("SELECT yaml FROM recipes WHERE recipe = ? OR name = ? ORDER BY (recipe = ?) DESC, "
                           "created_at DESC LIMIT 1", [name_or_id, name_or_id, name_or_id])
    return recipe_from_text(rows[0]["yaml"]) if rows else None


def active_recipe(cat: "Catalog") -> Recipe | None:
    rid = active_recipe_id(cat)
    return stored_recipe(cat, rid) if rid else None


@dataclass
class PendingWork:
    """What the active recipe's kept clips still need, by stage (clip ids, sorted)."""

    recipe: str | None
    caption_version: str
    shard_caption_version: str
    undecided: list[str] = field(default_factory=list)      # clips the active recipe has not decided
    unextracted: list[str] = field(default_factory=list)    # kept, but no clip file (none recorded, or gone)
    uncaptioned: list[str] = field(default_factory=list)    # kept, lacking the long or short caption_version
    unsharded: list[str] = field(default_factory=list)      # kept, in no shard
    sharded_dropped: list[str] = field(default_factory=list)  # in a shard, not kept (shards are immutable)
    latent_key: "LatentKeyInUse | None" = None  # the latent cache key in use (None: latents not used)
    unencoded: list[str] = field(default_factory=list)  # kept and sharded, no latents of latent_key

    @property
    def total(self) -> int:
        """Work `vidcorpus sync` can do (sharded-but-dropped clips need none: readers skip them; latents
        are `vidcorpus shards encode`'s work, on a GPU)."""
        return len(self.undecided) + len(self.unextracted) + len(self.uncaptioned) + len(self.unsharded)


KEPT_BY = "kept AND recipe = ?"
"""Kept by a recipe (its id is the parameter; catalogs opened read-only before migration 8 have no
history to read the recipe in force from)."""


def pending_work(cat: "Catalog", caption_version: str, shard_caption_version: str | None = None) -> PendingWork:
    """The active recipe's pending work: decisions, captions of ``caption_version``, shards."""
    shard_caption_version = shard_caption_version or caption_version
    rid = active_recipe_id(cat)
    pw = PendingWork(recipe=rid, caption_version=caption_version, shard_caption_version=shard_caption_version)
    if rid is None:
        return pw

    def ids(sql: str, params: list | None = None) -> list[str]:
        return [r["clip_id"] for r in cat.query_dicts(sql + " ORDER BY clip_id", params)]

    kept = KEPT_BY
    pw.undecided = ids("SELECT clip_id FROM clips_wide WHERE recipe IS DISTINCT FROM ?", [rid])
    pw.unextracted = sorted(kept_without_file(cat, rid))
    pw.uncaptioned = ids(f"SELECT clip_id FROM clips_wide w WHERE {kept} AND (SELECT count(DISTINCT kind) FROM "
                         "captions c WHERE c.clip_id = w.clip_id AND c.version = ? AND c.kind IN ('long', 'short')) "
                         "< 2", [rid, caption_version])
    pw.unsharded = ids(f"SELECT clip_id FROM clips_wide WHERE {kept} AND shard_id IS NULL", [rid])
    pw.sharded_dropped = ids(f"SELECT clip_id FROM clips_wide WHERE shard_id IS NOT NULL AND NOT coalesce({kept}, FALSE)",
                             [rid])
    pw.latent_key = latent_key_in_use(cat)
    pw.unencoded = unencoded_clips(cat, rid, pw.latent_key)
    return pw


def _local_file_missing(path: str) -> bool:
    """A local clip file that is not there (object-store paths are not probed one by one)."""
    return not is_url(path) and not os.path.exists(local_path(path))


def kept_without_file(cat: "Catalog", recipe_id: str) -> dict[str, str]:
    """{clip id: why} of the clips the recipe keeps that have no clip file: none was extracted (the
    recipe that decided it first dropped it: filter before you encode) or the recorded local file is
    gone. `vidcorpus sync` extracts them from their sources."""
    rows = cat.query_dicts(f"SELECT clip_id, clip_path FROM clips_wide WHERE {KEPT_BY} ORDER BY clip_id", [recipe_id])
    out: dict[str, str] = {}
    for r in rows:
        if not r["clip_path"]:
            out[r["clip_id"]] = "not extracted"
        elif _local_file_missing(r["clip_path"]):
            out[r["clip_id"]] = f"clip file {r['clip_path']} is missing"
    return out


def uncaptioned_for(cat: "Catalog", clip_ids: list[str], caption_version: str) -> list[str]:
    """Those of ``clip_ids`` without a long caption of ``caption_version`` (what a shard's txt needs)."""
    if not clip_ids:
        return []
    rows = cat.query_dicts("SELECT clip_id FROM (SELECT unnest(?) AS clip_id) w WHERE NOT EXISTS (SELECT 1 FROM "
                           "captions c WHERE c.clip_id = w.clip_id AND c.version = ? AND c.kind = 'long') "
                           "ORDER BY clip_id", [list(clip_ids), caption_version])
    return [r["clip_id"] for r in rows]


def _rows(cat: "Catalog", check: str, sql: str, detail, params: list | None = None) -> list[dict]:
    return [{"check": check, "item": r["item"], "detail": detail(r)}
            for r in cat.query_dicts(sql + " ORDER BY 1 LIMIT 1000", params)]


def state_problems(cat: "Catalog") -> list[dict]:
    """``catalog verify`` problems: a shard or release holding a clip without the caption it was
    written with (its txt was empty: training learned from nothing)."""
    return _rows(cat, "shard_member_uncaptioned",
                 "SELECT m.clip_id AS item, s.shard_id, s.caption_version FROM shard_members m JOIN shards s "
                 "USING (shard_id) WHERE NOT EXISTS (SELECT 1 FROM captions c WHERE c.clip_id = m.clip_id "
                 "AND c.kind = 'long' AND c.version = s.caption_version)",
                 lambda r: f"shard {r['shard_id']} holds the clip without its {r['caption_version']} caption") + _rows(
        cat, "release_member_uncaptioned",
        "SELECT m.clip_id AS item, r.name FROM release_members m JOIN releases r USING (name) "
        "WHERE NOT EXISTS (SELECT 1 FROM captions c WHERE c.clip_id = m.clip_id AND c.kind = 'long' "
        "AND c.version = r.caption_version)",
        lambda r: f"release {r['name']} holds the clip without its caption")


def state_gaps(cat: "Catalog") -> list[dict]:
    """``catalog verify`` gaps: under the active recipe, work `vidcorpus sync` completes (clips it has
    not decided, kept clips without a clip file, a caption or a shard), and clips readers skip (sharded clips it
    drops; release members their recipe no longer keeps). Not errors: the state after a re-decision."""
    rid = active_recipe_id(cat)
    if rid is None:
        return []
    kept = KEPT_BY
    key = latent_key_in_use(cat)
    unextracted = [{"check": "pending_extract", "item": clip, "detail": f"kept by {rid} but {why} (run `vidcorpus sync`)"}
                   for clip, why in list(kept_without_file(cat, rid).items())[:1000]]
    return unextracted + (
        _rows(cat, "pending_decision", "SELECT clip_id AS item FROM clips_wide WHERE recipe IS DISTINCT FROM ?",
              lambda r: f"not decided by the active recipe {rid} (run `vidcorpus sync`)", [rid])
        + _rows(cat, "pending_caption", f"SELECT clip_id AS item FROM clips_wide WHERE {kept} AND NOT captioned",
                lambda r: f"kept by {rid} but not captioned (run `vidcorpus sync`)", [rid])
        + _rows(cat, "pending_shard", f"SELECT clip_id AS item FROM clips_wide WHERE {kept} AND shard_id IS NULL",
                lambda r: f"kept by {rid} but in no shard (run `vidcorpus sync`)", [rid])
        + ([{"check": "pending_latents", "item": c,
             "detail": f"kept by {rid} and sharded, but no latents of cache key {key.cache_key} "
                       "(run `vidcorpus shards encode` on a GPU; `vidcorpus status` shows the command)"}
            for c in unencoded_clips(cat, rid, key, limit=1000)] if key else [])
        + _rows(cat, "sharded_dropped", "SELECT clip_id AS item, shard_id FROM clips_wide WHERE shard_id IS NOT NULL "
                f"AND NOT coalesce({kept}, FALSE)",
                lambda r: f"in shard {r['shard_id']} but dropped by {rid} (training and releases skip it)", [rid])
        + _rows(cat, "release_member_not_kept",
                "SELECT m.clip_id AS item, r.name, r.recipe FROM release_members m JOIN releases r USING (name) "
                "WHERE NOT EXISTS (SELECT 1 FROM decisions d WHERE d.clip_id = m.clip_id AND d.recipe = r.recipe "
                "AND d.kept)", lambda r: f"release {r['name']} holds a clip {r['recipe']} no longer keeps")
    )
