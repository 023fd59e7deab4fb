"""Clip embeddings in Parquet, and duplicate scores (exact and near) within a run and against the catalog.

Embeddings: the CLIP stage puts each clip's normalised mean frame embedding and the sha256 of its file
in the row; the driver writes them per committed batch to
``{workdir}/embeddings/{model slug}/{run_id}-{seq:05d}.parquet`` (clip_id, model, content_sha256,
embedding as fixed-size float32 lists) and indexes each clip in the catalog's ``embeddings`` table
(clip_id, model, dim, url, content_sha256). Retrieval and dedup read the Parquet files back.

Duplicates (SemDeDup's rule, with the catalog's quality ranking): clips of one embedding model are
ranked best first by ``aesthetic`` (then ``clip_text``, then duration, then clip_id, so ties are
deterministic). For each clip
  dup_exact  1.0 when a better-ranked clip has the same content sha256, else 0.0
  dup_sim    the highest cosine similarity to any better-ranked clip (0.0 for the best of all)
so the best-scored copy of a group always has dup_exact 0 and the lowest dup_sim, and a recipe's
threshold on dup_sim (e.g. ``dup_sim < 0.95``) keeps exactly one copy of a tight group. Scores are
written with the embedding model and DEDUP_VERSION; thresholds stay in recipes.

Which clips are (re)scored: the clips of this run, and earlier catalog clips that a new clip comes
within ``filters.dedup_floor`` of (a better new copy can turn an earlier clip into a duplicate).
Similarities are exact (blocked matrix products in NumPy): fine to a few hundred thousand clips per
model; beyond that the same scores would come from an ANN index over the same Parquet files.
This module is driver-side: it gets a Catalog object passed in and never opens one itself.
"""

from __future__ import annotations

import re
from typing import Iterable

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DEDUP_VERSION = "dedup-v1"
BLOCK = 4096


