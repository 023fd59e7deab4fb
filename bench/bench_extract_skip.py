"""CPU seconds of extracting the kept clips of one source, before and after precise extraction went
through the shared source cursor (issue 22: between kept clips it seeks past whole keyframe
intervals and skips non-reference frames, instead of decoding every frame from the first kept clip
to the last).

Why: on the GPU node extraction is the largest CPU stage, and a recipe keeps about half the shots,
so the precise pass decoded the dropped (and stream-copied) shots between the ones it re-encodes.
This splits one source once, keeps every other clip (``--keep-every``), then extracts them with
``ExtractStage`` (``split.extract_mode`` as configured: ``auto`` by default) in a fresh process per
run: the code of an older checkout (``--before DIR``, from ``git archive COMMIT``) and this one,
interleaved. It reports CPU seconds (``time.process_time``: the process with FFmpeg's threads),
wall seconds and the 1-minute load, and checks that both give every clip byte for byte the same.

    python bench/bench_extract_skip.py --video edited_000.mp4 --before DIR [--rounds 2] [--out result.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_source_decode import split_rows, use_code  # bench/ is the script's directory, first on sys.path
from run_meta import finish_metadata, run_metadata


def extract_once(rows: list[dict], workdir: str, sets: list[str]) -> tuple[dict, dict]:
    """One ExtractStage call over the kept rows in this (fresh) process, after a warm-up on the
    first (imports, codec set-up), from a cold decoder and packet index."""
    import vidcorpus
    from vidcorpus import frame_index, source_frames
    from vidcorpus.config import load_config
    from vidcorpus.ingest.extract import ExtractStage
    from vidcorpus.schemas import rows_to_table
    from vidcorpus.storage import read_bytes

    stage = ExtractStage(load_config(None, [f"workdir={workdir}", *sets]))
    stage(rows_to_table(rows[:1]))
    source_frames._CURSOR.clear()
    frame_index._CACHE.clear()
    load_before = os.getloadavg()[0]
    c0, t0 = time.process_time(), time.perf_counter()
    out = stage(rows_to_table(rows)).to_pylist()
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    errors = [r["error"] for r in out if r.get("error_class")]
    if errors:
        raise SystemExit(f"extraction failed: {errors[:3]}")
    modes = {}
    for r in out:
        modes[r["extract_mode"]] = modes.get(r["extract_mode"], 0) + 1
    run = {"code": str(Path(vidcorpus.__file__).parent.parent), "cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
           "clips": len(out), "extract_modes": modes, "load_1min_before": round(load_before, 2),
           "load_1min_after": round(os.getloadavg()[0], 2)}
    digests = {r["clip_id"]: hashlib.sha256(read_bytes(r["clip_path"])).hexdigest() for r in out}
    return run, digests


def child(variant: str, rows_file: str, workdir: str, sets: str) -> None:
    if variant == "before":
        use_code(os.environ["BENCH_BEFORE_CODE"])
    rows = pickle.loads(Path(rows_file).read_bytes())
    run, digests = extract_once(rows, workdir, json.loads(sets))
    print(json.dumps({"run": {"variant": variant, **run}, "digests": digests}))


def run_child(variant: str, rows_file: str, workdir: str, sets: list[str], before: str) -> tuple[dict, dict]:
    env = dict(os.environ, BENCH_BEFORE_CODE=before)
    done = subprocess.run([sys.executable, __file__, "--child", variant, rows_file, workdir, json.dumps(sets)],
                          env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{variant} run failed: {done.stderr[-2000:]}")
    got = json.loads(done.stdout.strip().splitlines()[-1])
    return got["run"], got["digests"]


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", help="A source video (the 720p x264 veryfast edit for the documented figures).")
    ap.add_argument("--before", metavar="DIR", help="An older checkout (git archive COMMIT | tar -x -C DIR).")
    ap.add_argument("--keep-every", type=int, default=2, help="Keep clip 0, k, 2k, ... of the split (default 2: half).")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="Config override for both, section.key=value.")
    ap.add_argument("--out")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(*a.child)
        return None
    if not (a.video and a.before):
        ap.error("--video and --before are required")
    meta = run_metadata()
    work = tempfile.mkdtemp(prefix="extract-skip-")
    rows = split_rows(a.video, f"{work}/split")
    kept = rows[::a.keep_every]
    rows_file = Path(work) / "rows.pkl"
    rows_file.write_bytes(pickle.dumps(kept))
    runs, digests = [], {}
    for rnd in range(a.rounds):
        for variant in (("before", "after") if rnd % 2 == 0 else ("after", "before")):
            run, got = run_child(variant, str(rows_file), f"{work}/{variant}{rnd}", a.sets, a.before)
            runs.append({"round": rnd + 1, **run})
            digests.setdefault(variant, got)
            if got != digests[variant]:
                raise SystemExit(f"{variant}: round {rnd + 1} wrote other bytes than round 1")
    if digests["before"] != digests["after"]:
        raise SystemExit("before and after wrote different clips")
    cpu = {v: statistics.median(r["cpu_s"] for r in runs if r["variant"] == v) for v in ("before", "after")}
    report = {**meta, "video": a.video, "sets": a.sets, "source_clips": len(rows), "kept_clips": len(kept),
              "kept_frames": sum(r["last_frame"] - r["first_frame"] + 1 for r in kept),
              "source_frames": rows[-1]["last_frame"] + 1, "clips_identical": True, "runs": runs,
              "median_cpu_s": cpu, "cpu_ratio_after_over_before": round(cpu["after"] / cpu["before"], 3)}
    report = finish_metadata(report)
    text = json.dumps(report, indent=1)
    if a.out:
        Path(a.out).write_text(text)
    print(text)
    return report


if __name__ == "__main__":
    main()
