"""Soak: repeated pipeline runs with random SIGKILLs of the driver and of Ray workers, and injected
source faults, checking after every run that nothing was lost or duplicated (issue 11).

Setup: N short generated videos (bench/load_pipeline.py's), plus inputs that must fail (an HTML
page named .mp4, a zero-byte file, a malformed row, a URL with credentials to a name that never resolves), are
served by a loopback HTTP server that injects faults: 503 answers, connection resets and stalls
longer than the read timeout, never more than two in a row for one path (the downloader retries
three times, so every fault is recoverable and the final catalog must not depend on them).

First one uninterrupted run without faults gives the reference state. Then, until the time is up,
cycles: a fresh work folder; runs on it, each one either
  - killed: the driver is SIGKILLed after a random delay (its whole process group is reaped), or
  - worker kill: one busy Ray worker (task or actor) is SIGKILLed mid-run, and the run must finish,
  - plain: the run finishes,
at most ``--max-kills`` driver kills per cycle, then a run that must finish. After every run the
catalog is checked (no clip, score, caption or shard member twice; every visible tar recorded
after a finished run); after the finishing run the catalog, clip bytes and shards must equal the
reference: same clip ids and content hashes, same kept clips and shard members, same failures.

    python bench/soak.py --minutes 12 --videos 8 --out bench/results/soak
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

DRIVER = """
import logging
import sys
from vidcorpus.config import load_config
from vidcorpus.jobs.curate.pipeline import run_pipeline
from vidcorpus.jobs.curate import pipeline
work, inputs, cache = sys.argv[1:4]
cfg = load_config(None, ["ray.num_cpus=2", "ray.commit_rows=4", "ingest.allow_private_addresses=true", "ingest.retries=3",
                         "ingest.backoff_s=0.05", "ingest.read_timeout_s=1.0", "ingest.connect_timeout_s=2.0",
                         "shards.max_samples=4"],
                  workdir=work, inputs=[inputs], **{"models.cache_dir": cache})
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)  # the run's lines, as the CLI shows them
s = run_pipeline(cfg, progress=False)
print("DONE", s.rows_committed, len(s.shards), flush=True)
"""
SECRET = "soakSecret0123456789"


class FaultServer:
    """Serves a folder; injects 503s, resets and stalls at random, at most two in a row per path."""

    def __init__(self, root: Path, p_fault: float, seed: int):
        self.root, self.p, self.rng = root, p_fault, random.Random(seed)
        self.enabled = False
        self.faults = {"503": 0, "reset": 0, "stall": 0}
        self.requests = 0
        self.streak: dict[str, int] = {}
        self.lock = threading.Lock()
        srv = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):  # noqa: N802
                path = self.path.split("?")[0]
                with srv.lock:
                    srv.requests += 1
                    fault = None
                    if srv.enabled and srv.streak.get(path, 0) < 2 and srv.rng.random() < srv.p:
                        fault = srv.rng.choice(["503", "reset", "stall"])
                        srv.faults[fault] += 1
                        srv.streak[path] = srv.streak.get(path, 0) + 1
                    else:
                        srv.streak[path] = 0
                try:
                    if fault == "reset":
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        self.close_connection = True
                        self.connection.close()
                        return
                    if fault == "503":
                        self.send_response(503)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    if fault == "stall":
                        time.sleep(2.5)  # longer than the run's read timeout (1 s)
                    f = srv.root / path.lstrip("/")
                    if not f.is_file():
                        self.send_response(404)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    data = f.read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def make_inputs(base: Path, n: int, server_url: str) -> Path:
    from load_pipeline import make_short_video

    www = base / "www"
    www.mkdir(parents=True)
    rows = []
    for i in range(n):
        p = make_short_video(i, www)
        rows.append({"url": f"{server_url}/{p.name}", "text": f"soak video {i}"})
    (www / "page.mp4").write_bytes(b"<!doctype html><html><body>not a video</body></html>")
    (www / "empty.mp4").write_bytes(b"")
    rows += [{"url": f"{server_url}/page.mp4", "text": "html named mp4"},
             {"url": f"{server_url}/empty.mp4", "text": "zero bytes"},
             # a credentialed URL to a name that never resolves (.invalid): a dns failure row, no traffic
             {"url": f"http://user:{SECRET}@media.invalid/latest.mp4?X-Amz-Signature={SECRET}", "text": "creds"}]
    lst = base / "sources.jsonl"
    lst.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json at all\n")
    return lst


def start(work: Path, inputs: Path, cache: str, log: Path) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_DEDUP_LOGS="0")
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(work), str(inputs), cache], stdout=open(log, "a"),
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)


def reap(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    time.sleep(0.5)


def ray_workers(proc: subprocess.Popen) -> list:
    """Busy Ray Data worker processes under the driver: map tasks and the stages' actor pools.

    Not Ray's own processes (dashboard and runtime-env agents, stats and location actors): killing
    the dashboard agent takes the whole node down with it, which is a node failure, not a worker's.
    """
    import psutil

    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in kids:
        try:
            title = " ".join(p.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if title.startswith("ray::") and ("MapBatches" in title or "MapWorker" in title or "ReadArrow" in title) \
                and "IDLE" not in title:
            out.append((p, title.split()[0]))
    return out


def state(work: Path) -> dict:
    from vidcorpus.catalog.store import Catalog

    with Catalog(work / "catalog.duckdb", read_only=True) as cat:
        q = lambda s: cat.con.execute(s).fetchall()  # noqa: E731
        clips = {}
        for cid, path in q("SELECT clip_id, clip_path FROM clips"):
            clips[cid] = hashlib.sha256(Path(path).read_bytes()).hexdigest() if Path(path).exists() else None
        shard_rows = {Path(u).name: sha for u, sha in q("SELECT url, sha256 FROM shards")}
        return {
            "clips": clips,
            "dup_clips": q("SELECT count(*) - count(DISTINCT clip_id) FROM clips")[0][0],
            "dup_scores": q("SELECT count(*) - count(DISTINCT (clip_id, scorer)) FROM scores")[0][0],
            "dup_captions": q("SELECT count(*) - count(DISTINCT (clip_id, version, kind)) FROM captions")[0][0],
            "dup_members": q("SELECT count(*) - count(DISTINCT clip_id) FROM shard_members")[0][0],
            "sources": sorted(q("SELECT source_id, status, sha256 FROM sources")),
            "failures": sorted(q("SELECT item_id, stage, error_class FROM failures")),
            "kept": sorted(r[0] for r in q("SELECT clip_id FROM clips_wide WHERE kept")),
            "members": sorted(r[0] for r in q("SELECT clip_id FROM shard_members")),
            "shard_rows": shard_rows,
            "secret_in_catalog": q(f"SELECT (SELECT count(*) FROM sources WHERE uri LIKE '%{SECRET}%') + "
                                   f"(SELECT count(*) FROM failures WHERE uri LIKE '%{SECRET}%' OR error LIKE '%{SECRET}%')"
                                   f" + (SELECT count(*) FROM runs WHERE config_json LIKE '%{SECRET}%')")[0][0],
        }


def disk_shards(work: Path) -> tuple[dict, list]:
    root = work / "shards"
    tars = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.tar")} if root.exists() else {}
    parts = [p.name for p in root.rglob("*.part-*")] if root.exists() else []
    return tars, parts


def check(work: Path, finished: bool, reference: dict | None) -> dict:
    """Invariants after a run; raises AssertionError with what broke."""
    s = state(work)
    for k in ("dup_clips", "dup_scores", "dup_captions", "dup_members"):
        assert s[k] == 0, (k, s[k])
    assert s["secret_in_catalog"] == 0, "a credential reached the catalog"
    tars, parts = disk_shards(work)
    for name, sha in s["shard_rows"].items():  # every recorded shard is visible and whole
        assert tars.get(name) == sha, ("recorded shard missing or changed", name)
    out = {"clips": len(s["clips"]), "lost": 0, "duplicates": 0}
    if finished:
        assert set(tars) == set(s["shard_rows"]), ("orphan shards", set(tars) - set(s["shard_rows"]))
        assert not parts, ("stale part files", parts)
        if reference is not None:
            lost = set(reference["clips"]) - set(s["clips"])
            extra = set(s["clips"]) - set(reference["clips"])
            out["lost"], out["duplicates"] = len(lost), len(extra)
            assert not lost and not extra, (sorted(lost)[:5], sorted(extra)[:5])
            assert s["clips"] == reference["clips"], "clip bytes differ"
            for k in ("sources", "failures", "kept", "members"):
                assert s[k] == reference[k], k
            assert sorted(s["shard_rows"].values()) == sorted(reference["shard_rows"].values()), "shard bytes differ"
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=12.0)
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--p-fault", type=float, default=0.3, help="chance that a source request gets a fault")
    ap.add_argument("--max-kills", type=int, default=3, help="driver kills per cycle before a run must finish")
    ap.add_argument("--p-worker", type=float, default=0.7, help="chance that a cycle's last run gets a Ray worker killed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/soak")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rng = random.Random(args.seed)
    base = Path(tempfile.mkdtemp(prefix="soak-"))
    cache = str(base / "models")
    from vidcorpus.config import ModelsConfig
    from vidcorpus.jobs.models import resolve_models

    resolve_models(ModelsConfig(cache_dir=cache))
    server = FaultServer(base / "www", args.p_fault, args.seed)
    inputs = make_inputs(base, args.videos, server.url)
    logs = base / "logs"
    logs.mkdir()
    t_start = time.time()
    totals = {"runs": 0, "finished_runs": 0, "driver_kills": 0, "worker_kills": 0, "cycles": 0, "rows_lost": 0,
              "duplicates": 0, "invariant_checks": 0, "worker_kill_targets": {}, "errors": []}

    # reference: no faults, no kills
    t0 = time.time()
    ref_work = base / "reference"
    proc = start(ref_work, inputs, cache, logs / "reference.log")
    rc = proc.wait(timeout=900)
    reap(proc)
    assert rc == 0, (logs / "reference.log").read_text()[-3000:]
    ref_seconds = time.time() - t0
    check(ref_work, True, None)
    reference = state(ref_work)
    totals["reference_s"] = round(ref_seconds, 1)
    totals["reference_clips"] = len(reference["clips"])
    totals["reference_kept"] = len(reference["kept"])
    totals["reference_shards"] = len(reference["shard_rows"])
    totals["reference_failures"] = [f[2] for f in reference["failures"]]
    print(f"reference: {ref_seconds:.0f} s, {len(reference['clips'])} clips, {len(reference['shard_rows'])} shards",
          flush=True)
    server.enabled = True
    run_seconds = ref_seconds

    deadline = t_start + args.minutes * 60
    while time.time() < deadline:
        totals["cycles"] += 1
        work = base / f"cycle-{totals['cycles']}"
        kills = rng.randint(0, args.max_kills)
        attempt = 0
        kills_before = totals["driver_kills"]
        while True:
            attempt += 1
            log = logs / f"cycle-{totals['cycles']}.log"
            proc = start(work, inputs, cache, log)
            totals["runs"] += 1
            mode = "kill" if attempt <= kills else ("worker" if rng.random() < args.p_worker else "plain")
            finished = False
            t_run = time.time()
            if mode == "kill":
                delay = rng.uniform(2.0, run_seconds * 0.9)  # anywhere in a run as long as the last finished one
                try:
                    finished = proc.wait(timeout=delay) == 0  # it finished before the kill
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    totals["driver_kills"] += 1
            else:
                if mode == "worker":
                    kill_at = time.time() + rng.uniform(2.0, run_seconds * 0.7)
                    killed = False
                    while proc.poll() is None and not killed:
                        time.sleep(0.2)
                        if time.time() >= kill_at:
                            busy = ray_workers(proc)
                            if busy:
                                victim, title = rng.choice(busy)
                                try:
                                    victim.send_signal(signal.SIGKILL)
                                    totals["worker_kills"] += 1
                                    totals["worker_kill_targets"][title] = totals["worker_kill_targets"].get(title, 0) + 1
                                except Exception:  # noqa: BLE001 - it ended on its own
                                    pass
                                killed = True
                try:
                    rc = proc.wait(timeout=900)
                except subprocess.TimeoutExpired:
                    rc = -1
                finished = rc == 0
                if not finished:
                    totals["errors"].append(f"cycle {totals['cycles']} run {attempt} ({mode}) exit {rc}: "
                                            + log.read_text()[-1500:])
            reap(proc)
            try:
                res = check(work, finished, reference if finished else None)
                totals["invariant_checks"] += 1
                totals["rows_lost"] += res["lost"]
                totals["duplicates"] += res["duplicates"]
            except AssertionError as e:
                totals["errors"].append(f"cycle {totals['cycles']} run {attempt} ({mode}): invariant broken: {e!r}")
                print(totals["errors"][-1], flush=True)
                finished = True  # start a fresh cycle
            if finished:
                totals["finished_runs"] += 1
                if mode != "worker" and attempt == 1:
                    run_seconds = time.time() - t_run  # a whole run from scratch, as the machine is now
                break
            if attempt > kills + 3:
                totals["errors"].append(f"cycle {totals['cycles']}: no finished run after {attempt} attempts")
                break
        print(f"cycle {totals['cycles']}: {attempt} runs, {totals['driver_kills'] - kills_before} driver kills; totals "
              f"{ {k: v for k, v in totals.items() if k != 'errors'} }", flush=True)
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    log_text = "".join(p.read_text(errors="replace") for p in logs.glob("*.log"))
    totals.update({
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "minutes": round((time.time() - t_start) / 60, 1),
        "videos": args.videos, "p_fault": args.p_fault, "faults_injected": dict(server.faults),
        "source_requests": server.requests, "secret_in_logs": log_text.count(SECRET), "load": os.getloadavg(),
    })
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(totals, indent=1))
    print(json.dumps(totals, indent=1))
    import shutil

    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
