"""The K frames the CLIP scorer embeds per clip: from the clip's stills file, the clip's bytes or
its source, and squared or scaled to the model's input.

Kept apart from the stage (``filters/clip_scores.py``) because the decode worker processes
(``filters/frame_decoder.py``) and the other frame-model scorers (text overlay, NSFW) read frames
the same way and must not import the CLIP models to do so.
"""

from __future__ import annotations

import hashlib
import io

import av
import cv2
import numpy as np

from vidcorpus.errors import DecodeError
from vidcorpus.filters.scorers import clip_fps
from vidcorpus.filters.source_scoring import from_source
from vidcorpus.frame_seek import (FrameConverter, KeyframeDecoder, decode_frames_seeking, decode_in_order, open_video,
                                  reformatter, to_rgb)
from vidcorpus.media import is_image, load_image_rgb, probe_video, uniform_indices
from vidcorpus.source_frames import clip_geometry, source_content_id, stream_clip_frames
from vidcorpus.stills import decode_stills
from vidcorpus.storage import read_bytes

def decode_wanted(data: bytes, wanted: list[int], convert: FrameConverter = to_rgb,
                  keyframes: KeyframeDecoder | None = None) -> dict[int, np.ndarray]:
    """RGB frames (``convert(frame)``) of the wanted indices of a video held in memory.

    First from the nearest keyframes (``vidcorpus.frame_seek``): clips extracted by vidcorpus carry
    keyframes at exactly these frames, so this decodes about K frames. Otherwise:

    Fast path: frames are indexed by presentation time (constant frame rate), and the decoder skips
    non-reference frames (FFmpeg's skip_frame=NONREF) except the wanted ones; reference frames are
    always decoded, so every wanted frame is exact. It decodes about half the frames of a typical
    H.264 clip with B-frames. If timestamps do not map onto the wanted indices (variable frame
    rate, missing pts), the clip is decoded again sequentially, counting frames.
    One thread per clip: the stage parallelises across clips in processes.
    """
    got = keyframes.decode(data, wanted, convert) if keyframes is not None else None  # e.g. NVDEC
    if got is None:
        got = decode_frames_seeking(data, wanted, convert)  # K decodes when keyframes sit at the sampled frames
    if got is None:
        got = _decode_by_pts(data, wanted, convert)
    if got is None:
        got = _decode_sequential(data, wanted, convert)
    return got


def _open(data: bytes):
    c = open_video(data)
    stream = c.streams.video[0]
    stream.thread_type = "SLICE"
    stream.codec_context.thread_count = 1
    return c, stream


def _decode_by_pts(data: bytes, wanted: list[int], convert: FrameConverter = to_rgb) -> dict[int, np.ndarray] | None:
    want = set(wanted)
    got: dict[int, np.ndarray] = {}
    seen_max = -1
    try:
        c, stream = _open(data)
        with c:
            cc = stream.codec_context
            fps = float(stream.average_rate or 0)
            if not fps or stream.time_base is None:
                return None
            tb = float(stream.time_base)
            t0 = stream.start_time or 0

            def index(pts: int) -> int:
                return round((pts - t0) * tb * fps)

            for packet in c.demux(stream):
                if packet.pts is not None:
                    cc.skip_frame = "DEFAULT" if index(packet.pts) in want else "NONREF"
                for frame in cc.decode(packet):
                    if frame.pts is None:
                        return None
                    i = index(frame.pts)
                    seen_max = max(seen_max, i)
                    if i in want and i not in got:
                        got[i] = convert(frame)
                if len(got) == len(want):
                    break
    except av.error.FFmpegError:
        return None  # the sequential decoder gives the error (or the frames before it)
    if any(w <= seen_max and w not in got for w in want):
        return None  # timestamps do not index frames one by one
    return got


def _decode_sequential(data: bytes, wanted: list[int], convert: FrameConverter = to_rgb) -> dict[int, np.ndarray]:
    """Every frame up to the last wanted one, counted in decode order; only the wanted converted."""
    got: dict[int, np.ndarray] = {}
    try:
        c, stream = _open(data)
        with c:
            for i, arr in decode_in_order(c, stream, wanted, convert):
                got[i] = arr
    except av.error.FFmpegError as e:
        if not got:
            raise DecodeError(f"decode failed: {e}") from e
    return got


def read_clip(row: dict) -> tuple[bytes | None, str]:
    """The clip file's bytes and their sha256 (one read; hashing costs ~0.05 ms for a 2 s clip).
    A video clip not extracted yet (filter before you encode) has no bytes: (None, a content id of
    its source and frame range); its frames come from the source (``clip_frame_list``)."""
    if from_source(row):
        return None, source_content_id(row)
    path = row.get("clip_path")
    if not path:
        raise DecodeError("row has no clip_path")
    data = read_bytes(path)
    return data, hashlib.sha256(data).hexdigest()


