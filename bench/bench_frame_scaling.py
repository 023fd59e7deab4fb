"""CPU cost per frame of turning a decoded 720p frame into a detection frame: PyAV's
``frame.to_ndarray(width, height, format)`` against ``media.upright_array`` (cached single-threaded
scalers, one per purpose), with the shot detectors' and TransNetV2's sizes alternating as they do in
the split stage's decode. Why: ``to_ndarray`` builds a scaler, with a thread per CPU, for every frame.

Measures process CPU time (all threads, getrusage) and wall time per frame over the same decoded
frames, best of ``--repeat``, and checks the pixels are equal. Writes JSON:

    python bench/bench_frame_scaling.py --video /tmp/prof720/footage/edited_000.mp4 \\
        --out bench/results/frame_scaling_720p_cpu.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import time

import av
import numpy as np

from vidcorpus.media import upright_array

DETECT = (256, 144)  # split.downscale 0 at 1280x720: about 256 px wide
TRANSNET = (48, 27)


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def per_frame(fn, frames, repeat: int) -> dict:
    best = None
    for _ in range(repeat):
        c0, w0 = cpu_s(), time.perf_counter()
        for f in frames:
            fn(f)
        got = ((cpu_s() - c0) / len(frames) * 1e3, (time.perf_counter() - w0) / len(frames) * 1e3)
        best = got if best is None or got[0] < best[0] else best
    return {"cpu_ms_per_frame": round(best[0], 3), "wall_ms_per_frame": round(best[1], 3)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", required=True)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    with av.open(a.video) as c:
        s = c.streams.video[0]
        frames = []
        for f in c.decode(s):
            frames.append(f)
            if len(frames) >= a.frames:
                break
    (dw, dh), (tw, th) = DETECT, TRANSNET

    def pyav(f):
        f.to_ndarray(width=dw, height=dh, format="bgr24", interpolation="AREA")
        f.to_ndarray(width=tw, height=th, format="rgb24")

    def cached(f):
        upright_array(f, dw, dh, format="bgr24", interpolation="AREA")
        upright_array(f, tw, th)

    equal = all(np.array_equal(upright_array(f, dw, dh, format="bgr24", interpolation="AREA"),
                               f.to_ndarray(width=dw, height=dh, format="bgr24", interpolation="AREA"))
                and np.array_equal(upright_array(f, tw, th), f.to_ndarray(width=tw, height=th, format="rgb24"))
                for f in frames[:50])
    out = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
           "loadavg_before": os.getloadavg(), "video": a.video, "size": [frames[0].width, frames[0].height],
           "frames": len(frames), "repeat": a.repeat, "what": "detection frame (256x144 BGR, area) + TransNetV2 frame (48x27 RGB) per decoded frame",
           "pyav_to_ndarray": per_frame(pyav, frames, a.repeat), "cached_scalers": per_frame(cached, frames, a.repeat),
           "pixels_equal_first_50": equal}
    out["loadavg_after"] = os.getloadavg()
    out["cpu_ratio"] = round(out["pyav_to_ndarray"]["cpu_ms_per_frame"] / out["cached_scalers"]["cpu_ms_per_frame"], 2)
    print(json.dumps(out, indent=1))
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(out, fh, indent=1)
    return out


if __name__ == "__main__":
    main()
