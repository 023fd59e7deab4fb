"""Source decoding on the GPU's video decoder (NVDEC), through the ``*_cuvid`` decoders of PyAV's FFmpeg.

Why: on a GPU node the CPU bounds the job, and the technical and motion scorers and precise
extraction each decode the source on it: 3.24 ms of CPU a 720p H.264 frame in software against
1.43 ms through ``h264_cuvid`` on an H100 (``bench/results/probe_gpu_codecs_h100.json``). NVDEC's
frames have the software decoder's planes, bit for bit (``bench/probe_nvdec_frames.py`` on the
720p footage and bikes.mp4), in NV12 instead of yuv420p; ``frame_seek.planar`` rearranges them
losslessly before any conversion, so the scores and clips are the same whichever decoder read the
source (``filters.source_decoder``).

Where there is no NVDEC (no CUDA device visible to this process: Ray hides the GPU from a task that
asks for no share of it; a codec or profile NVDEC does not take; an FFmpeg without cuvid) the caller
decodes in software, and this process says so once.

Two ways to NVDEC (``decoder_kind``): ``CUVID`` (``nvdec``), where FFmpeg copies every decoded
frame to host memory, and ``GPU_FRAMES`` (``nvdec_gpu_frames``): the codec's own decoder with the
CUDA hwaccel, its frames left in GPU memory (PyAV 18's ``is_hw_owned``) and copied to the host
only when a reader takes them (``frame_seek.planar``). The technical and motion scorers take about
one frame in five of what a source decode goes through; whether leaving the rest on the GPU saves
host CPU is what ``bench/probe_nvdec_cpu.py`` measures (not yet on a GPU).
"""

from __future__ import annotations

import logging

import av
from av.codec.hwaccel import HWAccel

log = logging.getLogger(__name__)

CUVID = "cuvid"  # PyAV's <codec>_cuvid: FFmpeg copies every frame to host memory
GPU_FRAMES = "gpu_frames"  # the codec's decoder with the CUDA hwaccel: frames stay on the GPU until taken
_UNAVAILABLE: set[str] = set()  # GPU decoders that did not open in this process: not tried again
# Open decoders no cursor holds, by (kind, decoder, the stream's extradata): opening one makes a CUDA
# context (tenths of a second), and a task seeks through many sources and ranges, so a released
# decoder is flushed and handed to the next cursor instead.
_IDLE: dict[tuple[str, str, bytes], av.CodecContext] = {}


def decoder_kind(setting: str) -> str | None:
    """The cursor's decoder for a setting of ``filters.source_decoder`` or ``split.decoder``: None (the
    CPU), ``CUVID`` or ``GPU_FRAMES``."""
    return {"nvdec": CUVID, "nvdec_gpu_frames": GPU_FRAMES}.get(setting)


def _decoder_name(codec: str, kind: str) -> str:
    """The decoder's name in the idle pool, the unavailable set and the fallback warning."""
    return f"{codec}_cuvid" if kind == CUVID else f"{codec} with the CUDA hwaccel"


def cuvid_context(stream: av.video.stream.VideoStream) -> av.CodecContext | None:
    """An open NVDEC decoder for ``stream`` (its codec's ``<codec>_cuvid``), fed with the stream's
    packets by the caller, or None where it cannot open (the caller decodes in software). Give it
    back with ``release`` when done."""
    name = _decoder_name(stream.codec_context.name, CUVID)
    if name in _UNAVAILABLE:
        return None
    extradata = bytes(stream.codec_context.extradata or b"")
    idle = _IDLE.pop((CUVID, name, extradata), None)
    if idle is not None:
        return idle
    if name not in av.codecs_available:
        return _unavailable(name, "this FFmpeg has no such decoder")
    ctx = av.CodecContext.create(name, "r")
    return _opened(ctx, stream, name)


