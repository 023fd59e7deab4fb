"""Driver side of releases: freeze a recipe's kept clips into a named shard set, list, diff.

``create_release`` reuses every existing shard whose members all belong to the release and that
carries the requested caption version (shards are immutable and content-addressed, so sharing
them is safe), packs the remaining clips into new shards with the ordinary writer, then writes
the release's files (``shards/release_files.py``) and finally its catalog rows. A rerun after a crash
adopts a manifest that was published but not recorded; a finished release is never changed.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from dataclasses import dataclass, field

import fsspec
import pyarrow as pa

from vidcorpus.catalog.corpus_state import active_recipe_id, uncaptioned_for
from vidcorpus.catalog.safe_sql import RefusedSQL, check_predicate
from vidcorpus.catalog.store import Catalog
from vidcorpus.config import Config
from vidcorpus.ids import new_run_id
from vidcorpus.jobs.pack_shards import pack_clips
from vidcorpus.shard_reader import load_manifest
from vidcorpus.shards.release_files import (
    ReleaseError,
    build_manifest,
    check_name,
    manifest_url,
    parquet_bytes,
    read_release_clips,
    release_root,
    select_reusable_shards,
    sha256_hex,
    write_release_files,
)

logger = logging.getLogger(__name__)


@dataclass
class ReleaseSummary:
    name: str
    manifest_url: str
    n_clips: int
    n_shards: int
    reused_shards: int
    new_shards: int
    bytes: int
    adopted: bool = False  # the manifest existed (a crashed earlier create) and was recorded now


def _recipe_id(cat, recipe: str) -> str:
    ids = cat.recipe_ids(recipe)
    if not ids:
        known = [r[0] for r in cat.con.execute("SELECT DISTINCT recipe FROM decisions ORDER BY 1").fetchall()]
        raise ReleaseError(f"no clip has a decision under recipe {recipe!r} "
                           f"(recipes with decisions: {', '.join(known) or 'none'}); decide with that recipe first")
    return ids[0]


def _members(cat, recipe_id: str, select: str | None) -> pa.Table:
    """Wide rows of the clips the recipe keeps (and the selection matches), with that recipe's decision."""
    try:
        select = check_predicate(cat, select) if select else None
    except RefusedSQL:
        raise
    except Exception as e:  # noqa: BLE001 - DuckDB parser/binder errors for a user's predicate
        raise ReleaseError(f"--select {select!r} is not a valid predicate over clips_wide: {e}") from e
    sql = f"""
        WITH w AS (
            SELECT w.* EXCLUDE (recipe, kept, reason), d.recipe, d.kept, d.reason
            FROM clips_wide w JOIN decisions d ON d.clip_id = w.clip_id AND d.recipe = ?
        )
        SELECT * FROM w WHERE kept AND ({select or 'TRUE'}) ORDER BY clip_id
    """
    try:
        return cat.query(sql, [recipe_id])
    except Exception as e:  # noqa: BLE001 - DuckDB parser/binder errors for a user's predicate
        raise ReleaseError(f"--select {select!r} is not a valid predicate over clips_wide: {e}") from e


def _reusable(cat, ids: list[str], caption_version: str) -> tuple[list[dict], dict[str, list[str]]]:
    candidates = cat.query_dicts(
        """SELECT s.shard_id, s.url, s.sha256, s.bytes, s.n, s.bucket FROM shards s
           WHERE s.caption_version = ? AND NOT EXISTS (
               SELECT 1 FROM shard_members m WHERE m.shard_id = s.shard_id AND m.clip_id NOT IN (SELECT unnest(?)))""",
        [caption_version, ids])
    members: dict[str, list[str]] = defaultdict(list)
    if candidates:
        for sid, cid in cat.con.execute(
                "SELECT shard_id, clip_id FROM shard_members WHERE shard_id IN (SELECT unnest(?))",
                [[c["shard_id"] for c in candidates]]).fetchall():
            members[sid].append(cid)
    present = []
    for c in candidates:  # a shard file that vanished is not reused (verify reports it)
        fs, path = fsspec.core.url_to_fs(c["url"])
        if fs.exists(path):
            present.append(c)
    return present, members


