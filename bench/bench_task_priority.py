"""The caption stage beside CPU-bound tasks, at the priorities a Ray job gives them.

On the H100 node the caption stage captioned at 56% of its rate alone while the ingest's tasks kept
the 16 cores busy (docs/benchmarks.md, run 9b). Ray starts every worker, tasks and actors alike,
at niceness 15, so the caption actor's threads (frame reading, the processor, the GPU's feeding)
queue for a core like any task. This measures what ``ray.task_nice`` changes, on any machine: the
caption stage (tiny Qwen2.5-VL-shaped captioner and tiny CLIP on the CPU, or --models) runs batches
in a process at niceness 15 (an actor's) while BURNERS processes, each running the x264 encode that
extraction runs (PyAV, veryfast, one thread, 720p frames), load the cores at niceness 15 (Ray's
default for tasks), 19 (``ray.task_nice`` 19), Linux's SCHED_IDLE policy, or not at all. Per mode:
the caption stage's wall time per batch and the frames the burners encoded (their throughput in the
same seconds).

    python bench/bench_task_priority.py --burners 4 --rounds 2 --out result.json
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path

from run_meta import emit, finish_metadata, run_metadata

ACTOR_NICE = 15  # what Ray's raylet gives every worker process (RAY_worker_niceness)


def burn(nice, stop, counter) -> None:
    """Encode 720p frames with x264 veryfast, one thread, until told to stop (extraction's work)."""
    import av
    import numpy as np

    if nice == "idle":
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    else:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    rng = np.random.default_rng(os.getpid())
    frames = [av.VideoFrame.from_ndarray(rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8), format="rgb24")
              for _ in range(4)]
    while not stop.is_set():
        codec = av.CodecContext.create("libx264", "w")
        codec.width, codec.height, codec.pix_fmt = 1280, 720, "yuv420p"
        codec.options = {"preset": "veryfast", "crf": "20"}
        codec.thread_count = 1
        for i in range(25):
            frame = frames[i % len(frames)].reformat(format="yuv420p")
            frame.pts = i
            codec.encode(frame)
            with counter.get_lock():
                counter.value += 1
            if stop.is_set():
                break


def caption_stage(models: str | None, work: Path, rows: int):
    """A set-up caption stage and its batch (bench_caption_stage.py's settings: 8 frames at 720p
    clips, max_pixels 230,400, QA on)."""
    from bench_caption_stage import bench_models, make_clips
    from vidcorpus.captioning.caption_stage import CaptionStage
    from vidcorpus.config import Config
    from vidcorpus.schemas import empty_row, rows_to_table

    work.mkdir(parents=True, exist_ok=True)
    clips = make_clips(work)
    cfg = Config()
    cfg = cfg.model_copy(update={"models": bench_models(cfg, models, work), "captioning": cfg.captioning.model_copy(update={
        "frames_per_clip": 8, "max_pixels": 230400, "batch_size": rows, "max_new_tokens": 16,
        "short_max_new_tokens": 8, "qa": True, "warmup": False})})
    stage = CaptionStage(cfg)
    table = rows_to_table([empty_row(source_id=f"s{i}", clip_id=f"c{i}", clip_path=clips[i % len(clips)], kept=True)
                           for i in range(rows)])
    stage(table)  # set-up and a first batch
    return stage, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--burners", type=int, default=4, help="CPU-bound processes beside the stage")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batches", type=int, default=3, help="caption batches timed per mode and round")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--models", help="a build-models folder: its captioner and CLIP instead of tiny ones")
    ap.add_argument("--work", default="/tmp/bench_task_priority")
    ap.add_argument("--actor-nice", type=int, default=ACTOR_NICE,
                    help="this process's niceness (the caption actor's): Ray's 15, or ray.actor_nice's 0")
    ap.add_argument("--modes", default="alone,15,19,idle", help="which of alone, 15, 19, idle (comma-separated)")
    ap.add_argument("--out")
    args = ap.parse_args()
    meta = run_metadata()
    # this process stands for the caption actor; set before torch starts its threads (they inherit it)
    os.setpriority(os.PRIO_PROCESS, 0, args.actor_nice)
    stage, table = caption_stage(args.models, Path(args.work), args.rows)
    every = {"alone": ("alone", None), "15": ("tasks at nice 15 (Ray's default)", 15),
             "19": ("tasks at nice 19 (ray.task_nice)", 19), "idle": ("tasks under SCHED_IDLE", "idle")}
    modes = dict(every[m] for m in args.modes.split(","))
    runs = []
    for r in range(args.rounds):
        order = list(modes.items()) if r % 2 == 0 else list(modes.items())[::-1]
        for label, nice in order:
            ctx = mp.get_context("spawn")  # not fork: this process has torch's threads
            stop, counter = ctx.Event(), ctx.Value("l", 0)
            procs = [ctx.Process(target=burn, args=(nice, stop, counter)) for _ in range(args.burners if nice else 0)]
            for p in procs:
                p.start()
            time.sleep(3.0 if procs else 0.0)  # burners at full speed
            start_frames, t0 = counter.value, time.perf_counter()
            walls = []
            for _ in range(args.batches):
                t = time.perf_counter()
                stage(table)
                walls.append(time.perf_counter() - t)
            elapsed = time.perf_counter() - t0
            encoded = counter.value - start_frames
            stop.set()
            for p in procs:
                p.join()
            runs.append({"round": r + 1, "mode": label, "batch_wall_s": [round(w, 2) for w in walls],
                         "batch_wall_median_s": round(statistics.median(walls), 2),
                         "burner_frames_per_s": round(encoded / elapsed, 1) if procs else None})
            print(runs[-1], flush=True)
    emit({**finish_metadata(meta), "burners": args.burners, "rows": args.rows,
          "actor_nice": os.getpriority(os.PRIO_PROCESS, 0),
          "captioner": str(stage.config.models.captioner), "runs": runs}, args.out)


if __name__ == "__main__":
    main()
