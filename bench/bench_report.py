"""`vidcorpus report` on a large catalog: wall time and peak memory of the whole process tree.

Runs the CLI as a user would (a fresh process, read-only catalog) and samples the resident memory
of it and its children with psutil every 50 ms; the peak is the largest sum seen. The catalog comes
from ``bench_catalog.py --direct --report --score-rows`` (clips_wide, clips, sources, decisions,
captions, every clip's 15 long score rows as the driver writes them plus a caption-QA score per kept
clip, shards, the recipe), e.g.

    python bench/bench_catalog.py --clips 10000000 --direct --report --score-rows --fill-only \\
        --memory-limit 8GB --db /tmp/bench-catalog/c10m.duckdb
    python bench/bench_report.py --db /tmp/bench-catalog/c10m.duckdb --json bench/results/report_10m.json

Target (issue 24): under 60 s and 4 GB at 10 M clips.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import psutil


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc] + proc.children(recursive=True):
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run_report(db: str, out: str, extra: list[str]) -> dict:
    """One `vidcorpus report` run: wall seconds, peak RSS of the process tree, its last output line."""
    shutil.rmtree(out, ignore_errors=True)
    cli = Path(sys.executable).with_name("vidcorpus")
    cmd = [str(cli), "report", "--catalog", db, "-o", out, *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, _tree_rss(ps))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    output = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"report failed ({proc.returncode}):\n{output[-3000:]}")
    return {"command": " ".join(cmd), "wall_s": wall, "peak_rss_bytes": peak,
            "summary": [ln for ln in output.splitlines() if ln.startswith("report:")][-1:],
            "plots": len(list(Path(out, "plots").glob("*.png"))), "clip_pages": len(list(Path(out, "clips").glob("*.html")))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", required=True, help="The catalog (bench_catalog.py --direct --report).")
    ap.add_argument("--out", default="/tmp/bench-report")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--run", default=None, help="Also time `report --run RUN`.")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    con = duckdb.connect(args.db, read_only=True)
    counts = dict(con.execute(
        "SELECT 'clips_wide', count(*) FROM clips_wide UNION ALL SELECT 'sources', count(*) FROM sources "
        "UNION ALL SELECT 'captions', count(*) FROM captions UNION ALL SELECT 'scores', count(*) FROM scores "
        "UNION ALL SELECT 'decisions', count(*) FROM decisions").fetchall())
    con.close()
    commit = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent).stdout.strip() or None
    load_before = os.getloadavg()
    runs = [dict(run_report(args.db, args.out, []), scope="whole catalog") for _ in range(args.repeat)]
    if args.run:
        runs.append(dict(run_report(args.db, args.out + "-run", ["--run", args.run]), scope=f"run {args.run}"))
    out = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
                   f"duckdb {duckdb.__version__}, Python {platform.python_version()}",
        "command": "python " + " ".join(sys.argv), "commit": commit, "catalog_bytes": os.path.getsize(args.db), "counts": counts,
        "load_before": load_before, "load_after": os.getloadavg(), "runs": runs,
        "target": {"wall_s": 60, "peak_rss_bytes": 4 * 10**9},
    }
    for r in runs:
        print(f"{r['scope']:>20}: {r['wall_s']:.1f} s, peak RSS {r['peak_rss_bytes'] / 1e9:.2f} GB  {r['summary']}")
    print(f"load average before {load_before[0]:.2f}, after {out['load_after'][0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