def create_release(cfg: Config, name: str, recipe: str | None = None, caption_version: str | None = None,
                   select: str | None = None, progress: bool = True,
                   allow_uncaptioned: bool = False) -> ReleaseSummary:
    """Freeze the clips ``recipe`` (default: the catalog's active recipe) keeps, optionally narrowed
    by ``select``, into release ``name``. A member without a caption of ``caption_version`` is
    refused unless ``allow_uncaptioned`` (its txt would be empty)."""
    check_name(name)
    caption_version = caption_version or cfg.shards.caption_version
    root = release_root(cfg.url(), name)  # absolute: the manifest URL is stored and read from anywhere
    with Catalog(cfg.catalog_path) as cat:
        existing = cat.release(name)
        if existing:
            raise ReleaseError(f"release {name!r} exists (created {existing['created_at']}, {existing['n_clips']} clips); "
                               f"releases are immutable: choose another name")
        adopted = _adopt_published(cat, name, root)
        if adopted is not None:
            return adopted
        recipe_id, table = _members_to_release(cat, name, recipe, select, caption_version, allow_uncaptioned)
        ids = table.column("clip_id").to_pylist()
        candidates, members_of = _reusable(cat, ids, caption_version)
        reused, covered = select_reusable_shards(candidates, members_of)
        rest = [row for row in table.to_pylist() if row["clip_id"] not in covered]
        logger.info(f"release {name}: {len(ids)} clips kept by {recipe_id}; {len(reused)} existing shards reused, "
                    f"{len(rest)} clips to pack")
        new = pack_clips(cfg, cat, new_run_id(), rest, caption_version=caption_version, progress=progress)
        shards = reused + [{k: m[k] for k in ("shard_id", "url", "sha256", "bytes", "n", "bucket")} for m in new]
        shard_of = {cid: s["shard_id"] for s in reused for cid in members_of[s["shard_id"]]}
        shard_of.update({cid: m["shard_id"] for m in new for cid in m["members"]})
        clips = _snapshot_table(table, shard_of, {s["shard_id"]: s["url"] for s in shards})
        manifest, url = _publish(cfg, cat, name, root, recipe_id, caption_version, select, shards, clips)
    return ReleaseSummary(name, url, manifest["n_clips"], manifest["n_shards"], reused_shards=len(reused),
                          new_shards=len(new), bytes=manifest["bytes"])


def _adopt_published(cat, name: str, root: str) -> ReleaseSummary | None:
    """A manifest published by a create that died before recording it: record it now."""
    fs, mpath = fsspec.core.url_to_fs(manifest_url(root))
    if not fs.exists(mpath):
        return None
    manifest = load_manifest(manifest_url(root))
    _record(cat, manifest, read_release_clips(root), manifest_url(root))
    logger.info(f"release {name}: adopted the manifest a previous run published but did not record")
    return ReleaseSummary(name, manifest_url(root), manifest["n_clips"], manifest["n_shards"],
                          reused_shards=0, new_shards=0, bytes=manifest["bytes"], adopted=True)


