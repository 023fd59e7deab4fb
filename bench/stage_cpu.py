"""CPU seconds of each CPU stage of `vidcorpus run` per video second, in one process, without Ray.

Why: a run's wall time mixes the stages' work with Ray's start, scheduling and the driver; on a
shared machine it also mixes in other jobs. This chains the stages that `vidcorpus run` uses when
the model stages are off (download, probe, split, technical, motion, decide, extract), calls each
on the rows the previous one returned, as a Ray task would, and counts each stage's CPU time
(`time.process_time`, this process and its threads): the work a node must supply per video second,
whatever feeds it.

    python bench/stage_cpu.py VIDEO [VIDEO ...] [--set section.key=value ...] [--out stage_cpu.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


def _outputs_sha256(clips: list[dict]) -> dict[str, str]:
    """Hashes of what the chain made (every clip's scores; every extracted clip file's bytes), so that
    two settings can be shown to give the same corpus."""
    import hashlib

    from vidcorpus.storage import read_bytes

    scores = sorted((r["clip_id"], sorted((s["scorer"], s["value"]) for s in r.get("scores") or [])) for r in clips)
    files = hashlib.sha256()
    for r in sorted(clips, key=lambda r: r["clip_id"]):
        if r.get("clip_path"):
            files.update(r["clip_id"].encode() + hashlib.sha256(read_bytes(r["clip_path"])).digest())
    return {"scores": hashlib.sha256(json.dumps(scores).encode()).hexdigest()[:16], "clip_files": files.hexdigest()[:16]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("videos", nargs="+")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="Config override, section.key=value.")
    ap.add_argument("--repeat", type=int, default=1, help="Runs of the chain; each stage's best is reported.")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)

    from vidcorpus.config import load_config
    from vidcorpus.ingest.sources import read_inputs
    from vidcorpus.jobs.curate.pipeline import pipeline_stages
    from vidcorpus.schemas import rows_to_table

    model_stages = {"clip", "caption", "caption_align"}
    stages = [s for s in pipeline_stages() if s.name not in model_stages]
    runs = []
    for _ in range(a.repeat):
        work = tempfile.mkdtemp(prefix="stage_cpu_")
        cfg = load_config(None, [f"workdir={work}", "models.preset=tiny", *a.sets])
        rows = [dict(r, run_id="stage_cpu") for r in read_inputs([str(Path(v).resolve()) for v in a.videos])]
        costs = {}
        for stage_cls in stages:
            stage = stage_cls(cfg)
            c0, t0 = time.process_time(), time.perf_counter()
            table = stage(rows_to_table(rows))
            costs[stage_cls.name] = {"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - t0}
            rows = table.to_pylist()
        runs.append((costs, rows))
    best = {name: {k: round(min(r[0][name][k] for r in runs), 3) for k in ("cpu_s", "wall_s")} for name in runs[0][0]}
    rows = runs[-1][1]
    clips = [r for r in rows if r.get("clip_id") and not r.get("error_class")]
    frames = sum((r["last_frame"] - r["first_frame"] + 1) for r in clips if r.get("last_frame") is not None)
    total = sum(v["cpu_s"] for v in best.values())
    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": f"{platform.node()}: {os.cpu_count()} cores, 1-minute load {os.getloadavg()[0]:.1f} at the end",
        "command": " ".join(["python", *sys.argv]),
        "videos": a.videos, "sets": a.sets, "repeat": a.repeat,
        "clips": len(clips), "kept": sum(1 for r in clips if r.get("kept")), "frames_in_clips": frames,
        "errors": sorted({r["error_class"] for r in rows if r.get("error_class")}),
        "extract_modes": {m: sum(1 for r in clips if r.get("extract_mode") == m)
                          for m in sorted({r.get("extract_mode") or "" for r in clips})},
        "stages": best,
        "cpu_s_total": round(total, 3),
        "cpu_ms_per_frame": {k: round(1000 * v["cpu_s"] / frames, 3) for k, v in best.items()} if frames else None,
        "outputs_sha256": _outputs_sha256(clips),
    }
    text = json.dumps(report, indent=1)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)
    print(text)
    return report


if __name__ == "__main__":
    main()
