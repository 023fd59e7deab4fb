"""Filter before you encode (issue 22): `vidcorpus run` before (every shot encoded, then scored) and
after (scored from the source, only kept shots encoded), on the same inputs and the same recipe.

Inputs: ``--videos`` 640x360 24 fps H.264 videos (PyAV), each of ``--shots`` shots of 2 to 4 s that
alternate between a panning texture and the same texture standing still, so a recipe with
``motion >= 8`` drops about half of the shots. Both runs use the tiny models, the default scorers
(technical, motion, CLIP + aesthetic), captioning of kept clips and shard writing, through the CLI
(`vidcorpus run`) on a local Ray with ``--cpus`` CPUs. "before" is the code of ``--before`` (a git
revision, default the commit before this change) exported with `git archive` and imported ahead of this checkout.

Reports per run: wall seconds, clips (shots) per second, kept clips, clip files encoded.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_filter_first.py --videos 6 --cpus 2 \
        --json bench/results/filter_first_2cpu.json
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_filter_first.py --videos 6 --cpu-stages-only \
        --json bench/results/filter_first_cpu_stages.json   # no Ray, no models: CPU seconds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from run_meta import finish_metadata, run_metadata  # bench/ is the script's directory, first on sys.path

ROOT = Path(__file__).resolve().parents[1]
STAGE_DIRS = ("ingest", "filters", "captioning", "shards", "catalog", "train")
RECIPE = """name: bench_motion
version: 1
description: drops the still shots (about half)
missing: keep
predicates:
  - {score: duration_s, op: ">=", value: 1.0}
  - {score: motion, op: ">=", value: 8}
"""


def make_video(path: Path, seed: int, shots: int, w: int = 640, h: int = 360, fps: int = 24) -> int:
    rng = np.random.default_rng(seed)
    with av.open(str(path), mode="w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "veryfast", "crf": "20"}
        for k in range(shots):
            tex = np.kron(rng.integers(0, 256, (h // 16 + 1, w // 16 + 40, 3), dtype=np.uint8),
                          np.ones((16, 16, 1), np.uint8))
            n = int(rng.integers(2 * fps, 4 * fps))
            moving = k % 2 == 0
            for t in range(n):
                x0 = (5 * t) % (tex.shape[1] - w) if moving else 0
                arr = np.ascontiguousarray(tex[:h, x0:x0 + w])
                for p in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                    c.mux(p)
        for p in s.encode():
            c.mux(p)
    return shots


def export_revision(rev: str, dest: Path) -> Path:
    """An importable `vidcorpus` package tree of git revision ``rev`` (stage folders mapped in as the
    pyproject's package-dir does)."""
    src = dest / "src"
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    pkg = dest / "pkg"
    pkg.mkdir()
    import shutil

    shutil.copytree(src / "vidcorpus", pkg / "vidcorpus")
    for d in STAGE_DIRS:
        shutil.copytree(src / d, pkg / "vidcorpus" / d)
    return pkg


def run(label: str, inputs: Path, work: Path, cache: str, recipe: Path, cpus: int, pythonpath: str | None) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    code = ("import vidcorpus, sys; print(vidcorpus.__file__, file=sys.stderr); "
            "from vidcorpus.cli.app import app; app()")
    cmd = [sys.executable, "-c", code, "run", str(inputs), "--workdir", str(work), "--no-progress",
           "--set", "models.preset=tiny", "--set", f"models.cache_dir={cache}", "--set", f"filters.recipe={recipe}",
           "--set", f"ray.num_cpus={cpus}"]
    t0 = time.perf_counter()
    # cwd outside any checkout: the current directory comes first on sys.path and would shadow PYTHONPATH
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(work.parent))
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    import duckdb

    con = duckdb.connect(str(work / "catalog.duckdb"), read_only=True)
    clips, kept = con.execute("SELECT count(*), count(*) FILTER (WHERE kept) FROM clips_wide").fetchall()[0]
    con.close()
    encoded = len(list((work / "staging" / "clips").glob("*.mp4")))
    code_from = proc.stderr.splitlines()[0] if proc.stderr else ""
    return {"run": label, "seconds": round(seconds, 2), "clips": clips, "kept": kept, "encoded": encoded,
            "clips_per_s": round(clips / seconds, 3), "code": code_from}


