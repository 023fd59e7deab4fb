"""`vidcorpus catalog verify`: does the catalog agree with itself and with the shard files?

Each problem is a dict {check, item, detail}. Checks:

- member_without_clip: a shard_members row whose clip has no clips row
- member_without_shard: a shard_members row whose shard has no shards row
- shard_count_mismatch: shards.n differs from the shard's member rows
- shard_missing: a shard's file is not at its url
- shard_size_mismatch / shard_checksum_mismatch: the file differs from the recorded bytes / sha256
- orphan_shard_file: a .tar under a shard folder that no shards row records
- orphan_row: scores, captions, decisions or release_members rows of a clip with no clips row;
  clips of a source with no sources row
- wide_missing / wide_orphan: clips and the materialised clips_wide disagree on which clips exist
- wide_stale (``deep``): a clips_wide row differs from a recompute from the long tables
- release_count_mismatch: releases.n_clips differs from its release_members rows
- relative_path: a stored location (clip, shard, manifest, checkpoint...) that is a relative path
  (``catalog/verify_paths.py``)
- frames_uncovered: frames of a video source in no clip and no dropped segment (``catalog/coverage.py``)
- shard_member_uncaptioned / release_member_uncaptioned: a member without the caption version its
  shard or release was written with (``catalog/corpus_state.py``, which also lists the gaps: work
  `vidcorpus sync` completes, and ``pending_latents``, kept clips sharded without latents of the
  latent-cache key in use, which `vidcorpus shards encode` writes)
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Iterable

import fsspec

from vidcorpus.catalog.corpus_state import state_problems
from vidcorpus.catalog.coverage import coverage_problems
from vidcorpus.catalog.schema import wide_view_sql
from vidcorpus.catalog.sql_names import ident, table as sql_table
from vidcorpus.catalog.verify_paths import relative_paths

if TYPE_CHECKING:  # pragma: no cover
    from vidcorpus.catalog.store import Catalog

MAX_PER_CHECK = 1000  # problems listed per check (the count is always complete)


def _problems(cat: "Catalog", check: str, sql: str, detail) -> list[dict]:
    """The rows of ``sql`` (an ``item`` column; at most MAX_PER_CHECK) as problems of one check."""
    rows = cat.query_dicts(sql + " LIMIT ?", [MAX_PER_CHECK])
    return [{"check": check, "item": r["item"], "detail": detail(r)} for r in rows]


def _file_sha256(fs, path: str) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _has_table(cat: "Catalog", name: str) -> bool:
    return bool(cat.query_dicts("SELECT 1 AS x FROM information_schema.tables WHERE table_name = ?", [name]))


def verify_catalog(cat: "Catalog", shard_roots: Iterable[str] = (), checksums: bool = True,
                   deep: bool = False) -> list[dict]:
    out: list[dict] = []
    out += _problems(cat, "member_without_clip",
                     "SELECT m.clip_id AS item, m.shard_id FROM shard_members m ANTI JOIN clips c USING (clip_id) "
                     "ORDER BY 1",
                     lambda r: f"shard {r['shard_id']} lists a clip the catalog has no row for")
    out += _problems(cat, "member_without_shard",
                     "SELECT m.shard_id AS item, count(*) AS n FROM shard_members m ANTI JOIN shards s USING (shard_id) "
                     "GROUP BY 1 ORDER BY 1",
                     lambda r: f"{r['n']} member rows name a shard with no shards row")
    out += _problems(cat, "shard_count_mismatch",
                     "SELECT s.shard_id AS item, s.n, count(m.clip_id) AS members FROM shards s "
                     "LEFT JOIN shard_members m USING (shard_id) GROUP BY s.shard_id, s.n "
                     "HAVING s.n IS DISTINCT FROM count(m.clip_id) ORDER BY 1",
                     lambda r: f"shards.n = {r['n']} but {r['members']} member rows")
    for table in ("scores", "captions", "decisions"):
        out += _problems(cat, "orphan_row",
                         f"SELECT t.clip_id AS item, count(*) AS n FROM {sql_table(table)} t ANTI JOIN clips c USING (clip_id) "
                         "GROUP BY 1 ORDER BY 1",
                         lambda r, table=table: f"{r['n']} {table} rows of a clip with no clips row")
    out += _problems(cat, "orphan_row",
                     "SELECT c.source_id AS item, count(*) AS n FROM clips c ANTI JOIN sources s USING (source_id) "
                     "GROUP BY 1 ORDER BY 1",
                     lambda r: f"{r['n']} clips of a source with no sources row")
    if _has_table(cat, "release_members"):
        out += _problems(cat, "orphan_row",
                         "SELECT r.clip_id AS item, r.name FROM release_members r ANTI JOIN clips c USING (clip_id) "
                         "ORDER BY 1",
                         lambda r: f"release {r['name']} lists a clip with no clips row")
        out += _problems(cat, "release_count_mismatch",
                         "SELECT r.name AS item, r.n_clips, count(m.clip_id) AS members FROM releases r "
                         "LEFT JOIN release_members m USING (name) GROUP BY r.name, r.n_clips "
                         "HAVING r.n_clips IS DISTINCT FROM count(m.clip_id) ORDER BY 1",
                         lambda r: f"releases.n_clips = {r['n_clips']} but {r['members']} member rows")
    out += _problems(cat, "wide_missing",
                     "SELECT clip_id AS item FROM clips ANTI JOIN clips_wide USING (clip_id) ORDER BY 1",
                     lambda r: "clip has no clips_wide row (run `vidcorpus catalog verify --rebuild-wide`)")
    out += _problems(cat, "wide_orphan",
                     "SELECT clip_id AS item FROM clips_wide ANTI JOIN clips USING (clip_id) ORDER BY 1",
                     lambda r: "clips_wide row of a clip with no clips row")
    out += relative_paths(cat, MAX_PER_CHECK)
    if _has_table(cat, "dropped_segments"):
        out += coverage_problems(cat)
    if deep:
        out += _wide_stale(cat)
    out += state_problems(cat)  # shard/release members without their caption (issue 21)
    out += _shard_files(cat, shard_roots, checksums)
    return out


def _wide_stale(cat: "Catalog") -> list[dict]:
    scorers = [r["scorer"] for r in cat.query_dicts("SELECT DISTINCT scorer FROM scores ORDER BY 1")]
    cols = [r["column_name"] for r in cat.query_dicts(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'clips_wide' ORDER BY ordinal_position")]
    fresh_cols = set(cat.query(f"SELECT * FROM ({wide_view_sql(scorers)}) LIMIT 0").column_names)
    both = ", ".join(ident(c) for c in cols if c in fresh_cols)
    return _problems(cat, "wide_stale",
                     f"SELECT clip_id AS item FROM (SELECT {both} FROM clips_wide EXCEPT "
                     f"SELECT {both} FROM ({wide_view_sql(scorers)})) ORDER BY 1",
                     lambda r: "clips_wide differs from the long tables (run with --rebuild-wide)")


def _shard_files(cat: "Catalog", shard_roots: Iterable[str], checksums: bool) -> list[dict]:
    out: list[dict] = []
    shards = cat.query_dicts("SELECT shard_id, url, sha256, bytes FROM shards ORDER BY shard_id")
    recorded: set[str] = set()
    for s in shards:
        fs, path = fsspec.core.url_to_fs(s["url"])
        recorded.add(fs.unstrip_protocol(path))
        try:
            info = fs.info(path)
        except FileNotFoundError:
            out.append({"check": "shard_missing", "item": s["shard_id"], "detail": f"no file at {s['url']}"})
            continue
        if s["bytes"] is not None and info.get("size") != s["bytes"]:
            out.append({"check": "shard_size_mismatch", "item": s["shard_id"],
                        "detail": f"{s['url']} has {info.get('size')} bytes, catalog says {s['bytes']}"})
        elif checksums and s["sha256"] and _file_sha256(fs, path) != s["sha256"]:
            out.append({"check": "shard_checksum_mismatch", "item": s["shard_id"],
                        "detail": f"sha256 of {s['url']} is not the recorded {s['sha256'][:12]}..."})
    for root in shard_roots:
        fs, path = fsspec.core.url_to_fs(root)
        if not fs.exists(path):
            continue
        for f in sorted(fs.find(path)):
            if f.endswith(".tar") and fs.unstrip_protocol(f) not in recorded:
                out.append({"check": "orphan_shard_file", "item": fs.unstrip_protocol(f),
                            "detail": "a shard file no shards row records"})
    return out
