"""`vidcorpus serve` under load (issue 25): concurrent clients browse the grid and clip pages of a
large catalog; per-page latency percentiles and errors. A benchmark, not a timed test.

The catalog is filled straight in SQL (``bench_catalog._direct_load``: sources, clips_wide, shards,
shard_members, train_samples) plus the long tables a clip page reads (one score row per clip and
scorer, one decision per clip) and the recipe in force. The server is the real CLI
(``vidcorpus serve``) in its own process; each client is a thread with its own HTTP session that
asks for a grid page (60 %: a random filter, sort and page) or a clip page (40 %), then pauses
``--think-ms`` (0: no pause, every client asks again as soon as its page came; a person browsing
pauses a second or more between pages). The JSON records the load average before and after, and
how the server made each grid page (its ``X-Vidcorpus-Cache`` header: page, order or miss).

    python bench/bench_serve.py --clips 1000000 --clients 50 --seconds 60 --think-ms 0 \\
        --db /tmp/bench-serve/c1m.duckdb --json bench/results/serve_load_1m.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_catalog import SCORERS, _direct_load  # noqa: E402

RECIPE = "name: bench\nversion: '1'\nmissing: keep\npredicates:\n  - {score: aesthetic, op: '>=', value: 4}\n"


def build(db: Path, n: int, scorers: list[str], score_rows: bool = True) -> float:
    """Fill the catalog; ``score_rows=False`` leaves out the long scores table (15 rows per clip), which
    no page of the server reads (scores come from clips_wide): what makes a 10 M build fit in minutes."""
    from vidcorpus.catalog import wide_table
    from vidcorpus.catalog.corpus_state import set_active_recipe
    from vidcorpus.catalog.store import Catalog
    from vidcorpus.recipe_model import recipe_from_text

    t = time.perf_counter()
    db.parent.mkdir(parents=True, exist_ok=True)
    for p in (db, Path(str(db) + ".wal")):
        p.unlink(missing_ok=True)
    cat = Catalog(db)
    con = cat.con
    con.execute("SET threads = 2")
    wide_table.sync_columns(con, scorers)
    _direct_load(con, n, scorers)
    con.execute("INSERT INTO clips BY NAME SELECT clip_id, source_id, media_type, first_frame, last_frame, start_s, "
                "end_s, duration_s, n_frames, fps, width, height, clip_path, first_frame_path, run_id, updated_at, "
                "extract_mode FROM clips_wide")
    cols = ", ".join(f'"{s}"' for s in scorers)
    if score_rows:
        con.execute(f"INSERT INTO scores SELECT clip_id, scorer, 'bench-model', '1', value, run_id, updated_at "
                    f"FROM (UNPIVOT (SELECT clip_id, run_id, updated_at, {cols} FROM clips_wide) ON {cols} "
                    f"INTO NAME scorer VALUE value)")
    con.execute("INSERT INTO decisions SELECT clip_id, 'bench@1', kept, reason, run_id, updated_at FROM clips_wide")
    set_active_recipe(cat, recipe_from_text(RECIPE), origin="bench")
    con.execute("CHECKPOINT")
    cat.close()
    return time.perf_counter() - t


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its live children so far (Linux /proc): the
    server's worker processes with ``--workers N``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        total += sum(_cpu_s(int(child)) for child in task.read_text().split())
    return total


def _peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident memory (VmHWM, Linux /proc), in MB: the caches' and columns' cost."""
    try:
        line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmHWM:"))
    except (FileNotFoundError, StopIteration):
        return None
    return int(line.split()[1]) / 1024


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=1_000_000)
    ap.add_argument("--scorers", type=int, default=15)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--db", default="/tmp/bench-serve/catalog.duckdb")
    ap.add_argument("--skip-load", action="store_true", help="Reuse the catalog at --db.")
    ap.add_argument("--no-score-rows", action="store_true",
                    help="Build without the long scores table (no page reads it; a 10 M build in minutes).")
    ap.add_argument("--think-ms", type=float, default=0.0, help="Pause of each client between pages.")
    ap.add_argument("--serve-args", default="", help="More options for `vidcorpus serve`, e.g. '--query-threads 1'.")
    ap.add_argument("--clip-pool", type=int, default=2000, help="Clips the clip pages are drawn from.")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import duckdb

    scorers = SCORERS[:args.scorers]
    db = Path(args.db)
    build_s = None if args.skip_load else build(db, args.clips, scorers, score_rows=not args.no_score_rows)
    con = duckdb.connect(str(db), read_only=True)
    ids = [r[0] for r in con.execute(f"SELECT clip_id FROM clips_wide USING SAMPLE {args.clip_pool} ROWS").fetchall()]
    n_clips = con.execute("SELECT count(*) FROM clips_wide").fetchall()[0][0]
    con.close()
    port = _free_port()
    log = open(str(db) + ".serve.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "vidcorpus.cli", "serve", "--catalog", str(db), "--port",
                               str(port), *args.serve_args.split()], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if requests.get(base + "/favicon.ico", timeout=2).status_code == 204:
                break
        except requests.RequestException:  # not listening yet, or its workers still starting
            time.sleep(0.2)
    results: list[tuple[str, float, int, str]] = []
    server_cpu_before, client_cpu_before = _cpu_s(server.pid), time.process_time()
    lock = threading.Lock()
    load_before = os.getloadavg()
    started_utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    deadline = time.monotonic() + args.seconds

    def client(seed: int) -> None:
        rnd = random.Random(seed)
        if args.think_ms > 0:  # people arrive at different times: no burst of every client's first page at once
            time.sleep(rnd.uniform(0, args.think_ms / 1000))
        with requests.Session() as s:
            while time.monotonic() < deadline:
                if rnd.random() < 0.6:
                    params = {"page": rnd.randint(1, 50), "sort": rnd.choice(scorers), "desc": rnd.choice(["", "1"]),
                              "decision": rnd.choice(["", "kept", "dropped"])}
                    if rnd.random() < 0.5:
                        params[f"min_{rnd.choice(scorers)}"] = round(rnd.uniform(0, 8), 2)
                    kind, url = "grid", base + "/"
                else:
                    kind, url, params = "clip", f"{base}/clip/{rnd.choice(ids)}", {}
                t = time.perf_counter()
                try:
                    r = s.get(url, params=params, timeout=60)
                    status, how = r.status_code, r.headers.get("X-Vidcorpus-Cache", "")
                except requests.RequestException:
                    status, how = -1, ""
                with lock:
                    results.append((kind, time.perf_counter() - t, status, how))
                if args.think_ms > 0:
                    time.sleep(rnd.uniform(0.5, 1.5) * args.think_ms / 1000)  # around think_ms, not in lockstep

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    load_after = os.getloadavg()
    server_cpu = _cpu_s(server.pid) - server_cpu_before
    client_cpu = time.process_time() - client_cpu_before
    server_rss_mb = _peak_rss_mb(server.pid)  # (one process: with --workers N, the parent's only)
    server.terminate()
    server.wait(timeout=30)
    out = {"clips": n_clips, "scorers": len(scorers), "clients": args.clients, "seconds": args.seconds,
           "think_ms": args.think_ms, "serve_args": args.serve_args, "clip_pool": len(ids), "build_s": build_s, "cpus": os.cpu_count(), "loadavg_before": load_before,
           "loadavg_after": load_after, "started_utc": started_utc,
           # CPU seconds the server process and this client process used during the run (of 2 x seconds
           # available on 2 cores, shared with whatever else runs): per page, the server's cost
           "server_cpu_s": server_cpu, "client_cpu_s": client_cpu,
           "server_cpu_ms_per_page": 1000 * server_cpu / max(1, len(results)), "server_peak_rss_mb": server_rss_mb,
           "pages": {}}
    for kind in ("grid", "clip", "all"):
        rows = [r for r in results if kind == "all" or r[0] == kind]
        lat = [r[1] for r in rows]
        out["pages"][kind] = {"n": len(rows), "errors": sum(r[2] != 200 for r in rows),
                              "per_s": len(rows) / args.seconds, "p50_s": statistics.median(lat),
                              "p95_s": _pct(lat, 0.95), "p99_s": _pct(lat, 0.99), "max_s": max(lat),
                              "made": {h: sum(r[3] == h for r in rows) for h in sorted({r[3] for r in rows}) if h}}
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
