"""Where `vidcorpus serve`'s CPU goes, in-process: the request mix of ``bench_serve.py`` sent straight
to the handlers (no HTTP), timed per page kind. A profiling aid, not a benchmark of the server.

Each request is a Starlette ``Request`` built from its ASGI scope and handed to the route's handler,
as the server's thread pool would. Per kind (grid pages by filter: none, decision, slider, both;
clip pages: first visit or rendered before) it prints the count and the mean and p95 of wall and
thread CPU time; ``--cprofile N`` prints the N costliest functions by cumulative time.

    python bench/profile_serve.py --db /tmp/bench-serve4/c1m.duckdb --pages 3000 --cprofile 40
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import statistics
import time
from collections import defaultdict
from urllib.parse import urlencode

import duckdb

from bench_catalog import SCORERS  # noqa: F401 (same score names as the catalog bench_serve builds)


def _request(app, path: str, params: dict, path_params: dict | None = None):
    from starlette.requests import Request

    return Request({"type": "http", "method": "GET", "path": path, "raw_path": path.encode(), "root_path": "",
                    "query_string": urlencode(params).encode(), "headers": [(b"host", b"127.0.0.1")],
                    "app": app, "path_params": path_params or {}, "scheme": "http", "server": ("127.0.0.1", 80)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--pages", type=int, default=3000)
    ap.add_argument("--clip-pool", type=int, default=2000)
    ap.add_argument("--scorers", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cprofile", type=int, default=0, help="Print this many functions by cumulative time.")
    args = ap.parse_args()
    from vidcorpus.serve.app import ServeSettings, clip_page, index, make_app

    con = duckdb.connect(args.db, read_only=True)
    ids = [r[0] for r in con.execute(f"SELECT clip_id FROM clips_wide USING SAMPLE {args.clip_pool} ROWS").fetchall()]
    scorers = [c for c in con.sql("SELECT * FROM clips_wide LIMIT 0").columns if c in SCORERS][:args.scorers]
    con.close()
    app = make_app(ServeSettings(catalog=args.db))
    rnd = random.Random(args.seed)
    t0 = time.perf_counter()
    index(_request(app, "/", {}))  # the grid's columns and the catalog's facts, once
    print(f"first page (columns, facts): {time.perf_counter() - t0:.2f} s")
    stats: dict[str, list[tuple[float, float]]] = defaultdict(list)
    prof = cProfile.Profile() if args.cprofile else None
    for _ in range(args.pages):
        if rnd.random() < 0.6:
            params = {"page": rnd.randint(1, 50), "sort": rnd.choice(scorers), "desc": rnd.choice(["", "1"]),
                      "decision": rnd.choice(["", "kept", "dropped"])}
            slider = rnd.random() < 0.5
            if slider:
                params[f"min_{rnd.choice(scorers)}"] = round(rnd.uniform(0, 8), 2)
            kind = "grid" + (" decision" if params["decision"] else "") + (" slider" if slider else "")
            handler, req = index, _request(app, "/", params)
        else:
            clip_id = rnd.choice(ids)
            kind, handler = "clip", clip_page
            req = _request(app, f"/clip/{clip_id}", {}, {"clip_id": clip_id})
        w, c = time.perf_counter(), time.thread_time()
        if prof:
            prof.enable()
        resp = handler(req)
        if prof:
            prof.disable()
        w, c = time.perf_counter() - w, time.thread_time() - c
        how = resp.headers.get("X-Vidcorpus-Cache", "")
        stats[f"{kind} ({how})"].append((w, c))
    print(f"{'kind':32} {'n':>5} {'wall mean':>10} {'wall p95':>9} {'cpu mean':>9} {'cpu p95':>8}  (ms)")
    everything = []
    for kind in sorted(stats):
        rows = stats[kind]
        everything += rows
        walls, cpus = sorted(r[0] for r in rows), sorted(r[1] for r in rows)
        print(f"{kind:32} {len(rows):5d} {1000 * statistics.mean(walls):10.2f} "
              f"{1000 * walls[int(0.95 * (len(walls) - 1))]:9.2f} {1000 * statistics.mean(cpus):9.2f} "
              f"{1000 * cpus[int(0.95 * (len(cpus) - 1))]:8.2f}")
    print(f"{'all':32} {len(everything):5d} {1000 * statistics.mean(r[0] for r in everything):10.2f} {'':9} "
          f"{1000 * statistics.mean(r[1] for r in everything):9.2f}")
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(args.cprofile)
    app.state.access.close()


if __name__ == "__main__":
    main()
