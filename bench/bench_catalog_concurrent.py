"""A large catalog stays queryable while a run appends to it (issue 11's load item, issue 3's file).

A writer process appends runner-sized batches (``--batch`` clips with all their rows, through
``Catalog.commit_fragments`` with ``hold=False``, as the runner commits: the file is opened for each
transaction and closed after it) while this process keeps answering the audit queries of
``bench_catalog.py`` through ``Catalog(read_only=True)`` (which waits and retries while a commit
holds the file). Reported: per-query latency (open included) while the writer runs, against the
same queries on the same file before the writer starts; the writer's commit times; and the exact
clip count afterwards (no row lost, none duplicated).

    python bench/bench_catalog_concurrent.py --db /tmp/bench-catalog/c10m.duckdb --commits 40 --json out.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_catalog import SCORERS, _gen, _queries  # noqa: E402


def _writer(db: str, n_total: int, first: int, commits: int, batch: int, gap_s: float, scorers: list[str],
            out: "mp.Queue") -> None:
    from vidcorpus.catalog.store import Catalog

    cat = Catalog(db, hold=False)
    times = []
    for k in range(commits):
        lo = first + batch * k
        frags = _gen(lo, lo + batch, n_total, scorers)
        t = time.perf_counter()
        cat.commit_fragments(f"append-{k:03d}", frags)
        times.append(time.perf_counter() - t)
        time.sleep(gap_s)  # a runner's batch of work between commits
    cat.close()
    out.put(times)


def _ask(db: str, sql: str) -> tuple[float, int]:
    from vidcorpus.catalog.store import Catalog

    t = time.perf_counter()
    with Catalog(db, read_only=True) as cat:
        rows = len(cat._fetch(sql))
    return time.perf_counter() - t, rows


def _summary(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {"n": len(xs), "median_s": statistics.median(xs), "p95_s": xs[min(len(xs) - 1, int(0.95 * len(xs)))],
            "max_s": xs[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--commits", type=int, default=40)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--gap", type=float, default=0.5, help="Seconds between the writer's commits.")
    ap.add_argument("--scorers", type=int, default=15, help="As the loaded file (bench_catalog.py --scorers).")
    ap.add_argument("--quiet-rounds", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from vidcorpus.catalog.store import Catalog

    with Catalog(args.db, read_only=True) as cat:
        n0 = cat._fetch("SELECT count(*) FROM clips")[0][0]
        w0 = cat._fetch("SELECT count(*) FROM clips_wide")[0][0]
        sample = cat._fetch("SELECT clip_id FROM clips LIMIT 1")[0][0]
    queries = _queries(sample)
    first = n0 + 10_000_000  # clip ids beyond anything loaded (ids are a function of the index)
    quiet = {name: [_ask(args.db, sql)[0] for _ in range(args.quiet_rounds)] for name, sql in queries.items()}
    print("quiet:", {k: round(statistics.median(v), 3) for k, v in quiet.items()}, flush=True)

    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=_writer, args=(args.db, n0, first, args.commits, args.batch, args.gap, SCORERS[:args.scorers], out))
    started = time.perf_counter()
    proc.start()
    during: dict[str, list[float]] = {k: [] for k in queries}
    errors: list[str] = []
    while proc.is_alive():
        for name, sql in queries.items():
            try:
                during[name].append(_ask(args.db, sql)[0])
            except Exception as e:  # noqa: BLE001 - a failed read is what this measures
                errors.append(f"{name}: {type(e).__name__}: {e}"[:300])
            if not proc.is_alive():
                break
    commit_times = out.get(timeout=60)
    proc.join()
    wall = time.perf_counter() - started

    with Catalog(args.db, read_only=True) as cat:
        n1 = cat._fetch("SELECT count(*) FROM clips")[0][0]
        w1 = cat._fetch("SELECT count(*) FROM clips_wide")[0][0]
        dup = cat._fetch("SELECT count(*) - count(DISTINCT clip_id) FROM clips")[0][0]
    res = {
        "db": args.db, "bytes": os.path.getsize(args.db), "clips_before": n0, "clips_after": n1,
        "wide_before": w0, "wide_after": w1, "expected_added": args.commits * args.batch, "duplicate_clip_ids": dup,
        "writer": {"commits": args.commits, "batch": args.batch, "gap_s": args.gap, "wall_s": wall,
                   **_summary(commit_times)},
        "queries_quiet": {k: _summary(v) for k, v in quiet.items()},
        "queries_during_writes": {k: _summary(v) if v else None for k, v in during.items()},
        "read_errors": errors, "load_avg": os.getloadavg(),
    }
    assert n1 - n0 == args.commits * args.batch and w1 - w0 == args.commits * args.batch and dup == 0, res
    print(json.dumps(res, indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