def _members_to_release(cat, name: str, recipe: str | None, select: str | None, caption_version: str,
                        allow_uncaptioned: bool) -> tuple[str, pa.Table]:
    """(recipe id, the wide rows of the clips it keeps): refused when there are none, when one lacks
    its caption (unless ``allow_uncaptioned``) or has no clip file yet."""
    if recipe is None:
        recipe = active_recipe_id(cat)
        if recipe is None:
            raise ReleaseError("no recipe is in force yet: run the pipeline or `vidcorpus filter apply` first")
        logger.info(f"release {name}: the active recipe {recipe}")
    recipe_id = _recipe_id(cat, recipe)
    table = _members(cat, recipe_id, select)
    if table.num_rows == 0:
        raise ReleaseError(f"recipe {recipe_id} keeps no clip" + (f" matching {select!r}" if select else ""))
    ids = table.column("clip_id").to_pylist()
    missing = uncaptioned_for(cat, ids, caption_version)
    if missing and not allow_uncaptioned:
        raise ReleaseError(f"{len(missing)} of the {len(ids)} clips {recipe_id} keeps have no {caption_version} "
                           f"caption (e.g. {missing[0]}): run `vidcorpus sync` first, or pass --allow-uncaptioned")
    no_file = [r["clip_id"] for r in table.select(["clip_id", "clip_path"]).to_pylist() if not r["clip_path"]]
    if no_file:  # filter before you encode: a clip first dropped was never extracted
        raise ReleaseError(f"{len(no_file)} of the {len(ids)} clips {recipe_id} keeps have no clip file yet "
                           f"(e.g. {no_file[0]}): `vidcorpus sync` extracts them under the active recipe")
    return recipe_id, table


def _publish(cfg: Config, cat, name: str, root: str, recipe_id: str, caption_version: str, select: str | None,
             shards: list[dict], clips: pa.Table) -> tuple[dict, str]:
    """Write the release's files (clips.parquet, then manifest.json last) and record it: (manifest, its URL)."""
    scorers = [r[0] for r in cat.con.execute("SELECT DISTINCT scorer FROM scores").fetchall()]
    numeric = {f.name for f in clips.schema if pa.types.is_floating(f.type) or pa.types.is_integer(f.type)}
    score_columns = [c for c in clips.column_names if c in numeric and (c in set(scorers) or c == "duration_s")]
    data = parquet_bytes(clips)
    facts = {"path": cfg.catalog_path, "schema_version": cat.schema_version, "recipe_id": recipe_id,
             "clips_in_catalog": cat.con.execute("SELECT count(*) FROM clips").fetchall()[0][0],
             "latest_run": cat.con.execute("SELECT max(run_id) FROM runs").fetchall()[0][0]}
    manifest = build_manifest(name, recipe_id, caption_version, select, shards, clips, score_columns, facts,
                              sha256_hex(data))
    url = write_release_files(root, manifest, data)
    _record(cat, manifest, clips, url)
    return manifest, url


def _snapshot_table(table: pa.Table, shard_of: dict[str, str], url_of: dict[str, str]) -> pa.Table:
    """The wide rows with shard_id / shard_url naming the shard that serves each clip in this release."""
    ids = table.column("clip_id").to_pylist()
    for col in ("shard_id", "shard_url"):
        if col in table.column_names:
            table = table.drop_columns([col])
    table = table.append_column("shard_id", pa.array([shard_of[c] for c in ids], pa.string()))
    return table.append_column("shard_url", pa.array([url_of[shard_of[c]] for c in ids], pa.string()))


def _record(cat, manifest: dict, clips: pa.Table, url: str) -> None:
    with fsspec.open(url, "rb") as f:
        manifest_sha = sha256_hex(f.read())
    row = {"name": manifest["name"], "recipe": manifest["recipe"], "caption_version": manifest["caption_version"],
           "select_sql": manifest["select"], "manifest_url": url, "manifest_sha256": manifest_sha,
           "n_shards": manifest["n_shards"], "n_clips": manifest["n_clips"], "bytes": manifest["bytes"],
           "catalog_snapshot": f"{url.rsplit('/', 1)[0]}/{manifest['clips']['file']}", "run_id": new_run_id(),
           "created_at": dt.datetime.fromisoformat(manifest["created_at"]).replace(tzinfo=None)}
    members = list(zip(clips.column("clip_id").to_pylist(), clips.column("shard_id").to_pylist()))
    cat.record_release(row, members)


