"""Decode a few frames of a clip by index, starting each from the nearest keyframe before it.

A clip's packets are demuxed once (cheap: no decoding) to learn where its keyframes are; each
wanted frame is then decoded from the last keyframe at or before it, unless the decoder is already
past that keyframe (then it simply goes on). Clips that vidcorpus extracts carry keyframes exactly
where the model scorers sample (``split.keyframes_at_samples``), so K frames cost about K decodes
instead of the whole clip; a clip with a single keyframe costs what sequential decoding costs.
Non-reference frames other than the wanted ones are skipped (FFmpeg ``skip_frame=NONREF``).

Frames are found by presentation time at a constant frame rate; when timestamps do not index the
frames one by one (variable frame rate, missing pts) the function returns None and the caller
decodes sequentially instead.

Per-clip fixed costs matter here (a clip costs about K decodes), so two of PyAV's defaults are
avoided (measured on 640x360 H.264 clips with keyframes at 3 samples, docs/benchmarks.md):
``open_video`` lets ``avformat_find_stream_info`` probe without decoding (it otherwise decodes the
first frames of every clip to guess the H.264 reorder delay: about 2.4 of 2.9 ms per open), and
``to_rgb`` converts through one cached single-threaded swscale context per thread
(``frame.to_ndarray`` builds a new swscale context, with a thread per CPU, for every frame:
about 1 ms per frame against 0.08 ms). Both give exactly the frames of the defaults (tested).
"""

from __future__ import annotations

import bisect
import io
import threading
from typing import Callable, Container, Iterable

import av
import numpy as np
from av.bitstream import BitStreamFilterContext
from av.codec.hwaccel import HWAccel
from av.video.reformatter import VideoReformatter

# Options for the stream-info probe only (the decoder that decodes frames is another context):
# the probe learns size, rate and timing from the container and the packets, decoding nothing.
PROBE_OPTIONS = {"skip_frame": "all"}

_LOCAL = threading.local()


def open_video(data: bytes):
    """An input container over a video held in memory, opened without decoding any frame."""
    return av.open(io.BytesIO(data), options=PROBE_OPTIONS)


def reformatter(purpose: str = "rgb") -> VideoReformatter:
    """This thread's swscale context holder for one ``purpose`` (swscale reuses its context while
    parameters repeat, so callers that alternate sizes or formats per frame, such as the shot
    detectors and TransNetV2 reading one decode, each keep their own)."""
    held = getattr(_LOCAL, "reformatters", None)
    if held is None:
        held = _LOCAL.reformatters = {}
    rf = held.get(purpose)
    if rf is None:
        rf = held[purpose] = VideoReformatter()
    return rf


def planar(frame: av.VideoFrame) -> av.VideoFrame:
    """An NV12 frame (what the GPU's decoder hands out, ``vidcorpus/nvdec.py``) as yuv420p: the same
    planes rearranged, losslessly, so that scaling, RGB and encoding then take the software decoder's
    path (swscale's NV12 input path gives RGB a few levels apart). A frame left in GPU memory
    (``nvdec.GPU_FRAMES``) is copied to the host first by the same call (PyAV's reformatter:
    FFmpeg's ``av_hwframe_transfer_data``, with every property of the frame, interlacing and colour
    tags among them). Any other frame as it is."""
    if frame.format.name not in ("nv12", "cuda"):
        return frame
    return reformatter("planar").reformat(frame, format="yuv420p", threads=1)


