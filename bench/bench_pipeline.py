"""The whole curation pipeline: a multi-process local Ray run against a single-process run (issue 12).

Both process the same synthetic corpus with the same stage classes and tiny models:

- single process: every stage called in order inside this Python process (what a stage is, minus
  Ray), rows then committed to a fresh catalog and sharded;
- Ray: ``runner.run_pipeline`` on a local Ray with ``--cpus`` CPUs (worker processes for CPU
  stages, actor pools for model stages), committing and sharding the same way.

Reports wall seconds, source videos/s, clips/s and the speed-up, plus what each run produced (the
two runs must agree on clip ids).

    python bench/bench_pipeline.py --videos 24 --cpus 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def _cfg(work: Path, inputs: list[str], cpus: int, cache: str):
    from vidcorpus.config import load_config

    return load_config(None, [f"ray.num_cpus={cpus}"], workdir=str(work), inputs=inputs,
                       **{"models.preset": "tiny", "models.cache_dir": cache, "filters.recipe": "demo_v1"})


def single_process(cfg) -> dict:
    from vidcorpus.catalog.store import Catalog
    from vidcorpus.ingest.sources import read_inputs
    from vidcorpus.jobs.models import resolve_models
    from vidcorpus.jobs.curate.pipeline import pipeline_stages
    from vidcorpus.jobs.pack_shards import write_pending_shards
    from vidcorpus.schemas import rows_to_table

    t0 = time.perf_counter()
    cfg = cfg.model_copy(update={"models": resolve_models(cfg.models)})
    table = rows_to_table(read_inputs(cfg.inputs))
    for stage_cls in pipeline_stages():
        table = stage_cls(cfg)(table)
    rows = table.to_pylist()
    with Catalog(cfg.catalog_path) as cat:
        cat.commit_results("single", rows)
        shards = write_pending_shards(cfg, cat, "single", progress=False)
        clips = sorted(r[0] for r in cat.con.execute("SELECT clip_id FROM clips").fetchall())
    return {"seconds": time.perf_counter() - t0, "clips": clips, "shards": len(shards)}


def ray_run(cfg) -> dict:
    import ray

    from vidcorpus.catalog.store import Catalog
    from vidcorpus.jobs.curate.pipeline import init_ray, run_pipeline

    t0 = time.perf_counter()
    init_ray(cfg)
    t_ray = time.perf_counter() - t0
    summary = run_pipeline(cfg, progress=False)
    seconds = time.perf_counter() - t0
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        clips = sorted(r[0] for r in cat.con.execute("SELECT clip_id FROM clips").fetchall())
    ray.shutdown()
    return {"seconds": seconds, "ray_start_s": t_ray, "clips": clips, "shards": len(summary.shards)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=24)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()

    from vidcorpus.synth import make_video

    base = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    cache = str(base / "models")
    try:
        media = base / "media"
        media.mkdir()
        videos = [make_video(i, media) for i in range(args.videos)]
        inputs = [str(media)]
        # build the tiny models once, outside both timings
        from vidcorpus.jobs.models import resolve_models

        resolve_models(_cfg(base / "warm", inputs, 1, cache).models)
        single = single_process(_cfg(base / "single", inputs, 1, cache))
        multi = ray_run(_cfg(base / "ray", inputs, args.cpus, cache))
        assert single["clips"] == multi["clips"], "the two runs disagree on clips"
        n_clips = len(single["clips"])
        out = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": args.cpus, "videos": args.videos,
            "frames": sum(v.shots[-1][1] + 1 for v in videos), "clips": n_clips,
            "single_s": round(single["seconds"], 2), "ray_s": round(multi["seconds"], 2),
            "ray_start_s": round(multi["ray_start_s"], 2),
            "single_clips_s": round(n_clips / single["seconds"], 2), "ray_clips_s": round(n_clips / multi["seconds"], 2),
            "speedup": round(single["seconds"] / multi["seconds"], 2), "load": os.getloadavg(),
        }
        print(json.dumps(out, indent=1))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
