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

When: the runner scores each window of a run as soon as it is whole. ``run_dedup`` is the one-shot
form (``vidcorpus filter dedup``): it reads every embedding file and every clip's rank scores.
A run keeps one ``DedupIndex`` instead: it reads the catalog once, at the first whole window, then
takes in only what the run commits (the batches' Parquet files and those clips' rank scores, read
back from the catalog after their commit, so a re-processed clip's new scores count), and gives the
rows ``run_dedup`` would give at that moment (equal to float32 rounding: a matrix product's last
bit depends on how many rows it multiplies at once, in ``run_dedup`` too). Embedding rows that
another run writes meanwhile (their count and latest ``written_at`` are checked each window) make
it read the catalog again. Memory: the index holds every embedding of the catalog for the whole
run (N x dim float32), as ``run_dedup`` does for the length of one call.
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
RANK_SCORERS = ("aesthetic", "clip_text", "duration_s")  # what rank_order reads


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
    return ids, np.concatenate(mats).astype(np.float32, copy=False), hashes


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


def _by_hash(hashes: list[str | None]) -> dict[str, list[int]]:
    by_hash: dict[str, list[int]] = {}
    for i, h in enumerate(hashes):
        if h:
            by_hash.setdefault(h, []).append(i)
    return by_hash


def _best_of_block(ids, hashes, rank, by_hash, block: list[int], sims: np.ndarray) -> dict[str, dict[str, float]]:
    """Scores of the clips at `block` from their similarities to all clips (sims, (b, N), masked in place)."""
    np.putmask(sims, rank[None, :] >= rank[block][:, None], -np.inf)  # only better-ranked clips count
    best = sims.max(axis=1)
    out = {}
    for i, value in zip(block, best.tolist()):
        exact = any(rank[j] < rank[i] for j in by_hash.get(hashes[i] or "", []))
        out[ids[i]] = {"dup_exact": float(exact),
                       "dup_sim": min(max(value, -1.0), 1.0) if np.isfinite(value) else 0.0}
    return out


def duplicate_scores(ids: list[str], emb: np.ndarray, hashes: list[str | None], rank: np.ndarray,
                     targets: Iterable[int],
                     by_hash: dict[str, list[int]] | None = None) -> dict[str, dict[str, float]]:
    """dup_exact and dup_sim of the clips at positions `targets`, against all clips."""
    targets = sorted(set(targets))
    by_hash = _by_hash(hashes) if by_hash is None else by_hash
    out: dict[str, dict[str, float]] = {}
    for start in range(0, len(targets), BLOCK):
        block = targets[start:start + BLOCK]
        out.update(_best_of_block(ids, hashes, rank, by_hash, block, emb[block] @ emb.T))
    return out


def new_and_affected_scores(ids: list[str], emb: np.ndarray, hashes: list[str | None], rank: np.ndarray,
                            new: list[int], floor: float) -> dict[str, dict[str, float]]:
    """Scores of the new clips and of every other clip that some new clip comes within `floor` of (a
    better new copy can make an earlier clip a duplicate): one matrix product per block of new clips
    finds those earlier clips and scores the new ones; a second one scores only the earlier clips."""
    by_hash = _by_hash(hashes)
    out: dict[str, dict[str, float]] = {}
    hit: set[int] = set()
    for start in range(0, len(new), BLOCK):
        block = new[start:start + BLOCK]
        sims = emb[block] @ emb.T
        hit.update(np.flatnonzero((sims >= floor).any(axis=0)).tolist())
        out.update(_best_of_block(ids, hashes, rank, by_hash, block, sims))
    out.update(duplicate_scores(ids, emb, hashes, rank, hit - set(new), by_hash))
    return out


def _keep_rank_scores(scores: dict[str, float]) -> dict[str, float]:
    return {k: scores[k] for k in RANK_SCORERS if k in scores}


class _Vectors:
    """One embedding model's clips: ids, their positions, (n, dim) float32 rows and content hashes.

    Rows live in a buffer with an eighth spare, so adding a window rarely copies the catalog."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.pos: dict[str, int] = {}
        self.hashes: list[str | None] = []
        self._buf = np.zeros((0, 0), np.float32)

    @property
    def emb(self) -> np.ndarray:
        return self._buf[:len(self.ids)]

    def put(self, ids: list[str], emb: np.ndarray, hashes: list[str | None]) -> None:
        """Add these clips, or replace the row and hash of those already held (a re-processed clip)."""
        if not ids:
            return
        if self._buf.shape[1] != emb.shape[1]:
            if self.ids:
                raise ValueError(f"embedding dim {emb.shape[1]} differs from the model's {self._buf.shape[1]}")
            self._buf = np.zeros((0, emb.shape[1]), np.float32)
        if not self.ids and len(set(ids)) == len(ids) and emb.dtype == np.float32 and emb.flags.c_contiguous:
            self._buf, self.ids, self.hashes = emb, list(ids), list(hashes)  # the first read: no copy
            self.pos = {c: i for i, c in enumerate(self.ids)}
            return
        fresh = [c for c in dict.fromkeys(ids) if c not in self.pos]
        need = len(self.ids) + len(fresh)
        if need > len(self._buf):
            grown = np.zeros((need + need // 8 + 1024, self._buf.shape[1]), np.float32)  # 1/8 spare, not 2x
            grown[:len(self.ids)] = self.emb
            self._buf = grown
        for c in fresh:
            self.pos[c] = len(self.ids)
            self.ids.append(c)
            self.hashes.append(None)
        at = np.fromiter((self.pos[c] for c in ids), np.int64, len(ids))
        self._buf[at] = emb
        for i, h in zip(at.tolist(), hashes):
            self.hashes[i] = h


class DedupIndex:
    """The catalog's embeddings and rank scores, read once and kept up to date through a run.

    ``score(catalog, run_id, new_clip_ids)`` writes and returns the same score rows as
    ``run_dedup`` would for the catalog as it is at that moment. The first call reads every
    embedding Parquet file and the rank scores of every clip (as ``run_dedup`` does each time);
    later calls read only what was committed since, as the caller reports it with ``committed``
    (the rows' Parquet files and the rank scores of those clips). Embedding rows written by any
    other run while this one goes on (a second writer of the catalog) are noticed by their count
    and latest ``written_at``, and then the index is read again in full, so the scores stay those
    of ``run_dedup``.
    """

    def __init__(self, floor: float, run_id: str | None = None) -> None:
        self.floor = floor
        self.run_id = run_id
        self.loads = 0  # full reads of the catalog
        self.files_read = 0  # Parquet files read (each file once unless the index is reloaded)
        self._vectors: dict[str, _Vectors] = {}
        self._scores: dict[str, dict[str, float]] = {}
        self._pending_index: dict[tuple[str, str], dict] = {}
        self._pending_clips: set[str] = set()
        self._foreign: tuple[int, object] | None = None  # (rows, latest written_at) of other runs
        self._foreign_keys: set[tuple[str, str]] = set()

    @property
    def loaded(self) -> bool:
        return self.loads > 0

    def committed(self, clip_ids: Iterable[str], index_rows: Iterable[dict] = ()) -> None:
        """Clips (and their embedding index rows) just committed by this run: read at the next score."""
        if not self.loaded:
            return  # the first score reads the whole catalog, these included
        self._pending_clips.update(clip_ids)
        for r in index_rows:
            self._pending_index[(r["clip_id"], r["model"])] = r
            self._pending_clips.add(r["clip_id"])

    def _read(self, rows: list[dict]) -> tuple[list[str], np.ndarray, list[str | None]]:
        self.files_read += len({r["url"] for r in rows})
        return read_embeddings(rows)

    def _foreign_state(self, catalog) -> tuple[int, object]:
        [row] = catalog.query_dicts("SELECT count(*) AS n, max(written_at) AS latest FROM embeddings "
                                    "WHERE run_id IS DISTINCT FROM ?", [self.run_id or ""])
        return row["n"], row["latest"]

    def load(self, catalog) -> None:
        """Read every embedding and the rank scores of every clip that has one."""
        index = catalog.query_dicts("SELECT clip_id, model, url, content_sha256, run_id, written_at FROM embeddings "
                                    "ORDER BY clip_id")
        self._vectors = {}
        for model in sorted({r["model"] for r in index}):
            ids, emb, hashes = self._read([r for r in index if r["model"] == model])
            v = self._vectors[model] = _Vectors()
            v.put(ids, emb, hashes)
        ids = sorted({c for v in self._vectors.values() for c in v.ids})
        self._scores = {c: _keep_rank_scores(s) for c, s in catalog.latest_scores(ids).items()} if ids else {}
        if self.run_id is not None:  # what other runs wrote, as of the index just read
            foreign = [r for r in index if r["run_id"] != self.run_id]
            self._foreign_keys = {(r["clip_id"], r["model"]) for r in foreign}
            self._foreign = (len(foreign), max((r["written_at"] for r in foreign), default=None))
        self._pending_index, self._pending_clips = {}, set()
        self.loads += 1

    def sync(self, catalog) -> None:
        """Bring the index up to the catalog: what this run committed since, or all of it again."""
        if not self.loaded:
            return self.load(catalog)
        pending = list(self._pending_index.values())
        if self._foreign is not None:
            n, latest = self._foreign
            replaced = {(r["clip_id"], r["model"]) for r in pending} & self._foreign_keys
            now_n, now_latest = self._foreign_state(catalog)
            if now_n != n - len(replaced) or (now_latest is not None and (latest is None or now_latest > latest)):
                return self.load(catalog)  # another writer added or replaced embeddings
            self._foreign_keys -= replaced
            self._foreign = (now_n, now_latest)
        for model in sorted({r["model"] for r in pending}):
            ids, emb, hashes = self._read([r for r in pending if r["model"] == model])
            self._vectors.setdefault(model, _Vectors()).put(ids, emb, hashes)
        known = {c for c in self._pending_clips
                 if c in self._scores or any(c in v.pos for v in self._vectors.values())}
        if known:
            fresh = catalog.latest_scores(sorted(known))
            for c in known:  # a clip without a clips row ranks as one without scores, as in run_dedup
                self._scores[c] = _keep_rank_scores(fresh.get(c, {}))
        self._pending_index, self._pending_clips = {}, set()

    def score(self, catalog, run_id: str, new_clip_ids: Iterable[str] | None) -> list[dict]:
        """Score duplicates of the given clips (None: every clip) against the catalog; write the scores.

        Returns the score rows written; the caller re-decides the affected clips."""
        self.sync(catalog)
        written: list[dict] = []
        new_set = None if new_clip_ids is None else set(new_clip_ids)
        for model in sorted(self._vectors):
            v = self._vectors[model]
            if not v.ids:
                continue
            new = list(range(len(v.ids))) if new_set is None else sorted(v.pos[c] for c in new_set if c in v.pos)
            if not new:
                continue
            emb = v.emb
            rank = rank_order(v.ids, self._scores)
            if new_set is None:
                scored = duplicate_scores(v.ids, emb, v.hashes, rank, new)
            else:
                scored = new_and_affected_scores(v.ids, emb, v.hashes, rank, new, self.floor)
            for clip in sorted(scored, key=v.pos.__getitem__):
                values = scored[clip]
                written += [{"clip_id": clip, "scorer": k, "model": model, "version": DEDUP_VERSION, "value": v_}
                            for k, v_ in values.items()]
        catalog.write_scores(run_id, written)
        return written


def run_dedup(catalog, run_id: str, new_clip_ids: Iterable[str] | None, floor: float) -> list[dict]:
    """Score duplicates of the given clips (None: every clip) against the catalog; write the scores.

    One call reads every embedding and rank score of the catalog; a run that scores several
    windows keeps a ``DedupIndex`` instead. Returns the score rows written. The caller re-decides
    the affected clips.
    """
    return DedupIndex(floor).score(catalog, run_id, new_clip_ids)