def to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a decoded frame; the same pixels as ``frame.to_ndarray(format="rgb24")``
    (an NV12 frame: those of the yuv420p frame with its planes, ``planar``)."""
    return reformatter().reformat(planar(frame), format="rgb24", threads=1).to_ndarray()


FrameConverter = Callable[[av.VideoFrame], np.ndarray]


def skip_setting(frame: int | None, wanted: Container[int]) -> str:
    """FFmpeg's ``skip_frame`` for the packet that holds frame ``frame`` (None: not known), set on the
    codec context before the packet goes in: a wanted or unknown frame is decoded; any other is left
    out when no frame refers to it ("NONREF": reference frames are always decoded, so the frames that
    are decoded have exactly the pixels of a full decode). Frame threads take it per packet."""
    return "DEFAULT" if frame is None or frame in wanted else "NONREF"


def decode_in_order(container, stream, wanted: Iterable[int], convert: FrameConverter = to_rgb):
    """Yield (index, convert(frame)) for the wanted indices, decoding every frame up to the last one
    and counting frames in decode order; only the wanted frames are converted. The caller opens the
    container (threading is its choice) and handles FFmpeg errors (it keeps what was yielded)."""
    want = set(wanted)
    if not want:
        return
    last = max(want)
    for i, frame in enumerate(container.decode(stream)):
        if i in want:
            yield i, convert(frame)
        if i >= last:
            return


def decode_frames_seeking(data: bytes, wanted: list[int],
                          convert: FrameConverter = to_rgb) -> dict[int, np.ndarray] | None:
    """{index: convert(frame)} (RGB by default) for the wanted frame indices, or None if timestamps
    cannot index frames."""
    want = sorted(set(wanted))
    if not want:
        return {}
    try:
        with open_video(data) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or 0)
            if not fps or stream.time_base is None:
                return None
            tb, t0 = float(stream.time_base), stream.start_time or 0

            def index(pts: int) -> int:
                return round((pts - t0) * tb * fps)

            packets = [p for p in container.demux(stream) if p.size]
            if any(p.pts is None for p in packets):
                return None
            keys = [i for i, p in enumerate(packets) if p.is_keyframe]
            if not keys or keys[0] != 0:
                return None
            key_frame_index = [index(packets[i].pts) for i in keys]
            cc = stream.codec_context
            cc.thread_count = 1
            got: dict[int, np.ndarray] = {}
            pos = None  # next packet the decoder would read
            for w in want:
                if w in got:
                    continue
                k = bisect.bisect_right(key_frame_index, w) - 1
                start = keys[max(k, 0)]
                if pos is None or start > pos or pos > len(packets):  # jump ahead to the keyframe
                    cc.flush_buffers()
                    pos = start
                while w not in got and pos <= len(packets):
                    packet = packets[pos] if pos < len(packets) else None  # None flushes at the end
                    if packet is not None:
                        cc.skip_frame = skip_setting(index(packet.pts), want)
                    frames = list(cc.decode(packet))
                    if packet is not None and packet.is_keyframe and index(packet.pts) == w:
                        # The wanted frame is this keyframe: drain the decoder instead of feeding it
                        # the following reference frames that B-frame reordering would wait for.
                        frames += cc.decode(None)
                        pos = len(packets)  # drained: a later wanted frame restarts from a keyframe
                    for frame in frames:
                        if frame.pts is None:
                            return None
                        i = index(frame.pts)
                        if i in want and i not in got:
                            got[i] = convert(frame)
                    pos += 1
                if w not in got:
                    return None  # the timestamps did not lead to this frame
            return got
    except av.error.FFmpegError:
        return None


class KeyframeDecoder:
    """One long-lived H.264 decoder for clips whose wanted frames are all keyframes (what precise
    extraction writes), optionally on the GPU's video decoder (``hwaccel="cuda"``: NVDEC through
    FFmpeg; the frames come back to system memory for conversion).

    Each wanted keyframe is decoded alone (flush, the packet with the clip's SPS/PPS in front via
    ``h264_mp4toannexb``, drain), so no other frame is decoded and no decoder is opened per clip.
    ``decode`` returns None whenever this does not apply (another codec, a wanted frame that is not
    a keyframe, timestamps that do not index frames, a decoding error) and the caller falls back to
    ``decode_frames_seeking``. Not thread-safe: one per process or thread.

    In software its frames equal ``decode_frames_seeking``'s (tested). With NVDEC on the H100 they
    did not (max abs RGB difference 132 over 32 clips, cause not found), so the CLIP stage leaves
    it off (docs/benchmarks.md).
    """

    def __init__(self, hwaccel: str | None = None):
        self.hwaccel = hwaccel
        hw = HWAccel(hwaccel, allow_software_fallback=False) if hwaccel else None
        self.cc = av.CodecContext.create("h264", "r", hwaccel=hw)
        if not hwaccel:
            self.cc.thread_count = 1
        self.clips = self.fallbacks = 0

    def decode(self, data: bytes, wanted: list[int], convert: FrameConverter = to_rgb) -> dict[int, np.ndarray] | None:
        want = sorted(set(wanted))
        if not want:
            return {}
        try:
            with open_video(data) as container:
                stream = container.streams.video[0]
                if stream.codec_context.name != "h264":
                    return self._fallback()
                fps = float(stream.average_rate or 0)
                if not fps or stream.time_base is None:
                    return self._fallback()
                tb, t0 = float(stream.time_base), stream.start_time or 0
                keys: dict[int, av.Packet] = {}
                for p in container.demux(stream):
                    if p.size and p.is_keyframe and p.pts is not None:
                        keys.setdefault(round((p.pts - t0) * tb * fps), p)
                if not all(w in keys for w in want):
                    return self._fallback()
                bsf = BitStreamFilterContext("h264_mp4toannexb", in_stream=stream)
                got: dict[int, np.ndarray] = {}
                for w in want:
                    self.cc.flush_buffers()
                    frames = []
                    for p in bsf.filter(keys[w]):
                        frames += self.cc.decode(p)
                    frames += self.cc.decode(None)
                    if len(frames) != 1:
                        return self._fallback()
                    got[w] = convert(frames[0])
                self.clips += 1
                return got
        except (av.error.FFmpegError, ValueError, RuntimeError):
            self.cc.flush_buffers()
            return self._fallback()

    def _fallback(self) -> None:
        self.fallbacks += 1
        return None
