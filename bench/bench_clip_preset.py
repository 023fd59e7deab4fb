"""What x264's preset costs and gives for precise clips: CPU per frame, bytes and luma PSNR.

Why: extraction's x264 encode is the largest CPU cost of `vidcorpus run` on a GPU node
(docs/benchmarks.md, runs 5 to 9), and `split.clip_preset` sets it. Each video's frames (decoded
once, up to --frames) are encoded as extraction encodes a clip (`ingest/extract.py`'s settings: the
crf, forced IDR, mbtree off, one thread), once per preset and crf; the clip is decoded back and its
luma compared with the source's. Reported per video and preset: CPU ms per frame (the encoder's
thread), kB, PSNR-Y in dB; ratios against the first preset listed.

    python bench/bench_clip_preset.py VIDEO [VIDEO ...] [--presets veryfast,superfast] [--crf 20]
        [--frames 300] [--rounds 2] [--out bench/results/clip_preset_cpu.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

import av
import numpy as np


def source_frames(path: str, limit: int) -> tuple[list[np.ndarray], float]:
    """Up to ``limit`` yuv420p planes of the video, and its frame rate."""
    out = []
    with av.open(path) as c:
        s = c.streams.video[0]
        rate = float(s.average_rate or 25)
        for f in c.decode(s):
            out.append(f.to_ndarray(format="yuv420p"))
            if len(out) >= limit:
                break
    return out, rate


def encode(frames: list[np.ndarray], rate: float, preset: str, crf: int) -> tuple[bytes, float]:
    """The clip's bytes and the encoder's CPU seconds (this thread's: x264 runs on it, one thread)."""
    h = frames[0].shape[0] * 2 // 3
    w = frames[0].shape[1]
    buf = io.BytesIO()
    out = av.open(buf, "w", format="mp4")
    s = out.add_stream("libx264", rate=round(rate))
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    s.options = {"crf": str(crf), "preset": preset, "forced-idr": "1", "x264-params": "mbtree=0"}
    s.codec_context.thread_count = 1
    vf = [av.VideoFrame.from_ndarray(a, format="yuv420p") for a in frames]
    c0 = time.thread_time()
    for i, f in enumerate(vf):
        f.pts = i
        for p in s.encode(f):
            out.mux(p)
    for p in s.encode():
        out.mux(p)
    cpu = time.thread_time() - c0
    out.close()
    return buf.getvalue(), cpu


def psnr_y(frames: list[np.ndarray], data: bytes) -> float:
    h = frames[0].shape[0] * 2 // 3
    values = []
    with av.open(io.BytesIO(data)) as c:
        for a, f in zip(frames, c.decode(video=0)):
            y0 = a[:h].astype(np.float32)
            y1 = f.to_ndarray(format="yuv420p")[:h].astype(np.float32)
            mse = float(((y0 - y1) ** 2).mean())
            values.append(10 * np.log10(255 ** 2 / max(mse, 1e-9)))
    return float(np.mean(values))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("videos", nargs="+")
    ap.add_argument("--presets", default="veryfast,superfast,ultrafast")
    ap.add_argument("--crf", type=int, default=20)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2, help="Encodes per preset; the least CPU is reported.")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    presets = a.presets.split(",")
    results = []
    for video in a.videos:
        frames, rate = source_frames(video, a.frames)
        h, w = frames[0].shape[0] * 2 // 3, frames[0].shape[1]
        rows = []
        for preset in presets:
            best = None
            for _ in range(a.rounds):  # interleaving would mix caches; the least CPU of the rounds is kept
                data, cpu = encode(frames, rate, preset, a.crf)
                best = cpu if best is None else min(best, cpu)
            rows.append({"preset": preset, "crf": a.crf, "cpu_ms_per_frame": round(1000 * best / len(frames), 2),
                         "kbytes": round(len(data) / 1024, 1), "psnr_y_db": round(psnr_y(frames, data), 2)})
        base = rows[0]
        for r in rows:
            r["cpu_of_first"] = round(r["cpu_ms_per_frame"] / base["cpu_ms_per_frame"], 3)
            r["bytes_of_first"] = round(r["kbytes"] / base["kbytes"], 3)
            r["psnr_minus_first_db"] = round(r["psnr_y_db"] - base["psnr_y_db"], 2)
        results.append({"video": Path(video).name, "size": f"{w}x{h}", "frames": len(frames), "presets": rows})
        print(json.dumps(results[-1]), flush=True)
    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": f"{platform.node()}: {os.cpu_count()} cores, 1-minute load {os.getloadavg()[0]:.1f} at the end",
        "command": " ".join(["python", *sys.argv]),
        "x264": av.codec.Codec("libx264", "w").long_name, "pyav": av.__version__,
        "videos": results,
    }
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
