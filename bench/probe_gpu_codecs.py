"""Can this machine's PyAV decode H.264 on NVDEC (h264_cuvid) and encode on NVENC (h264_nvenc)?

Extraction (x264) and the three source decodes are most of the GPU-node job's CPU
(docs/benchmarks.md, the GPU-node section). PyAV's wheels list both hardware codecs; whether they
run depends on the driver's libraries in the container (and NVENC on the GPU: the H100 has NVDECs
but no NVENC). Prints JSON: per codec, frames/s and CPU ms a frame against libx264 / the software
decoder on the same frames, or the error.

    python bench/probe_gpu_codecs.py --video some_720p.mp4 [--frames 300] [--out probe.json]
"""

from __future__ import annotations

import argparse
import json
import time


def _decode(path: str, codec: str | None, frames: int) -> dict:
    import av

    t, c = time.perf_counter(), time.process_time()
    n = 0
    with av.open(path) as f:
        stream = f.streams.video[0]
        if codec is not None:
            ctx = av.codec.CodecContext.create(codec, "r")
            ctx.extradata = stream.codec_context.extradata
            packets = (p for p in f.demux(stream))
            for p in packets:
                for _frame in ctx.decode(p):
                    n += 1
                if n >= frames:
                    break
        else:
            stream.thread_type = "AUTO"
            for _frame in f.decode(stream):
                n += 1
                if n >= frames:
                    break
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return {"frames": n, "frames_per_s": round(n / wall, 1), "cpu_ms_per_frame": round(1000 * cpu / max(n, 1), 3)}


def _encode(path: str, codec: str, frames: int) -> dict:
    import av

    with av.open(path) as f:
        src = [fr.to_ndarray(format="yuv420p") for _, fr in zip(range(frames), f.decode(video=0))]
        w, h = f.streams.video[0].width, f.streams.video[0].height
    t, c = time.perf_counter(), time.process_time()
    out = av.open("/tmp/probe_gpu_codecs.mp4", "w")
    s = out.add_stream(codec, rate=25)
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    if codec == "libx264":
        s.options = {"preset": "veryfast", "crf": "23", "threads": "1"}
    for arr in src:
        for p in s.encode(av.VideoFrame.from_ndarray(arr, format="yuv420p")):
            out.mux(p)
    for p in s.encode():
        out.mux(p)
    out.close()
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return {"frames": len(src), "frames_per_s": round(len(src) / wall, 1), "cpu_ms_per_frame": round(1000 * cpu / len(src), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", required=True)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--out")
    args = ap.parse_args()
    import av

    result: dict = {"av": av.__version__, "video": args.video}
    for name, fn in (("decode_software", lambda: _decode(args.video, None, args.frames)),
                     ("decode_h264_cuvid", lambda: _decode(args.video, "h264_cuvid", args.frames)),
                     ("encode_libx264_veryfast_1thread", lambda: _encode(args.video, "libx264", args.frames)),
                     ("encode_h264_nvenc", lambda: _encode(args.video, "h264_nvenc", args.frames))):
        try:
            result[name] = fn()
        except Exception as exc:  # noqa: BLE001 - what fails is the finding
            result[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
