"""Does NVDEC give the same frames as FFmpeg's software H.264 decoder, and if not, where do they part?

H.264 decoding is bit-exact by the standard, so the YUV planes of any conforming decoder should be
equal; a difference in RGB would then come from the conversion (NV12 against yuv420p input to
swscale, colour range or matrix metadata the hardware frames lack). The CLIP stage's keyframe-only
NVDEC attempt (docs/benchmarks.md, "NVDEC") saw RGB differences of up to 132 and left the cause
open. This decodes the first N frames of a video three ways (software; the ``h264`` decoder with the
CUDA hwaccel; the ``h264_cuvid`` decoder), matches frames by pts and reports, per way against
software: frames matched, identical luma / chroma, the largest differences, each frame's pixel
format and colour metadata, and the RGB difference through the project's ``to_rgb``. Prints JSON.

    python bench/probe_nvdec_frames.py --video edited_000.mp4 [--frames 300] [--out probe.json]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _meta(frame) -> dict:
    return {"format": frame.format.name, "color_range": int(frame.color_range),
            "colorspace": int(frame.colorspace), "size": [frame.width, frame.height]}


def _planes(frame) -> tuple[np.ndarray, np.ndarray]:
    """Luma and the chroma planes (U then V, each (H/2, W/2)) of a yuv420p or nv12 frame."""
    if frame.format.name == "nv12":
        y = np.frombuffer(frame.planes[0], np.uint8).reshape(-1, frame.planes[0].line_size)[:frame.height, :frame.width]
        uv = np.frombuffer(frame.planes[1], np.uint8).reshape(-1, frame.planes[1].line_size)[:frame.height // 2, :frame.width]
        return y, np.stack([uv[:, 0::2], uv[:, 1::2]])
    yuv = frame.reformat(format="yuv420p")
    arr = yuv.to_ndarray()  # (H * 3/2, W)
    h, w = frame.height, frame.width
    return arr[:h], np.stack([arr[h:h + h // 4].reshape(h // 2, w // 2), arr[h + h // 4:].reshape(h // 2, w // 2)])


def _decode(path: str, way: str, n: int) -> tuple[dict, float, float]:
    import av
    from av.codec.hwaccel import HWAccel

    from vidcorpus.frame_seek import to_rgb

    got: dict = {}
    t, c = time.perf_counter(), time.process_time()
    with av.open(path) as f:
        stream = f.streams.video[0]
        if way == "software":
            ctx = stream.codec_context
            ctx.thread_type = "AUTO"
            source = f.decode(stream)
        else:
            if way == "h264_hwaccel_cuda":
                ctx = av.CodecContext.create("h264", "r", hwaccel=HWAccel("cuda", allow_software_fallback=False))
            else:
                ctx = av.CodecContext.create("h264_cuvid", "r")
            ctx.extradata = stream.codec_context.extradata
            source = (fr for p in f.demux(stream) for fr in ctx.decode(p if p.size else None))
        for frame in source:
            y, uv = _planes(frame)
            got[frame.pts] = (y.copy(), uv.copy(), to_rgb(frame), _meta(frame))
            if len(got) >= n:
                break
    return got, time.perf_counter() - t, time.process_time() - c


def compare(ref: dict, other: dict) -> dict:
    common = sorted(set(ref) & set(other))
    same_y = same_uv = same_rgb = 0
    max_y = max_uv = max_rgb = 0
    worst = None
    for pts in common:
        ry, ruv, rrgb, _ = ref[pts]
        oy, ouv, orgb, _ = other[pts]
        dy = int(np.abs(ry.astype(np.int16) - oy).max())
        duv = int(np.abs(ruv.astype(np.int16) - ouv).max())
        drgb = int(np.abs(rrgb.astype(np.int16) - orgb).max())
        same_y += dy == 0
        same_uv += duv == 0
        same_rgb += drgb == 0
        if drgb > max_rgb:
            worst = pts
        max_y, max_uv, max_rgb = max(max_y, dy), max(max_uv, duv), max(max_rgb, drgb)
    first = other[common[0]][3] if common else None
    return {"frames": len(other), "matched_by_pts": len(common), "identical_luma": same_y,
            "identical_chroma": same_uv, "identical_rgb": same_rgb, "max_abs_luma": max_y,
            "max_abs_chroma": max_uv, "max_abs_rgb": max_rgb, "worst_pts": worst, "first_frame_meta": first}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", required=True)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--out")
    args = ap.parse_args()
    import av

    from run_meta import emit, finish_metadata, run_metadata

    meta = run_metadata()
    ref, wall, cpu = _decode(args.video, "software", args.frames)
    result: dict = {"av": av.__version__, "video": args.video,
                    "software": {"frames": len(ref), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                                 "first_frame_meta": ref[min(ref)][3] if ref else None}}
    for way in ("h264_hwaccel_cuda", "h264_cuvid"):
        try:
            got, wall, cpu = _decode(args.video, way, args.frames)
            result[way] = {**compare(ref, got), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}
        except Exception as exc:  # noqa: BLE001 - what fails is the finding
            result[way] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    emit({**finish_metadata(meta), **result}, args.out)


if __name__ == "__main__":
    main()