def model_slug(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_") or "model"


def write_embedding_batch(root: str, run_id: str, seq: int, rows: list[dict]) -> list[dict]:
    """Write the embeddings of rows that have one (one file per model) and return their index rows."""
    by_model: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("embedding") and r.get("clip_id") and not r.get("error_class"):
            by_model.setdefault(r["embedding_model"] or "unknown", []).append(r)
    index: list[dict] = []
    for model, items in sorted(by_model.items()):
        dim = len(items[0]["embedding"])
        url = f"{root.rstrip('/')}/{model_slug(model)}/{run_id}-{seq:05d}.parquet"
        flat = pa.array(np.asarray([r["embedding"] for r in items], dtype=np.float32).reshape(-1))
        table = pa.table({
            "clip_id": [r["clip_id"] for r in items],
            "model": [model] * len(items),
            "content_sha256": [r.get("content_sha256") for r in items],
            "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
        })
        fs, path = fsspec.core.url_to_fs(url)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(path, "wb") as f:
            pq.write_table(table, f)
        index += [{"clip_id": r["clip_id"], "model": model, "dim": dim, "url": url,
                   "content_sha256": r.get("content_sha256")} for r in items]
    return index


def read_embeddings(index: Iterable[dict]) -> tuple[list[str], np.ndarray, list[str | None]]:
    """(clip ids, (N, dim) float32 matrix, content hashes) of the indexed clips, read from Parquet.

    A clip indexed in several files (re-scored) is read from the file the index names."""
    wanted: dict[str, set[str]] = {}
    for r in index:
        wanted.setdefault(r["url"], set()).add(r["clip_id"])
    ids: list[str] = []
    hashes: list[str | None] = []
    mats: list[np.ndarray] = []
    for url, clip_ids in sorted(wanted.items()):
        fs, path = fsspec.core.url_to_fs(url)
        with fs.open(path, "rb") as f:
            t = pq.read_table(f)
        keep = [i for i, c in enumerate(t.column("clip_id").to_pylist()) if c in clip_ids]
        t = t.take(keep)
        emb = t.column("embedding").combine_chunks()
        dim = emb.type.list_size
        mats.append(emb.values.to_numpy(zero_copy_only=False).reshape(-1, dim))
        ids += t.column("clip_id").to_pylist()
        hashes += t.column("content_sha256").to_pylist()
    if not mats:
        return [], np.zeros((0, 0), np.float32), []
    return ids, np.concatenate(mats).astype(np.float32), hashes


def rank_order(ids: list[str], scores: dict[str, dict[str, float]]) -> np.ndarray:
    """rank[i] = position of clip i when ordered best first (aesthetic, clip_text, duration, clip_id)."""
    def key(i: int):
        s = scores.get(ids[i], {})
        return (-s.get("aesthetic", float("-inf")), -s.get("clip_text", float("-inf")),
                -s.get("duration_s", 0.0), ids[i])

    order = sorted(range(len(ids)), key=key)
    rank = np.empty(len(ids), dtype=np.int64)
    rank[order] = np.arange(len(ids))
    return rank


def duplicate_scores(ids: list[str], emb: np.ndarray, hashes: list[str | None], rank: np.ndarray,
                     targets: Iterable[int]) -> dict[str, dict[str, float]]:
    """dup_exact and dup_sim of the clips at positions `targets`, against all clips."""
    targets = sorted(set(targets))
    out: dict[str, dict[str, float]] = {}
    by_hash: dict[str, list[int]] = {}
    for i, h in enumerate(hashes):
        if h:
            by_hash.setdefault(h, []).append(i)
    for start in range(0, len(targets), BLOCK):
        block = targets[start:start + BLOCK]
        sims = emb[block] @ emb.T  # (b, N)
        better = rank[None, :] < rank[block][:, None]
        sims = np.where(better, sims, -np.inf)
        best = sims.max(axis=1) if sims.shape[1] else np.full(len(block), -np.inf)
        for i, value in zip(block, best):
            exact = any(rank[j] < rank[i] for j in by_hash.get(hashes[i] or "", []))
            out[ids[i]] = {"dup_exact": float(exact),
                           "dup_sim": float(np.clip(value, -1.0, 1.0)) if np.isfinite(value) else 0.0}
    return out


def affected(emb: np.ndarray, new: list[int], floor: float) -> set[int]:
    """The new clips and every other clip that some new clip comes within `floor` cosine of."""
    hit = set(new)
    for start in range(0, len(new), BLOCK):
        block = new[start:start + BLOCK]
        sims = emb[block] @ emb.T
        hit.update(np.flatnonzero((sims >= floor).any(axis=0)).tolist())
    return hit


def run_dedup(catalog, run_id: str, new_clip_ids: Iterable[str] | None, floor: float) -> list[dict]:
    """Score duplicates of the given clips (None: every clip) against the catalog; write the scores.

    Returns the score rows written. The caller re-decides the affected clips.
    """
    index = catalog.query_dicts("SELECT clip_id, model, url, content_sha256 FROM embeddings ORDER BY clip_id")
    written: list[dict] = []
    new_set = None if new_clip_ids is None else set(new_clip_ids)
    for model in sorted({r["model"] for r in index}):
        rows = [r for r in index if r["model"] == model]
        ids, emb, hashes = read_embeddings(rows)
        if not ids:
            continue
        pos = {c: i for i, c in enumerate(ids)}
        new = list(range(len(ids))) if new_set is None else sorted(pos[c] for c in new_set if c in pos)
        if not new:
            continue
        targets = affected(emb, new, floor) if new_set is not None else set(new)
        rank = rank_order(ids, catalog.latest_scores(ids))
        for clip, values in duplicate_scores(ids, emb, hashes, rank, targets).items():
            written += [{"clip_id": clip, "scorer": k, "model": model, "version": DEDUP_VERSION, "value": v}
                        for k, v in values.items()]
    catalog.write_scores(run_id, written)
    return written