CPU_STAGES = """
import json, sys, time
from vidcorpus.config import load_config
from vidcorpus.ingest.sources import read_inputs
from vidcorpus.jobs.curate.pipeline import pipeline_stages
from vidcorpus.schemas import rows_to_table
inputs, work, recipe = sys.argv[1:4]
cfg = load_config(None, [], workdir=work, inputs=[inputs], **{"filters.recipe": recipe})
stages = [s for s in pipeline_stages() if not s.resources.actor]  # the CPU stages, in the pipeline's order
table = rows_to_table(read_inputs(cfg.inputs))
t0, c0 = time.perf_counter(), time.process_time()
stage_cpu = {}
for s in stages:
    c = time.process_time()
    table = s(cfg)(table)
    stage_cpu[s.__name__] = time.process_time() - c
rows = [r for r in table.to_pylist() if r.get("clip_id") and not r.get("error_class")]
print(json.dumps({"stages": [s.__name__ for s in stages], "seconds": time.perf_counter() - t0,
                  "cpu_seconds": time.process_time() - c0, "stage_cpu_seconds": stage_cpu, "clips": len(rows),
                  "kept": sum(bool(r.get("kept")) for r in rows), "encoded": sum(bool(r.get("clip_path")) for r in rows)}))
"""


def cpu_stages(label: str, inputs: Path, work: Path, recipe: Path, pythonpath: str | None) -> dict:
    """The pipeline's CPU stages (download .. decide and extract, no model stage: the recipe reads only
    duration and motion) in one process: wall and CPU seconds (CPU time is what other load on the
    machine changes least)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    proc = subprocess.run([sys.executable, "-c", CPU_STAGES, str(inputs), str(work), str(recipe)], env=env,
                          capture_output=True, text=True, cwd=str(work.parent))
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    per_cpu_s = round(out["clips"] / out["cpu_seconds"], 3)
    out["stage_cpu_seconds"] = {k: round(v, 2) for k, v in out["stage_cpu_seconds"].items()}
    return {"run": label, **{k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()},
            "clips_per_cpu_s": per_cpu_s}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--shots", type=int, default=8)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--before", default=None, help="git revision of 'before' (default: the parent of the first "
                                                   "'Filter before you encode' commit, so only this change differs)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--cpu-stages-only", action="store_true",
                    help="only the in-process CPU stages (no Ray, no models): wall and CPU seconds")
    args = ap.parse_args()

    meta = run_metadata()
    if args.before is None:  # the parent of the change's first commit (main has it merged by now)
        first = subprocess.run(["git", "-C", str(ROOT), "log", "--reverse", "--format=%H", "--grep",
                                "^Filter before you encode"], capture_output=True, text=True, check=True).stdout.split()
        args.before = f"{first[0]}^"
    base = Path(tempfile.mkdtemp(prefix="bench-filter-first-"))
    media = base / "media"
    media.mkdir()
    lines = []
    for i in range(args.videos):
        p = media / f"v{i:02d}.mp4"
        make_video(p, seed=i, shots=args.shots)
        lines.append(json.dumps({"url": str(p), "text": f"video {i}"}))
    inputs = base / "inputs.jsonl"
    inputs.write_text("\n".join(lines) + "\n")
    recipe = base / "bench_motion.yaml"
    recipe.write_text(RECIPE)
    cache = str(base / "models")
    before_pkg = export_revision(args.before, base / "before")
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.before], capture_output=True,
                         text=True).stdout.strip()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    if args.cpu_stages_only:
        results = [cpu_stages(f"before ({rev})", inputs, base / "cpu-before", recipe, str(before_pkg)),
                   cpu_stages(f"after ({head})", inputs, base / "cpu-after", recipe, None)]
        out = {**finish_metadata(meta), "videos": args.videos, "shots_per_video": args.shots, "size": "640x360",
               "fps": 24, "load_avg_1m": os.getloadavg()[0], "results": results,
               "cpu_speedup": round(results[0]["cpu_seconds"] / results[1]["cpu_seconds"], 2)}
        print(json.dumps(out, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        return
    # a warm-up builds the tiny models once, so neither timed run pays for it
    run("warm-up", inputs, base / "warm", cache, recipe, args.cpus, None)
    results = [run(f"before ({args.before} {rev})", inputs, base / "work-before", cache, recipe, args.cpus,
                   str(before_pkg)),
               run(f"after ({head})", inputs, base / "work-after", cache, recipe, args.cpus, None)]
    out = {"videos": args.videos, "shots_per_video": args.shots, "size": "640x360", "fps": 24, "cpus": args.cpus,
           "load_avg_1m": os.getloadavg()[0], "results": results,
           "speedup": round(results[1]["clips_per_s"] / results[0]["clips_per_s"], 2)}
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
