"""CPU a frame of H.264 decoding by thread setting, and the CPU stages' CPU with the source decoder's threads.

Why: a GPU node's job is bound by its host's CPU (docs/scaling.md), and every task of the technical
scorer and of extraction decodes its source with FFmpeg's own choice of threads (frame threads,
about one per core: 16 on a 16-core node), though the node's parallelism comes from running many
such tasks at once. Frame threads cost CPU of their own (frames in flight, hand-overs); slice
threads cost nothing where a source has one slice a frame (it then decodes on one thread).

1. ``decode``: every frame of each video, decoded in this process with one thread, slice threads,
   FFmpeg's choice (AUTO: frame threads, one per core and one), and 16 frame threads (a 16-core
   node's AUTO); CPU seconds (``time.process_time``: all threads), wall seconds. Rounds interleave.
2. ``stages``: ``bench/stage_cpu.py``'s chain (download to extraction, no models) on the same videos
   with ``filters.source_decode_threads`` 0 (before) and 1 (the default), interleaved; the stages'
   CPU and hashes of every clip's scores and every extracted clip's bytes (they must agree).

    python bench/bench_decode_threads.py VIDEO [VIDEO ...] [--rounds 2] [--set k=v ...] [--out result.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time

SETTINGS = {"one thread": (1, "NONE"), "slice threads (auto count)": (0, "SLICE"),
            "FFmpeg's choice (AUTO)": (0, "AUTO"), "16 frame threads": (16, "FRAME")}


def _decode(path: str, count: int, kind: str) -> dict:
    import av

    c0, t0 = time.process_time(), time.perf_counter()
    with av.open(path) as c:
        stream = c.streams.video[0]
        stream.thread_type = kind
        if count:
            stream.codec_context.thread_count = count
        frames = sum(1 for _ in c.decode(stream))
    return {"frames": frames, "cpu_s": round(time.process_time() - c0, 3), "wall_s": round(time.perf_counter() - t0, 3)}


def _stages(videos: list[str], threads: int, sets: list[str]) -> dict:
    import stage_cpu

    with contextlib.redirect_stdout(io.StringIO()):
        report = stage_cpu.main([*videos, *(a for s in sets for a in ("--set", s)),
                                 "--set", f"filters.source_decode_threads={threads}"])
    return {"stages": report["stages"], "clips": report["clips"], "kept": report["kept"],
            "frames_in_clips": report["frames_in_clips"], "extract_modes": report["extract_modes"],
            "outputs_sha256": report["outputs_sha256"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("videos", nargs="+")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="Config override for the stages.")
    ap.add_argument("--out")
    args = ap.parse_args()
    from pathlib import Path

    from run_meta import emit, finish_metadata, run_metadata

    meta = run_metadata()
    videos = [str(Path(v).resolve()) for v in args.videos]
    decode: dict[str, list] = {name: [] for name in SETTINGS}
    stages: dict[str, list] = {"0": [], "1": []}
    for r in range(args.rounds):
        order = list(SETTINGS) if r % 2 == 0 else list(reversed(SETTINGS))
        for name in order:
            count, kind = SETTINGS[name]
            decode[name].append([_decode(v, count, kind) for v in videos])
        for threads in ((0, 1) if r % 2 == 0 else (1, 0)):
            stages[str(threads)].append(_stages(videos, threads, args.sets))
    outputs = {json.dumps(run["outputs_sha256"], sort_keys=True) for runs in stages.values() for run in runs}
    result = {**finish_metadata(meta), "videos": videos, "rounds": args.rounds, "decode": decode, "stages": stages,
              "outputs_identical": len(outputs) == 1}
    emit(result, args.out)


if __name__ == "__main__":
    main()
