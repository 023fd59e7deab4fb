"""Where shot detection's threads hold the GIL: py-spy samples of one detection row, by thread and function.

Why: below 720p the detectors' speed against decoding alone is bound by Python work spread over
several threads (the decode thread, PySceneDetect's detector loop, the scaler pool, TransNetV2's
feeder), not by any one core. py-spy's ``--gil`` mode samples only the thread that holds the GIL,
so ``gil_share`` (GIL-held samples over the samples the run's duration allows) tells whether the
GIL is saturated, and the per-thread and per-function counts say who holds it.

The row (``bench/bench_transnet_gpu.py``'s names) runs once to warm up (model load, CUDA), then
py-spy attaches to this process (``--nonblocking``: the process is not paused to sample) for
``--seconds`` while the row runs over and over; frames per second over that span come with it.
With ``--child`` a second py-spy samples the shot-decoding child (``split.decode_process``) the
same way, summarised apart as ``child`` (its threads: the decoding loop and the scaler pool):

    python bench/profile_shot_gil.py --video edit_360p.mp4 --row default_plus_transnetv2 --out prof.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_transnet_gpu import NoNetwork, cpu_seconds, decode_only  # noqa: E402

from vidcorpus.config import SplitConfig  # noqa: E402
from vidcorpus.ingest.probe import probe_video_file  # noqa: E402
from vidcorpus.ingest.split import detect_segments  # noqa: E402
from vidcorpus.ingest.transnet import TransNetRun  # noqa: E402

ROWS = {
    "transnetv2": dict(detectors=["transnetv2"], flash_filter=False, dissolve_spans=False, histogram_evidence=False),
    "default_plus_transnetv2": dict(transnet_on_gpu=True),
    "default": {},
    # decoded in a child whatever split.decode_process's auto would pick (code that has it)
    "default_plus_transnetv2_in_child": dict(transnet_on_gpu=True, decode_process="on"),
    "default_in_child": dict(decode_process="on"),
}


def row_runner(row: str, path: str):
    """A callable running ``row`` once over ``path``, returning the frames read."""
    if row == "decode_only_48x27":
        return lambda: decode_only(path)
    name, feed = (row[:-5], True) if row.endswith("_feed") else (row, False)
    cfg = SplitConfig(**ROWS[name])
    with_model = "transnetv2" in name

    with open(path, "rb") as f:  # the split stage passes the probe's rotation (bench/bench_transnet_gpu.py)
        rotation = probe_video_file(f)["rotation"]

    def run() -> int:
        tn = TransNetRun.create(cfg) if with_model else None
        if tn is not None and feed:
            tn.stream.model = NoNetwork()
        return detect_segments(path, cfg, transnet=tn, rotation=rotation).n_frames
    return run


def _set_knobs(a) -> dict:
    """The batched reader's settings this run uses (the modules' defaults unless given); none
    with code from before the batched reader."""
    import cv2

    try:
        from vidcorpus.ingest import detect_batches, scale_ahead
    except ImportError:
        return {}

    if a.ahead:
        detect_batches.AHEAD = a.ahead
    if a.max_batch:
        detect_batches.MAX_BATCH = a.max_batch
    if a.pool_threads:
        scale_ahead.SCALER_THREADS = a.pool_threads
    if a.cv2_threads is not None:  # the scaler pool sets scale_ahead.OPENCV_THREADS once it exists
        scale_ahead.OPENCV_THREADS = a.cv2_threads
        cv2.setNumThreads(a.cv2_threads)

    return {"ahead": detect_batches.AHEAD or scale_ahead.SCALER_THREADS, "max_batch": detect_batches.MAX_BATCH,
            "pool_threads": scale_ahead.SCALER_THREADS,  # OpenCV's threads while detecting (older code: the process's)
            "cv2_threads": getattr(scale_ahead, "OPENCV_THREADS", None) or cv2.getNumThreads()}


def _batch_times():
    try:
        from vidcorpus.ingest import detect_batches
    except ImportError:  # code from before the batched reader
        return None

    detect_batches.TIMES = detect_batches.BatchTimes()
    return detect_batches.TIMES


def _times_per_frame(times) -> dict:
    """The reading thread's and the pool's microseconds a frame (ingest/detect_batches.BatchTimes)."""
    if times is None:
        return {}
    n = max(times.frames, 1)
    return {"frames": times.frames, **{f"{k[:-2]}_us_per_frame": round(getattr(times, k) / n * 1e6, 1)
                                        for k in ("decode_s", "wait_s", "consume_s", "prepare_s", "child_decode_s",
                                                  "child_wait_free_s", "child_wait_scaled_s")
                                        if hasattr(times, k)}}


def _py_spy(a, pid: int, raw: str) -> subprocess.Popen:
    """py-spy sampling process ``pid``'s GIL holder (``--idle``: every thread) into ``raw``."""
    return subprocess.Popen([a.py_spy, "record", "--pid", str(pid), "--idle" if a.idle else "--gil",
                             "--threads", *(["--native"] if a.native else ["--nonblocking"]),  # native: pauses to sample
                             "-r", str(a.rate), "-d", str(int(a.seconds)), "-f", "raw", "-o", raw],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _child_pids() -> list[int]:
    """The decoding children the warm-up started (none with code from before them, or decoding here)."""
    try:
        from vidcorpus.ingest import decode_process
    except ImportError:
        return []
    return [decoder.proc.pid for decoder in list(decode_process._ALL)]


def summarise(raw: str, samples_possible: float, top: int) -> dict:
    """GIL-held samples (py-spy's raw collapsed stacks) by thread, by innermost function, and inclusive."""
    threads, leaves, inclusive = collections.Counter(), collections.Counter(), collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        count = int(n)
        total += count
        thread = re.sub(r"^thread \(\w+\):? ?", "", frames[0]) or "(unnamed)"
        thread = re.sub(r"_\d+$", "_N", re.sub(r"-\d+", "-N", thread))  # pool threads together
        threads[thread] += count
        short = [re.sub(r" \((?:.*/)?([^/]+?):\d+\)$", r" (\1)", f) for f in frames[1:]]
        if short:
            leaves[f"{thread}: {short[-1]}"] += count
        for f in set(short):
            inclusive[f"{thread}: {f}"] += count
    share = lambda c: {k: round(v / max(total, 1), 4) for k, v in c.most_common(top)}  # noqa: E731
    return {"gil_samples": total, "gil_share": round(total / samples_possible, 3) if samples_possible else None,
            "by_thread": share(threads), "by_leaf": share(leaves), "inclusive": share(inclusive)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", required=True)
    ap.add_argument("--row", default="default_plus_transnetv2",
                    choices=["decode_only_48x27", *ROWS, *(f"{r}_feed" for r in ROWS if "transnetv2" in r)])
    ap.add_argument("--seconds", type=float, default=10.0, help="how long py-spy samples")
    ap.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    ap.add_argument("--switch-interval", type=float, help="sys.setswitchinterval (seconds; Python's default 0.005)")
    ap.add_argument("--idle", action="store_true", help="sample every thread, waiting or not (wall time, not the GIL)")
    ap.add_argument("--ahead", type=int, help="ingest/detect_batches.AHEAD")
    ap.add_argument("--max-batch", type=int, help="ingest/detect_batches.MAX_BATCH")
    ap.add_argument("--pool-threads", type=int, help="ingest/scale_ahead.SCALER_THREADS")
    ap.add_argument("--cv2-threads", type=int, help="OpenCV's threads (the detection's default: 1)")
    ap.add_argument("--child", action="store_true", help="also sample the decoding child (split.decode_process)")
    ap.add_argument("--native", action="store_true", help="py-spy's native frames too (where a thread waits for the GIL)")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    if a.switch_interval:
        sys.setswitchinterval(a.switch_interval)
    knobs = _set_knobs(a)
    run = row_runner(a.row, a.video)
    run()  # warm-up: the model's load and first calls are not what is profiled
    times = _batch_times()
    raw = os.path.join(tempfile.mkdtemp(), "gil.txt")
    spy = _py_spy(a, os.getpid(), raw)
    children = [(_py_spy(a, pid, raw + f".{pid}"), raw + f".{pid}") for pid in (_child_pids() if a.child else [])]
    time.sleep(1.0)  # py-spy attaching
    frames, t0, c0 = 0, time.perf_counter(), cpu_seconds()
    while spy.poll() is None:
        frames += run()
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0  # the decoding child's too
    err = spy.stderr.read() if spy.stderr else ""
    if not os.path.exists(raw):
        sys.exit(f"py-spy wrote nothing: {err.strip().splitlines()[-1:] or spy.returncode}")
    for child, _ in children:
        child.wait()
    with open(raw) as f:
        result = {"video": os.path.basename(a.video), "row": a.row, "frames_per_s": round(frames / wall, 1),
                  "cpu_ms_per_frame": round(cpu / max(frames, 1) * 1e3, 3), "cpu_count": os.cpu_count(),
                  "seconds": round(wall, 2), "rate": a.rate,
                  "switch_interval": sys.getswitchinterval(), "sampled": "every thread" if a.idle else "GIL holder",
                  "knobs": knobs, "batch_times": _times_per_frame(times),
                  **summarise(f.read(), a.rate * wall, a.top)}
    for _, child_raw in children[:1]:  # one decoding child at a time in this loop
        if os.path.exists(child_raw):
            with open(child_raw) as f:
                result["child"] = summarise(f.read(), a.rate * wall, a.top)
    print(json.dumps(result, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