def release_manifest(cfg: Config, name_or_url: str) -> tuple[dict, str]:
    """(manifest, root URL) of a release named in the catalog, or at a URL (local or s3://)."""
    if "/" in name_or_url:
        manifest = load_manifest(name_or_url)
        root = name_or_url.removesuffix("/manifest.json").rstrip("/")
        return manifest, root
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        row = cat.release(check_name(name_or_url))
    if row is None:
        raise ReleaseError(f"no release named {name_or_url!r} in {cfg.catalog_path} (`vidcorpus release list`)")
    manifest = load_manifest(row["manifest_url"])
    with fsspec.open(row["manifest_url"], "rb") as f:
        if sha256_hex(f.read()) != row["manifest_sha256"]:
            raise ReleaseError(f"release {name_or_url}: {row['manifest_url']} changed since it was recorded; refusing it")
    return manifest, row["manifest_url"].rsplit("/", 1)[0]


@dataclass
class ReleaseDiff:
    a: str
    b: str
    added: dict[str, str] = field(default_factory=dict)  # clip id -> why B has it and A does not
    dropped: dict[str, str] = field(default_factory=dict)  # clip id -> why A has it and B does not
    kept: int = 0
    recipe_a: str = ""
    recipe_b: str = ""
    caption_a: str = ""
    caption_b: str = ""

    def summary(self) -> list[dict]:
        """(change, why, clips, examples) rows, largest groups first."""
        rows = []
        for change, items in (("added", self.added), ("dropped", self.dropped)):
            groups: dict[str, list[str]] = defaultdict(list)
            for cid, why in sorted(items.items()):
                groups[why].append(cid)
            for why, cids in groups.items():
                rows.append({"change": change, "why": why, "clips": len(cids), "examples": ", ".join(cids[:3])})
        return sorted(rows, key=lambda r: (r["change"], -r["clips"], r["why"]))

    def rows(self) -> list[dict]:
        return ([{"clip_id": c, "change": "added", "why": w} for c, w in sorted(self.added.items())]
                + [{"clip_id": c, "change": "dropped", "why": w} for c, w in sorted(self.dropped.items())])


def diff_releases(cfg: Config, a: str, b: str) -> ReleaseDiff:
    """What B adds to and drops from A, and why, from both snapshots and the catalog's decisions."""
    ma, root_a = release_manifest(cfg, a)
    mb, root_b = release_manifest(cfg, b)
    ids_a = set(read_release_clips(root_a).column("clip_id").to_pylist())
    ids_b = set(read_release_clips(root_b).column("clip_id").to_pylist())
    added, dropped = sorted(ids_b - ids_a), sorted(ids_a - ids_b)
    ra, rb = ma["catalog"]["recipe_id"], mb["catalog"]["recipe_id"]
    created_a = dt.datetime.fromisoformat(ma["created_at"]).replace(tzinfo=None)
    diff = ReleaseDiff(a=ma["name"], b=mb["name"], kept=len(ids_a & ids_b), recipe_a=ra, recipe_b=rb,
                       caption_a=ma["caption_version"], caption_b=mb["caption_version"])
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        dec_a = cat.decisions_of(ra, added)
        for cid in added:
            d = dec_a.get(cid)
            if d is None or d[2] > created_a:
                diff.added[cid] = f"new since {ma['name']} (no decision under {ra} when it was made)"
            elif not d[0]:
                diff.added[cid] = f"{ra} drops it: {d[1]}"
            else:
                diff.added[cid] = f"outside {ma['name']}'s selection"
        present = cat.existing_clip_ids(dropped)
        dec_b = cat.decisions_of(rb, dropped)
        for cid in dropped:
            d = dec_b.get(cid)
            if cid not in present:
                diff.dropped[cid] = "no longer in the catalog"
            elif d is None:
                diff.dropped[cid] = f"not decided under {rb}"
            elif not d[0]:
                diff.dropped[cid] = f"{rb} drops it: {d[1]}"
            else:
                diff.dropped[cid] = f"outside {mb['name']}'s selection"
    return diff


def release_reasons_table(diff: ReleaseDiff) -> pa.Table:
    return pa.Table.from_pylist(diff.rows(), schema=pa.schema(
        [("clip_id", pa.string()), ("change", pa.string()), ("why", pa.string())]))

