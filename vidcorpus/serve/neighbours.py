"""A clip's nearest neighbours by CLIP embedding (the clip page's "near duplicates").

The embeddings live in Parquet files the catalog indexes (``filters/dedup.py``); the catalog keeps
only each clip's best duplicate score (``dup_sim``), not which clip it is. So the server reads the
embeddings of the clip's model once, remembers them while the index stays the same (row count and
newest ``written_at``), and ranks by cosine similarity. Up to ``MAX_EMBEDDINGS`` per model: past
that, reading them all per process would be the wrong tool (an ANN index over the same files
would be), and the page says so. Files are read only from inside the served folders.
"""

from __future__ import annotations

import threading

import duckdb
import numpy as np

from vidcorpus.filters.dedup import read_embeddings
from vidcorpus.serve.security import inside_roots

MAX_EMBEDDINGS = 200_000


class Neighbours:
    def __init__(self, roots: list[str]):
        self.roots = roots
        self._lock = threading.Lock()
        self._models: dict[str, tuple[tuple, list[str], np.ndarray]] = {}

    def index_of(self, con: duckdb.DuckDBPyConnection, clip_id: str,
                 model: str | None | bool = False) -> tuple[str, tuple, list[dict]] | str | None:
        """(model, stamp, index rows to read) for the clip's model; a reason string when it cannot
        be done; None when the clip has no embedding. Reads the catalog only (inside a request).
        ``model``: the clip's embedding model when the page already probed it (None: it has none)."""
        if model is False:
            try:
                row = con.execute("SELECT model FROM embeddings WHERE clip_id = ? LIMIT 1", [clip_id]).fetchall()
            except duckdb.CatalogException:
                return None
            model = row[0][0] if row else None
        if model is None:
            return None
        stamp = tuple(con.execute("SELECT count(*), max(written_at) FROM embeddings WHERE model = ?",
                                  [model]).fetchall()[0])
        if stamp[0] > MAX_EMBEDDINGS:
            return f"{stamp[0]} embeddings of {model}: too many to rank here (dup_sim above is the best match's similarity)"
        cached = self._models.get(model)
        if cached is not None and cached[0] == stamp:
            return model, stamp, []
        rows = [{"clip_id": c, "url": u} for c, u in con.execute(
            "SELECT clip_id, url FROM embeddings WHERE model = ?", [model]).fetchall()]
        if any(not inside_roots(r["url"], self.roots) for r in rows):
            return "embedding files lie outside the served folders"
        return model, stamp, rows

    def nearest(self, clip_id: str, plan: tuple[str, tuple, list[dict]], k: int = 8) -> list[tuple[str, float]]:
        """The ``k`` most similar other clips (id, cosine similarity), reading the files if needed."""
        model, stamp, rows = plan
        with self._lock:
            cached = self._models.get(model)
            if cached is None or cached[0] != stamp:
                ids, mat, _hashes = read_embeddings(rows)
                norms = np.linalg.norm(mat, axis=1, keepdims=True)
                cached = (stamp, ids, mat / np.maximum(norms, 1e-12))
                self._models[model] = cached
        _, ids, mat = cached
        if clip_id not in ids:
            return []
        sims = mat @ mat[ids.index(clip_id)]
        order = [i for i in np.argsort(-sims) if ids[i] != clip_id][:k]
        return [(ids[i], float(sims[i])) for i in order]
