"""Shot detection in several processes at once (a CPU node's split tasks): summed frames/s and CPU a frame.

Why: the batched reader (ingest/detect_batches.py) gives each process a pool of threads; one stream
alone on idle cores gains from it, while a node whose cores all run split tasks must not lose. Each
process runs ``split.detectors``' default (adaptive + histogram, no TransNetV2) over the same
video ``--repeat`` times after one warm-up; prints JSON. Compare two codes by running this with
each on PYTHONPATH (``python -S``, see docs/benchmarks.md):

    python bench/bench_shot_concurrent.py --video edit_360p.mp4 --procs 2 --repeat 4
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time


def _work(path: str, repeat: int, out) -> None:
    from vidcorpus.config import SplitConfig
    from vidcorpus.ingest import split

    cfg = SplitConfig()
    split.detect_segments(path, cfg, fps=25.0)  # warm-up: imports, the pool
    wall, cpu, frames = time.perf_counter(), time.process_time(), 0
    for _ in range(repeat):
        frames += split.detect_segments(path, cfg, fps=25.0).n_frames
    out.put((frames, time.perf_counter() - wall, time.process_time() - cpu, split.__file__))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", required=True)
    ap.add_argument("--procs", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=4)
    a = ap.parse_args(argv)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_work, args=(a.video, a.repeat, out)) for _ in range(a.procs)]
    for p in procs:
        p.start()
    runs = [out.get() for _ in procs]
    for p in procs:
        p.join()
    frames = sum(r[0] for r in runs)
    result = {"procs": a.procs, "frames_per_s": round(frames / max(r[1] for r in runs), 1),
              "cpu_ms_per_frame": round(sum(r[2] for r in runs) / frames * 1e3, 3), "code": runs[0][3],
              "loadavg": os.getloadavg()}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
