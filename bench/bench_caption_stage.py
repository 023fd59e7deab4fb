"""The caption stage per batch: wall time, the CPU of its main (feeding) thread, and (GPU) busy share.

On a GPU node the caption actor's main thread prepares every batch (scaling frames to
``captioning.max_pixels``, the processor, caption QA's CLIP preprocessing) while the GPU waits:
GPU-node run 5 (docs/benchmarks.md) captioned 245 clips in about 136 s with the host's other cores
idle and the GPU busy 3% of the time. This measures that host side on any machine, with the tiny
Qwen2.5-VL-shaped captioner and tiny CLIP (the model's own time is small there), on 1280x720 clips
of 110 frames, 8 frames a clip, max_pixels 230,400 (the GPU-node job's settings), QA on.

    python bench/bench_caption_stage.py --label after --out result.json
    # on a GPU machine, the GPU-node job's models (bench/gpu_node_job.py build-models --size 3b):
    python bench/bench_caption_stage.py --models /tmp/gpujob/models --rows 512 --long 160 --short 32

Run it from two checkouts (before and after a change), interleaved, on the same machine: the
main thread's CPU seconds are the figure to compare (wall time moves with the machine's load).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from run_meta import emit


def make_clips(folder: Path, n: int = 8) -> list[str]:
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    paths = []
    for k in range(n):
        path = folder / f"clip{k}.mp4"
        paths.append(str(path))
        if path.exists():
            continue
        with av.open(str(path), "w") as out:
            s = out.add_stream("libx264", rate=25)
            s.width, s.height, s.pix_fmt = 1280, 720, "yuv420p"
            s.options = {"preset": "ultrafast"}
            base = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
            for i in range(110):
                for p in s.encode(av.VideoFrame.from_ndarray(np.roll(base, i * 4, axis=1), format="rgb24")):
                    out.mux(p)
            for p in s.encode():
                out.mux(p)
    return paths


def bench_models(cfg, models: str | None, work: Path):
    """The config's models for a caption-stage benchmark: a build-models folder's CLIP and captioner
    (``models``), else the tiny CLIP and a tiny Qwen2.5-VL-shaped captioner built under ``work``."""
    from vidcorpus.captioning.tiny_models import build_tiny_chat_vlm
    from vidcorpus.jobs.models import resolve_models

    if models:
        built = json.loads((Path(models) / "models.json").read_text())
        return cfg.models.model_copy(update={"preset": "production", **{k: built[k] for k in (
            "clip_model", "clip_pretrained", "aesthetic_head", "captioner")}})
    if not (work / "vlm" / "config.json").exists():
        build_tiny_chat_vlm(str(work / "vlm"))
    m = resolve_models(cfg.models.model_copy(update={"cache_dir": str(work / "models")}), only={"clip"})
    return m.model_copy(update={"captioner": str(work / "vlm")})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", default="run")
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "bench_caption_stage_cpu"))
    ap.add_argument("--models", help="a build-models folder (models.json): its CLIP and captioner instead of tiny ones")
    ap.add_argument("--long", type=int, default=16, help="captioning.max_new_tokens")
    ap.add_argument("--short", type=int, default=8, help="captioning.short_max_new_tokens")
    ap.add_argument("--compile", action="store_true", help="compile_prefill/compile_decode on (minutes of compile)")
    ap.add_argument("--compile-cache", metavar="DIR",
                    help="with --compile: warm up as a job's caption actor does, hot-loading the compile artifacts "
                         "a job left in DIR (captioning.compile_cache_dir; the same settings give the same file)")
    ap.add_argument("--rounds", default="1x1",
                    help="Comma list of IxB: B batches of --rows, I of them handed to the stage at once from "
                         "threads, as a caption actor gets them (2: one reads its frames while the other "
                         "captions, captioning.read_ahead; 1: one call after the other); --repeat repeats the list")
    ap.add_argument("--out")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from vidcorpus.captioning.caption_stage import CaptionStage
    from vidcorpus.config import Config
    from vidcorpus.schemas import empty_row, rows_to_table

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    clips = make_clips(work)
    cfg = Config()
    cfg = cfg.model_copy(update={
        "models": bench_models(cfg, args.models, work),
        "captioning": cfg.captioning.model_copy(update={"frames_per_clip": 8, "max_pixels": 230400,
                                                        "batch_size": args.rows, "max_new_tokens": args.long,
                                                        "short_max_new_tokens": args.short, "qa": True,
                                                        "compile_prefill": args.compile, "compile_decode": args.compile,
                                                        "warmup": bool(args.compile_cache),
                                                        "compile_cache_dir": args.compile_cache})})
    rows = [empty_row(source_id=f"s{i}", clip_id=f"c{i}", clip_path=clips[i % len(clips)], kept=True)
            for i in range(args.rows)]
    from concurrent.futures import ThreadPoolExecutor

    from vidcorpus.jobs.curate.caption_pool import StageChain

    chain = StageChain(cfg, [CaptionStage])  # what a caption actor runs (its read-ahead included)

    def stage(table, in_flight: int, batches: int):
        if in_flight <= 1:
            return [chain(table) for _ in range(batches)]
        with ThreadPoolExecutor(in_flight) as pool:
            return list(pool.map(chain, [table] * batches))

    rounds = [tuple(int(x) for x in r.split("x")) for r in args.rounds.split(",")] * args.repeat

    began = time.perf_counter()
    chain(rows_to_table(rows[:2]))  # set-up and a first small batch
    setup_s = time.perf_counter() - began
    from vidcorpus.gpu_busy import GpuBusyMeter, current_device

    device = current_device()
    runs = []
    for in_flight, batches in rounds:
        meter = GpuBusyMeter(device[0]) if device else None
        t, c, pc = time.perf_counter(), time.thread_time(), time.process_time()
        if meter is not None:
            with meter:
                stage(rows_to_table(rows), in_flight, batches)
        else:
            stage(rows_to_table(rows), in_flight, batches)
        wall = time.perf_counter() - t
        run = {"batches": batches, "in_flight": in_flight, "wall_s": round(wall, 2),
               # the stage's calling thread (with batches in flight: the pool's threads do the work)
               "main_thread_cpu_s": round(time.thread_time() - c, 2) if in_flight <= 1 else None,
               "process_cpu_s": round(time.process_time() - pc, 2),
               "clips_per_s": round(args.rows * batches / wall, 2)}
        if meter is not None and meter.busy_s is not None:
            run["gpu_busy_share"] = round(meter.busy_s / wall, 3)
        runs.append(run)
    result = {"label": args.label, "rows": args.rows, "cpus": os.cpu_count(), "runs": runs,
              "setup_and_first_batch_s": round(setup_s, 1), "compile_cache": args.compile_cache,
              "captioner": str(cfg.models.captioner), "tokens": [args.long, args.short], "compile": args.compile,
              "loadavg_end": [round(x, 2) for x in os.getloadavg()],
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    emit(result, args.out)


if __name__ == "__main__":
    main()
