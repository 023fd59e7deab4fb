"""Memory and load times of the serve grid's columns (``vidcorpus/serve/grid_index.py``) on a large catalog.

The web app answers the grid's standard filters and sorts from numpy arrays built once per catalog
state: a first read (ids, decisions, sources, reasons, media types), then per score a column and its
ascending order on first use, the descending order from the ascending one. This builds them in
process through the same code (``grid_columns``, ``GridColumns.numeric`` / ``order``) on a
read-only, locked-down connection like the server's, loads every score both ways, and records the
wall and CPU seconds of each load, the bytes the arrays hold, and which orders the order budget
(``ORDER_BUDGET_BYTES``) dropped. A benchmark, not a timed test; the catalog is never written.

    python bench/bench_grid_memory.py --db /tmp/bench-serve/c1m.duckdb --json bench/results/grid_memory_1m.json
    # a 10 M catalog built first, as bench_serve.py builds it with --no-score-rows (minutes, ~4.8 GB):
    python bench/bench_grid_memory.py --build-clips 10000000 --db /tmp/bench-grid/c10m.duckdb \\
        --json bench/results/grid_memory_10m.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from run_meta import finish_metadata, run_metadata  # noqa: E402

from vidcorpus.catalog.safe_sql import lock_down  # noqa: E402
from vidcorpus.catalog.store import Catalog, CatalogError  # noqa: E402
from vidcorpus.serve import grid_index, grid_queries  # noqa: E402


def array_bytes(obj: object) -> int:
    """Bytes held by the numpy and Arrow arrays inside ``obj`` (attributes, dataclasses, containers)."""
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, (pa.Array, pa.ChunkedArray)):
        return obj.nbytes
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(array_bytes(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    if isinstance(obj, dict):
        return sum(array_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(array_bytes(v) for v in obj)
    if hasattr(obj, "__dict__") and type(obj).__module__ == grid_index.__name__:
        return sum(array_bytes(v) for v in vars(obj).values())
    return 0


def _rss() -> int:
    return psutil.Process().memory_info().rss


def _timed(fn):
    """(result, wall s, CPU s of the whole process: DuckDB's threads included)."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def measure(db: str) -> dict:
    """First read, then every score's column and orders, as the grid loads them on first use."""
    cat = Catalog(db, read_only=True)
    con = cat.con.cursor()  # the server reads through a cursor of its read-only connection
    lock_down(con)
    n_clips = con.execute("SELECT count(*) FROM clips_wide").fetchall()[0][0]
    scores = grid_queries.score_columns(con)
    load_start, rss_before = os.getloadavg()[0], _rss()
    columns, wall, cpu = _timed(lambda: grid_index.grid_columns(con))
    if columns is None:
        raise SystemExit(f"{db}: clips_wide has no row ids (a snapshot?): the grid reads DuckDB there")
    first = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "array_bytes": array_bytes(columns),
             "rss_added_bytes": _rss() - rss_before}
    per_score = []
    for name in scores:
        col, col_wall, col_cpu = _timed(lambda: columns.numeric(con, name))
        _, asc_wall, asc_cpu = _timed(lambda: columns.order(con, name, False))
        _, desc_wall, desc_cpu = _timed(lambda: columns.order(con, name, True))
        per_score.append({"score": name, "numeric": col is not None,
                          "column_wall_s": round(col_wall, 3), "column_cpu_s": round(col_cpu, 3),
                          "ascending_wall_s": round(asc_wall, 3), "ascending_cpu_s": round(asc_cpu, 3),
                          "column_and_ascending_wall_s": round(col_wall + asc_wall, 3),
                          "descending_wall_s": round(desc_wall, 3), "descending_cpu_s": round(desc_cpu, 3),
                          "orders_held": len(columns._orders)})
    numeric = [s["score"] for s in per_score if s["numeric"]]
    wanted = [(s, d) for s in numeric for d in (False, True)]
    held = set(columns._orders)
    dropped = [f"{s} {'desc' if d else 'asc'}" for s, d in wanted if (s, d) not in held]
    out = {
        "db": db, "db_bytes": os.path.getsize(db), "clips": n_clips, "scores": len(scores),
        # the measurement's own load (the run's, in meta, starts before a --build-clips build)
        "load_1min_measure_start": load_start, "load_1min_measure_end": os.getloadavg()[0],
        "first_read": first,
        "one_score": per_score[0] if per_score else None,
        "median_score": {k: round(float(np.median([s[k] for s in per_score])), 3) for k in
                         ("column_and_ascending_wall_s", "descending_wall_s")} if per_score else None,
        "all_scores": {
            "columns_bytes": sum(array_bytes(c) for c in columns._numeric.values()),
            "orders_bytes": sum(o.nbytes for o in columns._orders.values()),
            "orders_wanted": len(wanted), "orders_held": len(held), "orders_dropped": dropped,
            "order_budget_bytes": grid_index.ORDER_BUDGET_BYTES,
            "loads": columns.loads,  # columns + orders computed (more than wanted: a dropped order recomputed)
            "total_array_bytes": array_bytes(columns),
            "rss_added_bytes": _rss() - rss_before,
            "wall_s": round(sum(s["column_and_ascending_wall_s"] + s["descending_wall_s"] for s in per_score), 3),
        },
        "per_score": per_score,
    }
    con.close()
    cat.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", required=True, help="The catalog (DuckDB file); opened read-only.")
    ap.add_argument("--build-clips", type=int, default=None,
                    help="Build a catalog of this many clips at --db first (bench_serve.py's build, "
                         "15 scores, no long scores table); replaces what is there.")
    ap.add_argument("--json", default=None, help="Where to write the raw result.")
    args = ap.parse_args()
    meta = run_metadata()
    build = None
    if args.build_clips:
        # only a build needs the serve benchmark's catalog loader (and what it imports)
        from bench_serve import SCORERS, build as build_catalog

        build = {"clips": args.build_clips, "no_score_rows": True,
                 "seconds": round(build_catalog(Path(args.db), args.build_clips, SCORERS[:15],
                                                score_rows=False), 1),
                 "load_1min_after": os.getloadavg()[0]}
    try:
        result = {"meta": meta, "build": build, **measure(args.db)}
    except CatalogError as e:
        raise SystemExit(f"bench_grid_memory: {e}") from None
    result["meta"] = finish_metadata(meta)
    first, every = result["first_read"], result["all_scores"]
    print(f"{result['clips']:,} clips: first read {first['wall_s']:.2f} s wall, {first['cpu_s']:.2f} s CPU, "
          f"{first['array_bytes'] / 1e6:,.0f} MB; {result['scores']} scores both ways: "
          f"+{every['columns_bytes'] / 1e6:,.0f} MB columns, +{every['orders_bytes'] / 1e6:,.0f} MB orders, "
          f"dropped {len(every['orders_dropped'])} of {every['orders_wanted']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