def clip_frame_list(row: dict, data: bytes | None, k: int, convert: FrameConverter = to_rgb,
                    keyframes: KeyframeDecoder | None = None) -> list[np.ndarray]:
    """The K frames of a clip held in memory, each ``convert(frame)``; an image is one frame (its RGB
    array goes through ``convert`` as an RGB VideoFrame). ``data`` None: a clip not extracted yet,
    whose frames are decoded from its source over its frame range (vidcorpus/source_frames.py).

    Video frames are first, middle and last for K=3 (uniform with ends for other K). Frame counts
    come from the row when extraction recorded them, else from the header.
    """
    if data is None:
        return _source_frame_list(row, k, convert)
    if is_image(row):
        rgb = load_image_rgb(io.BytesIO(data))
        if convert is to_rgb:
            return [rgb]

        return [convert(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24"))]
    path = row.get("clip_path")
    _fps, n = clip_fps(row, path) if (row.get("clip_frames") or row.get("last_frame") is not None) else (0.0, 0)
    if not n:
        n = probe_video(io.BytesIO(data))["n_frames"] or 0
    wanted = uniform_indices(n, k)
    if not wanted:
        raise DecodeError("clip has no frames")
    got = decode_wanted(data, wanted, convert, keyframes)
    if not got:
        raise DecodeError("no frame could be decoded")
    last = got[max(got)]  # containers can announce a frame more than they deliver
    return [got.get(i, last) for i in wanted]


def _source_frame_list(row: dict, k: int, convert: FrameConverter) -> list[np.ndarray]:
    """The K sampled frames of an unextracted clip, from one decode of its source."""
    wanted = uniform_indices(clip_geometry(row).frames, k)
    if not wanted:
        raise DecodeError("clip has no frames")
    ((_row, got),) = list(stream_clip_frames([row], {row["clip_id"]: wanted}))
    if not got:
        raise DecodeError("no frame could be decoded")
    last = got[max(got)]
    frames = [got.get(i, last) for i in wanted]
    if convert is to_rgb:
        return frames

    return [convert(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")) for f in frames]


def load_stills(row: dict, k: int) -> list[np.ndarray] | None:
    """The K sampled frames from the clip's stills file (vidcorpus/stills.py), or None when the row
    has none or the file is missing or broken: the caller then decodes the clip itself (the clip is
    the truth, the stills a cache of its sampled frames; both give the same frame positions)."""
    path = row.get("stills_path")
    if not path or is_image(row):
        return None
    w, h = row.get("clip_width"), row.get("clip_height")
    try:
        data = read_bytes(path)
        return decode_stills(data, k, w / h if w and h else None)
    except (OSError, DecodeError):
        return None


def scoring_frames(row: dict, data: bytes, k: int, convert: FrameConverter = to_rgb,
                   keyframes: KeyframeDecoder | None = None) -> tuple[list[np.ndarray], str]:
    """(the K frames the scorer embeds, where they came from: "stills" or "clip"). From the stills
    when the row has a readable stills file, else decoded from the clip's bytes ``data``."""
    stills = load_stills(row, k)
    if stills is None:
        return clip_frame_list(row, data, k, convert, keyframes), "clip"
    if convert is not to_rgb:
        stills = [convert(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")) for f in stills]
    return stills, "stills"


MAX_SIDE = 512  # center squares larger than this are shrunk (area filter) in the worker before shipping


def square_frame(frame: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """The center square of one (H, W, 3) frame (a view when no shrinking is needed), at most max_side."""
    h, w = frame.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    sq = frame[top:top + side, left:left + side]
    if side > max_side:
        sq = cv2.resize(np.ascontiguousarray(sq), (max_side, max_side), interpolation=cv2.INTER_AREA)
    return sq


class ScaleToModel:
    """The model's eval resize and center crop done by FFmpeg's scaler while converting to RGB, so
    a frame leaves the decoder at the model's input size (the device then only normalises).

    Follows open_clip's eval transform as the model's preprocess config gives it: resize_mode
    'shortest' (short side to `size`, long side int(size * long / short), then center crop) or
    'squash' (both sides to `size`); interpolation 'bicubic' or 'bilinear' (swscale's filters, which
    widen when shrinking, like Pillow's). Not bit-identical to torchvision/Pillow resampling:
    tests bound the difference.
    """

    def __init__(self, size: int, interpolation: str = "bicubic", resize_mode: str = "shortest"):
        if resize_mode not in ("shortest", "squash"):
            raise ValueError(f"resize_mode {resize_mode!r} is not supported by the decoder's scaler")
        if interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"interpolation {interpolation!r} is not supported by the decoder's scaler")
        if isinstance(size, (tuple, list)):
            if len(set(size)) != 1:
                raise ValueError(f"image size {tuple(size)} is not square; the decoder's scaler makes squares")
            size = size[0]
        self.size, self.interpolation, self.resize_mode = int(size), interpolation.upper(), resize_mode

    def out_size(self, w: int, h: int) -> tuple[int, int]:
        s = self.size
        if self.resize_mode == "squash":
            return s, s
        if w <= h:
            return s, int(s * h / w)
        return int(s * w / h), s

    def __call__(self, frame) -> np.ndarray:
        ow, oh = self.out_size(frame.width, frame.height)
        arr = reformatter("clip_input").reformat(frame, ow, oh, "rgb24", interpolation=self.interpolation,
                                     threads=1).to_ndarray()
        s = self.size
        top, left = int(round((oh - s) / 2.0)), int(round((ow - s) / 2.0))
        return arr[top:top + s, left:left + s]
