"""Duplicate scoring over a run's windows: run_dedup per window against one DedupIndex per run.

A catalog of N existing clips with synthetic unit embeddings (1% of them near copies of another,
rank scores random) is written as the runner writes it: one embedding Parquet file per 64-clip
batch, indexed in the catalog. Then a run of W windows of S new clips (each committed in 64-clip
batches, a few exact and near copies of existing clips among them) is committed to a copy of that
catalog, and each whole window is scored, either by `run_dedup` (what the runner did per window)
or by one `DedupIndex` kept across the windows; the reference is `run_dedup` as
filters/dedup.py has it at ``--reference-rev`` (default main: before the index). Each method runs
in its own process (peak RSS is the process's); the score rows written are saved and compared.

    python bench/bench_dedup_windows.py --clips 100000 --windows 4 --window-clips 512 --dir /tmp/dd
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BATCH = 64


def _rows(prefix: str, emb: np.ndarray, rng, shas=None) -> list[dict]:
    from vidcorpus.schemas import empty_row

    out = []
    for i, e in enumerate(emb):
        sid = f"{prefix}{i:07d}"
        out.append(empty_row(
            source_id=sid, uri=f"file:///{sid}.mp4", media_type="video", clip_id=f"{sid}-0000000-0000047",
            first_frame=0, last_frame=47, start_s=0.0, end_s=2.0, width=640, height=360,
            clip_path=f"/clips/{sid}.mp4", first_frame_path=f"/clips/{sid}.jpg",
            scores=[{"scorer": "aesthetic", "model": "a", "version": "1", "value": float(rng.uniform(3, 7))},
                    {"scorer": "clip_text", "model": "c", "version": "1", "value": float(rng.uniform(0.1, 0.4))},
                    {"scorer": "duration_s", "model": "", "version": "1", "value": 2.0}],
            embedding=e, embedding_model="ViT-L-14", content_sha256=(shas[i] if shas else None) or f"sha{sid}"))
    return out


def _write_file(root: str, run_id: str, seq: int, rows: list[dict], emb: np.ndarray) -> list[dict]:
    """What filters.dedup.write_embedding_batch writes, from a matrix instead of per-row lists."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vidcorpus.filters.dedup import model_slug

    model = "ViT-L-14"
    url = f"{root}/{model_slug(model)}/{run_id}-{seq:05d}.parquet"
    ids = [r["clip_id"] for r in rows]
    shas = [f"she{c[1:8]}" for c in ids]
    Path(url).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"clip_id": ids, "model": [model] * len(ids), "content_sha256": shas,
                             "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])}),
                   url)
    return [{"clip_id": c, "model": model, "dim": emb.shape[1], "url": url, "content_sha256": h}
            for c, h in zip(ids, shas)]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def build(d: Path, n: int, dim: int) -> None:
    from vidcorpus.catalog.store import Catalog
    from vidcorpus.filters.dedup import write_embedding_batch

    rng = np.random.default_rng(0)
    emb = _unit(rng.standard_normal((n, dim), dtype=np.float32))
    k = n // 100
    emb[n - k:] = _unit(emb[:k] + 0.15 * _unit(rng.standard_normal((k, dim), dtype=np.float32)))
    np.save(d / "existing.npy", emb[:1000])
    t = time.time()
    with Catalog(d / "base.duckdb") as cat:
        for start in range(0, n, 10_000):
            part = emb[start:start + 10_000]
            rows = _rows("e", [None] * len(part), rng)
            for i, r in enumerate(rows):
                r["source_id"] = f"e{start + i:07d}"
                r["clip_id"] = f"e{start + i:07d}-0000000-0000047"
            index = []
            for b in range(0, len(rows), BATCH):  # one file per 64-clip batch, as the runner writes
                index += _write_file(str(d / "emb"), "run0", (start + b) // BATCH, rows[b:b + BATCH], part[b:b + BATCH])
            cat.commit_results("run0", rows)
            cat.commit_embeddings("run0", index)
    print(json.dumps({"built_clips": n, "seconds": round(time.time() - t, 1)}), flush=True)


def _reference_run_dedup(rev: str):
    """run_dedup as filters/dedup.py has it at git revision `rev` (the reference measured beside ours)."""
    import importlib.util
    import tempfile

    root = Path(__file__).resolve().parents[1]
    src = subprocess.run(["git", "-C", str(root), "show", f"{rev}:filters/dedup.py"], check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "dedup_reference.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("dedup_reference", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.run_dedup


def run(d: Path, method: str, windows: int, size: int, floor: float, dim: int, rev: str) -> dict:
    from vidcorpus.catalog.store import Catalog
    from vidcorpus.filters.dedup import DedupIndex, run_dedup, write_embedding_batch

    if method == "reference":
        run_dedup = _reference_run_dedup(rev)  # noqa: F811

    db = d / f"{method}.duckdb"
    shutil.copy(d / "base.duckdb", db)
    shutil.rmtree(d / f"emb-{method}", ignore_errors=True)
    rng = np.random.default_rng(1)
    existing = np.load(d / "existing.npy")
    cat = Catalog(db, hold=False)
    index = DedupIndex(floor, "run1") if method == "index" else None
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    per_window, written_n, rows_out = [], [], []
    for w in range(windows):
        emb = _unit(rng.standard_normal((size, dim), dtype=np.float32))
        shas = [None] * size
        for j in range(8):  # a few exact copies and better near copies of existing clips
            emb[j] = existing[w * 8 + j]
            if j % 2 == 0:
                shas[j] = f"she{w * 8 + j:07d}"
            else:
                emb[j] = _unit(emb[j:j + 1] + 0.05 * _unit(rng.standard_normal((1, dim), dtype=np.float32)))[0]
        rows = _rows(f"w{w}n", emb.tolist(), rng, shas)
        new = []
        for b in range(0, size, BATCH):
            batch = rows[b:b + BATCH]
            ix = write_embedding_batch(str(d / f"emb-{method}"), "run1", w * size + b, batch)
            cat.commit_results("run1", batch)
            cat.commit_embeddings("run1", ix)
            if index is not None:
                index.committed([r["clip_id"] for r in batch], ix)
            new += [r["clip_id"] for r in ix]
        t = time.perf_counter()
        out = index.score(cat, "run1", new) if index is not None else run_dedup(cat, "run1", new, floor)
        per_window.append(round(time.perf_counter() - t, 3))
        written_n.append(len(out) // 2)
        rows_out += [[w, r["clip_id"], r["scorer"], r["value"]] for r in out]
    cat.close()
    (d / f"rows-{method}.json").write_text(json.dumps(rows_out))
    return {"method": method, "dedup_s_per_window": per_window, "dedup_s_total": round(sum(per_window), 3),
            "clips_scored_per_window": written_n,
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "rss_before_dedup_gb": round(rss_before / 2**20, 2),
            "full_reads": index.loads if index is not None else windows}


def compare(d: Path, x: str, y: str) -> dict:
    a = {(w, c, s): v for w, c, s, v in json.loads((d / f"rows-{x}.json").read_text())}
    b = {(w, c, s): v for w, c, s, v in json.loads((d / f"rows-{y}.json").read_text())}
    diff = max((abs(a[k] - b[k]) for k in a.keys() & b.keys()), default=0.0)
    exact = [k for k in a if k[2] == "dup_exact" and a[k] == 1.0]
    return {"same_rows": a.keys() == b.keys(), "rows": len(a), "max_abs_diff": diff,
            "dup_exact_equal": all(a[k] == b[k] for k in a if k[2] == "dup_exact"), "exact_dups_found": len(exact)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--window-clips", type=int, default=512)
    ap.add_argument("--floor", type=float, default=0.8)
    ap.add_argument("--dir", default="/tmp/bench_dedup_windows")
    ap.add_argument("--method", choices=["reference", "fresh", "index"])
    ap.add_argument("--reference-rev", default="main", help="git revision whose run_dedup is the reference")
    ap.add_argument("--out")
    args = ap.parse_args()
    d = Path(args.dir)
    if args.method:  # one measured process
        print(json.dumps(run(d, args.method, args.windows, args.window_clips, args.floor, args.dim,
                             args.reference_rev)), flush=True)
        return
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "base.duckdb").exists():
        build(d, args.clips, args.dim)
    results = {"uptime_before": os.popen("uptime").read().strip(), "args": vars(args)}
    for method in ("reference", "fresh", "index"):
        cmd = [sys.executable, __file__, "--method", method] + sum(
            [[f"--{k}", str(getattr(args, k.replace("-", "_")))] for k in ("dim", "windows", "window-clips", "floor",
                                                                         "dir", "reference-rev")], [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[method] = json.loads(out.strip().splitlines()[-1])
        results[f"uptime_after_{method}"] = os.popen("uptime").read().strip()
        print(json.dumps(results[method]), flush=True)
    results["compare_index_fresh"] = compare(d, "fresh", "index")
    results["compare_index_reference"] = compare(d, "reference", "index")
    for m in ("reference", "fresh"):
        total = results[m]["dedup_s_total"]
        results[f"ratio_total_{m}_over_index"] = round(total / results["index"]["dedup_s_total"], 2)
    print(json.dumps({k: v for k, v in results.items() if k.startswith(("compare", "ratio"))}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
