"""Dataset releases: an immutable, named set of shards with a manifest a trainer can trust.

A release freezes (recipe, caption version, optional SQL selection, the catalog's rows of its clips)
into files under ``{workdir}/releases/{name}/``:

- ``clips.parquet``: the wide catalog row of every member clip at release time (scores, captions,
  decision, shard): the release's catalog snapshot, so it can be audited and diffed later even
  after the catalog has moved on;
- ``manifest.json``: per shard its URL, sha256, bytes, sample count and bucket; totals per bucket;
  score histograms; the recipe, caption version, selection and catalog facts. Written last: a
  release exists when its manifest does, and a manifest is never overwritten.

This module is storage and arithmetic only; the driver (``vidcorpus.jobs.release``) reads the catalog
and writes the shards.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import math
import re

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from vidcorpus.storage import write_atomic

RELEASE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,127}")
HISTOGRAM_BINS = 20


class ReleaseError(RuntimeError):
    """A release cannot be created, read or compared (the message says why and what to do)."""


def check_name(name: str) -> str:
    if not RELEASE_NAME.fullmatch(name or ""):
        raise ReleaseError(f"release name {name!r} must match {RELEASE_NAME.pattern} (it becomes a folder name)")
    return name


def release_root(workdir_url: str, name: str) -> str:
    return f"{workdir_url.rstrip('/')}/releases/{check_name(name)}"


def manifest_url(root: str) -> str:
    return f"{root}/manifest.json"


def score_histograms(table: pa.Table, score_columns: list[str]) -> dict[str, dict]:
    """Per numeric score: count, min, max, mean and a HISTOGRAM_BINS-bin histogram over the release."""
    out: dict[str, dict] = {}
    for name in score_columns:
        if name not in table.column_names:
            continue
        values = np.array([v for v in table.column(name).to_pylist() if v is not None], dtype=float)
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        lo, hi = float(values.min()), float(values.max())
        counts, edges = np.histogram(values, bins=HISTOGRAM_BINS, range=(lo, hi if hi > lo else lo + 1.0))
        out[name] = {"n": int(values.size), "min": lo, "max": hi, "mean": float(values.mean()),
                     "edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}
    return out


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def build_manifest(name: str, recipe: str, caption_version: str, select: str | None, shards: list[dict],
                   clips: pa.Table, score_columns: list[str], catalog_facts: dict, clips_sha256: str) -> dict:
    """The manifest dict (JSON-ready) of a release."""
    buckets: dict[str, dict] = {}
    for s in shards:
        b = buckets.setdefault(s["bucket"], {"shards": 0, "samples": 0, "bytes": 0})
        b["shards"] += 1
        b["samples"] += int(s["n"])
        b["bytes"] += int(s["bytes"])
    hours = None
    if "duration_s" in clips.column_names:
        hours = sum(v for v in clips.column("duration_s").to_pylist() if v) / 3600
    return {
        "format": "vidcorpus-release/1",
        "name": name,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds"),
        "recipe": recipe,
        "caption_version": caption_version,
        "select": select,
        "n_clips": clips.num_rows,
        "hours": _json_safe(hours),
        "n_shards": len(shards),
        "bytes": sum(int(s["bytes"]) for s in shards),
        "buckets": buckets,
        "shards": [{k: s[k] for k in ("shard_id", "url", "sha256", "bytes", "n", "bucket")} for s in shards],
        "catalog": catalog_facts,
        "clips": {"file": "clips.parquet", "sha256": clips_sha256},
        "score_histograms": score_histograms(clips, score_columns),
    }


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def write_release_files(root: str, manifest: dict, clips_parquet: bytes) -> str:
    """clips.parquet, then manifest.json (the commit point, never overwritten). Returns the manifest URL."""
    fs, path = fsspec.core.url_to_fs(manifest_url(root))
    if fs.exists(path):
        raise ReleaseError(f"release manifest {manifest_url(root)} already exists; releases are immutable")
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fsspec.open(f"{root}/clips.parquet", "wb") as f:
        f.write(clips_parquet)
    data = json.dumps(manifest, indent=1, default=str).encode()
    _write_atomic(manifest_url(root), data)
    return manifest_url(root)


def _write_atomic(url: str, data: bytes) -> None:
    """One small object, visible whole or not at all (vidcorpus/storage.py)."""
    write_atomic(url, data)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_release_clips(root: str) -> pa.Table:
    with fsspec.open(f"{root}/clips.parquet", "rb") as f:
        return pq.read_table(f)


def select_reusable_shards(candidates: list[dict], members_of: dict[str, list[str]]) -> tuple[list[dict], set[str]]:
    """Existing shards that can serve the release whole, without two of them holding the same clip.

    ``candidates`` hold only members of the release (the caller checked); larger shards first so
    fewer, fuller shards are reused. Returns (shards, clip ids they cover).
    """
    chosen: list[dict] = []
    covered: set[str] = set()
    for s in sorted(candidates, key=lambda s: (-int(s["n"]), s["shard_id"])):
        ids = members_of[s["shard_id"]]
        if covered.isdisjoint(ids):
            chosen.append(s)
            covered.update(ids)
    return chosen, covered
