"""The host CPU a decoded frame costs with each of PyAV's H.264 decoders, when a stage wants only some frames.

A source cursor decodes every frame of a shot (H.264 needs the references) but the technical and
motion scorers convert about one in five (``filters.motion_fps``). PyAV's ``h264_cuvid`` and the
CUDA hwaccel as the project uses them hand every frame to the host (FFmpeg downloads each NV12
frame, 1.4 MB at 720p): on an H100 host ``h264_cuvid`` took 1.43 ms of CPU a 720p frame against
3.24 for software (``bench/results/probe_gpu_codecs_h100.json``). PyAV 18's ``HWAccel(...,
is_hw_owned=True)`` leaves the frames in GPU memory, so a stage can copy
only the frames it wants (``filters.source_decoder=nvdec_gpu_frames``: ``vidcorpus.nvdec``'s
``hw_frames_context`` and ``frame_seek.planar``, which the ``gpu_frames`` way uses). Per way,
decode every frame of the first N and take the luma and chroma planes of every K-th to host memory
as numpy arrays (what ``frame_seek.planar`` starts from); CPU ms per decoded frame, and whether the
taken planes equal the software decoder's (matched by pts); then, untimed, whether every fifth frame's RGB
(as the project's cursor makes it) does, on the video and on a copy tagged BT.709 by its container
alone. A way that fails records its error.

    python bench/probe_nvdec_cpu.py --video edited_000.mp4 [--frames 600] [--every 1,5] [--out probe.json]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

WAYS = ("software", "h264_cuvid", "hwaccel_download", "gpu_frames")


def _host_planes(frame) -> tuple[np.ndarray, np.ndarray]:
    """(Y (H, W), chroma (2, H/2, W/2)) on the host of a yuv420p or nv12 frame already in host memory."""
    h, w = frame.height, frame.width
    if frame.format.name == "nv12":
        y = np.frombuffer(frame.planes[0], np.uint8).reshape(-1, frame.planes[0].line_size)[:h, :w]
        uv = np.frombuffer(frame.planes[1], np.uint8).reshape(-1, frame.planes[1].line_size)[:h // 2, :w]
        return y.copy(), np.stack([uv[:, 0::2], uv[:, 1::2]])
    planes = [np.frombuffer(p, np.uint8).reshape(-1, p.line_size) for p in frame.planes[:3]]
    return planes[0][:h, :w].copy(), np.stack([planes[1][:h // 2, :w // 2], planes[2][:h // 2, :w // 2]])


def _gpu_frame_planes(frame) -> tuple[np.ndarray, np.ndarray]:
    """The same from a frame left in GPU memory, as the project's cursor takes it
    (``vidcorpus.frame_seek.planar``: PyAV's reformatter transfers it, then yuv420p)."""
    from vidcorpus.frame_seek import planar

    return _host_planes(planar(frame))


def _frames(container, stream, way: str):
    """Decoded frames of ``stream`` by ``way`` (packets from the container's demuxer)."""
    import av
    from av.codec.hwaccel import HWAccel

    if way == "software":
        stream.codec_context.thread_type = "SLICE"  # the source cursors' setting (filters.source_decode_threads=1)
        stream.codec_context.thread_count = 1
        yield from container.decode(stream)
        return
    if way == "gpu_frames":  # the project's decoder for filters.source_decoder=nvdec_gpu_frames
        from vidcorpus import nvdec

        ctx = nvdec.hw_frames_context(stream)
        if ctx is None:
            raise RuntimeError(f"nvdec.hw_frames_context did not open (unavailable: {sorted(nvdec._UNAVAILABLE)})")
    else:
        if way == "h264_cuvid":
            ctx = av.CodecContext.create("h264_cuvid", "r")
        else:
            ctx = av.CodecContext.create("h264", "r", hwaccel=HWAccel("cuda", allow_software_fallback=False))
        ctx.extradata = stream.codec_context.extradata
    for packet in container.demux(stream):
        yield from ctx.decode(packet if packet.size else None)


def rgb_of(frame, stream) -> np.ndarray:
    """The RGB a scorer gets from a frame of any way, as the project's cursor makes it
    (``nvdec.with_stream_tags``, ``frame_seek.to_rgb``, which copies a GPU frame over): equal planes can still
    convert apart where a frame's properties (colour tags, interlacing) differ."""
    from vidcorpus.frame_seek import to_rgb
    from vidcorpus.nvdec import with_stream_tags

    return to_rgb(with_stream_tags(frame, stream))


def container_tagged_copy(path: str, frames: int) -> str:
    """The first ``frames`` packets of ``path`` remuxed into an mp4 whose ``colr`` box says BT.709 (the
    bitstream untouched): the case where a GPU decoder's own context would miss the tags."""
    import tempfile

    import av

    out_path = tempfile.mkdtemp(prefix="colr_") + "/colr.mp4"
    with av.open(path) as src, av.open(out_path, "w") as out:
        stream = src.streams.video[0]
        tagged = out.add_stream_from_template(stream)
        cc = tagged.codec_context
        cc.colorspace = cc.color_primaries = cc.color_trc = 1  # BT.709
        n = 0
        for packet in src.demux(stream):
            if packet.dts is None:
                continue
            packet.stream = tagged
            out.mux(packet)
            n += 1
            if n >= frames:
                break
    return out_path


def decode(path: str, way: str, n: int, every: int, rgb: bool = False) -> tuple[dict, int, int, float, float]:
    """({pts: (Y, chroma)} of every ``every``-th frame, frames decoded, of them in GPU memory (a
    hwaccel that fell back to software decoding gives none), wall s, CPU s)."""
    import av

    taken: dict = {}
    count = on_device = 0
    wall, cpu = time.perf_counter(), time.process_time()
    with av.open(path) as container:
        stream = container.streams.video[0]
        take = ((lambda f: rgb_of(f, stream)) if rgb else _gpu_frame_planes if way == "gpu_frames"
                else _host_planes)
        for frame in _frames(container, stream, way):
            on_device += frame.format.name == "cuda"
            if count % every == 0:
                taken[frame.pts] = take(frame)
            count += 1
            if count >= n:
                break
    return taken, count, on_device, time.perf_counter() - wall, time.process_time() - cpu


def same_planes(ref: dict, got: dict) -> dict:
    common = sorted(set(ref) & set(got))
    same = sum(np.array_equal(ref[p][0], got[p][0]) and np.array_equal(ref[p][1], got[p][1]) for p in common)
    return {"taken": len(got), "matched_by_pts": len(common), "identical_planes": int(same)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", required=True)
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--every", default="1,5", help="Take every K-th frame's planes; comma-separated Ks.")
    ap.add_argument("--rounds", type=int, default=2, help="Rounds of all ways, interleaved; each way's least CPU.")
    ap.add_argument("--out")
    args = ap.parse_args()
    import av

    from run_meta import emit, finish_metadata, run_metadata

    meta = run_metadata()
    result: dict = {"av": av.__version__, "video": args.video, "frames": args.frames, "rounds": args.rounds,
                    "ways": {}}
    for every in (int(k) for k in args.every.split(",")):
        ref = None
        rows: dict = {}
        for _ in range(args.rounds):
            for way in WAYS:
                try:
                    taken, count, on_device, wall, cpu = decode(args.video, way, args.frames, every)
                except Exception as exc:  # noqa: BLE001 - a decoder that cannot run here is the finding
                    rows[way] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                    continue
                if way == "software":
                    ref = taken
                best = rows.get(way)
                if best is None or "error" in best or cpu < best["cpu_s"]:
                    rows[way] = {"decoded": count, "in_gpu_memory": on_device, "cpu_s": round(cpu, 3),
                                 "wall_s": round(wall, 3),
                                 "cpu_ms_per_frame": round(1000 * cpu / max(count, 1), 3),
                                 **(same_planes(ref, taken) if ref is not None else {})}
        soft = rows.get("software", {}).get("cpu_s")
        for row in rows.values():
            if soft and "cpu_s" in row:
                row["cpu_of_software"] = round(row["cpu_s"] / soft, 3)
        result["ways"][f"every_{every}"] = rows
    # untimed: the RGB of every fifth frame, each way against software's, on the video and on a copy
    # tagged BT.709 by its container alone
    for key, video in (("rgb_every_5", args.video),
                       ("rgb_every_5_container_tagged", container_tagged_copy(args.video, min(args.frames, 150)))):
        ref_rgb = decode(video, "software", args.frames, 5, rgb=True)[0]
        result[key] = {}
        for way in WAYS[1:]:
            try:
                got = decode(video, way, args.frames, 5, rgb=True)[0]
            except Exception as exc:  # noqa: BLE001
                result[key][way] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
                continue
            common = sorted(set(ref_rgb) & set(got))
            result[key][way] = {"matched_by_pts": len(common), "identical_rgb": int(sum(
                np.array_equal(ref_rgb[p], got[p]) for p in common))}
    emit({**finish_metadata(meta), **result}, args.out)


if __name__ == "__main__":
    main()
