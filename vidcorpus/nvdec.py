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
"""

from __future__ import annotations

import logging

import av

log = logging.getLogger(__name__)

_UNAVAILABLE: set[str] = set()  # cuvid decoders that did not open in this process: not tried again
# Open decoders no cursor holds, by (decoder, the stream's extradata): opening one makes a CUDA context
# (tenths of a second), and a task seeks through many sources and ranges, so a released decoder is
# flushed and handed to the next cursor instead.
_IDLE: dict[tuple[str, bytes], av.CodecContext] = {}


def cuvid_context(stream: av.video.stream.VideoStream) -> av.CodecContext | None:
    """An open NVDEC decoder for ``stream`` (its codec's ``<codec>_cuvid``), fed with the stream's
    packets by the caller, or None where it cannot open (the caller decodes in software). Give it
    back with ``release`` when done."""
    name = f"{stream.codec_context.name}_cuvid"
    if name in _UNAVAILABLE:
        return None
    extradata = bytes(stream.codec_context.extradata or b"")
    idle = _IDLE.pop((name, extradata), None)
    if idle is not None:
        return idle
    if name not in av.codecs_available:
        return _unavailable(name, "this FFmpeg has no such decoder")
    ctx = av.CodecContext.create(name, "r")
    ctx.extradata = stream.codec_context.extradata
    try:
        ctx.open()
    except (av.error.FFmpegError, OSError) as exc:  # no GPU visible, driver libraries missing, ...
        return _unavailable(name, f"{type(exc).__name__}: {exc}")
    return ctx


def release(ctx: av.CodecContext) -> None:
    """Keep an NVDEC decoder for the next cursor over a stream with the same parameters, emptied of
    the frames it still held (one idle decoder per kind: another is closed)."""
    key = (ctx.codec.name, bytes(ctx.extradata or b""))
    try:
        ctx.flush_buffers()
    except av.error.FFmpegError:
        return
    if key not in _IDLE:
        _IDLE[key] = ctx


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
    (technical, motion, extraction): with ``filters.source_decoder=nvdec`` they ask for the GPU share."""

    @classmethod
    def resources_for(cls, config):
        resources = super().resources_for(config)
        if config.filters.source_decoder == "nvdec" and resources.gpus < TASK_GPU_SHARE:
            return resources.model_copy(update={"gpus": TASK_GPU_SHARE})
        return resources


def without_gpu_note(config, gpus: float) -> str | None:
    """The run's one line for NVDEC switches a cluster without a GPU cannot serve (the workers' own
    warnings stay in their logs), or None."""
    on = [name for name, value in (("split.decoder", config.split.decoder),
                                   ("filters.source_decoder", config.filters.source_decoder)) if value == "nvdec"]
    if gpus or not on:
        return None
    return f"{' and '.join(on)} = nvdec, but the cluster has no GPU: sources are decoded on the CPU"