def hw_frames_context(stream: av.video.stream.VideoStream) -> av.CodecContext | None:
    """An open decoder for ``stream`` on NVDEC whose frames stay in GPU memory (``GPU_FRAMES``), fed
    with the stream's packets by the caller, or None (the caller decodes in software): where it cannot
    open, where FFmpeg has no CUDA decoding for the codec, and for a stream other than 8-bit 4:2:0 at
    limited range (a full-range "yuvj" source converts by its pixel format, which NV12 frames lack).
    Where the GPU cannot take a stream's profile FFmpeg decodes it in software in the same context, on
    one thread (plain frames, which ``frame_seek.planar`` passes on). Give it back with ``release``."""
    fmt = stream.codec_context.format
    if fmt is None or fmt.name != "yuv420p" or stream.codec_context.color_range == 2:  # 2: JPEG (full) range
        return None
    name = _decoder_name(stream.codec_context.name, GPU_FRAMES)
    if name in _UNAVAILABLE:
        return None
    extradata = bytes(stream.codec_context.extradata or b"")
    ctx = _IDLE.pop((GPU_FRAMES, name, extradata), None)
    if ctx is None:
        try:
            # its own CUDA context (PyAV's default for frames left on the GPU is the device's primary
            # context, which FFmpeg refuses where another user made it active with other flags)
            ctx = av.CodecContext.create(stream.codec_context.name, "r", hwaccel=HWAccel(
                "cuda", allow_software_fallback=True, is_hw_owned=True, options={"primary_ctx": "0"}))
        except (av.error.FFmpegError, OSError, NotImplementedError) as exc:  # no GPU visible, no CUDA in FFmpeg
            return _unavailable(name, f"{type(exc).__name__}: {exc}")
        if not ctx.is_hwaccel:  # PyAV quietly makes a software decoder for a codec CUDA does not decode
            return _unavailable(name, "FFmpeg has no CUDA decoding for this codec")
        ctx.thread_count = 1  # a software fallback: one thread, as the CPU cursors (filters.source_decode_threads)
        ctx = _opened(ctx, stream, name)
        if ctx is None:
            return None
    return ctx


def _opened(ctx: av.CodecContext, stream, name: str) -> av.CodecContext | None:
    ctx.extradata = stream.codec_context.extradata
    try:
        ctx.open()
    except (av.error.FFmpegError, OSError) as exc:  # no GPU visible, driver libraries missing, ...
        return _unavailable(name, f"{type(exc).__name__}: {exc}")
    return ctx


def release(ctx: av.CodecContext, kind: str = CUVID) -> None:
    """Keep an NVDEC decoder (of ``kind``) for the next cursor over a stream with the same parameters,
    emptied of the frames it still held: one idle decoder per kind, the one released last (each holds
    a decoder and GPU memory; a task's sources of one encoder share their parameters)."""
    name = ctx.codec.name if kind == CUVID else _decoder_name(ctx.codec.name, kind)  # cuvid's is its own
    key = (kind, name, bytes(ctx.extradata or b""))
    try:
        ctx.flush_buffers()
    except av.error.FFmpegError:
        return
    for other in [k for k in _IDLE if k[0] == kind and k != key]:
        del _IDLE[other]  # closed when collected
    _IDLE.setdefault(key, ctx)


UNSPECIFIED = 2  # FFmpeg's AVCOL_SPC/PRI/TRC_UNSPECIFIED


def with_stream_tags(frame: av.VideoFrame, stream) -> av.VideoFrame:
    """A GPU decoder's frame with the stream's colour matrix, primaries and transfer where the frame
    has none. FFmpeg's own decoder tags a frame with the container's (an mp4 ``colr`` box) where the
    bitstream says nothing; ``h264_cuvid`` tags it with what its parser read alone, and ``to_rgb``
    converts by the matrix (BT.709 against the default BT.601: other RGB, other scores)."""
    src = stream.codec_context
    for name in ("colorspace", "color_primaries", "color_trc"):
        if getattr(frame, name) == UNSPECIFIED and getattr(src, name) != UNSPECIFIED:
            setattr(frame, name, getattr(src, name))
    return frame


def _unavailable(name: str, why: str) -> None:
    _UNAVAILABLE.add(name)
    log.warning("NVDEC (split.decoder, filters.source_decoder): %s does not open here (%s); decoding sources on "
                "the CPU", name, why)
    return None


# GPU share of one task that decodes on NVDEC (technical, motion, extraction): Ray hides the GPU from a
# task that asks for none. A decoder takes no SM time and little memory, and the model actors must keep
# nearly all of the GPU beside a node's worth of such tasks.
TASK_GPU_SHARE = 0.005


class NvdecShare:
    """For a stage class (listed before ``Stage``) whose tasks read sources through ``FrameCursor``
    (technical, motion, extraction): with ``filters.source_decoder`` on NVDEC they ask for the GPU share."""

    @classmethod
    def resources_for(cls, config):
        resources = super().resources_for(config)
        if decoder_kind(config.filters.source_decoder) and resources.gpus < TASK_GPU_SHARE:
            return resources.model_copy(update={"gpus": TASK_GPU_SHARE})
        return resources


def without_gpu_note(config, gpus: float) -> str | None:
    """The run's one line for NVDEC switches a cluster without a GPU cannot serve (the workers' own
    warnings stay in their logs), or None."""
    on = [f"{name}={value}" for name, value in (("split.decoder", config.split.decoder),
                                               ("filters.source_decoder", config.filters.source_decoder))
          if decoder_kind(value)]
    if gpus or not on:
        return None
    return f"{' and '.join(on)}, but the cluster has no GPU: sources are decoded on the CPU"
