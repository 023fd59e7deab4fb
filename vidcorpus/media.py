"""Reading and writing frames with PyAV (video) and Pillow (images), shared by every stage."""

from __future__ import annotations

import io
from fractions import Fraction
from typing import Iterable, Sequence

import av
from av.video.frame import PictureType
import fsspec
import numpy as np
from PIL import Image, ImageOps

from vidcorpus.errors import DecodeError
from vidcorpus.frame_seek import decode_in_order, reformatter, to_rgb

# Quiet FFmpeg's own terminal logging (encoder statistics, decoder chatter). Do NOT route its logs
# through Python (av.logging.set_level): with threaded decoding, a decoder thread inside the Python
# log callback waits for the GIL while the main thread holds it waiting for that thread (deadlock).
av.logging.set_level(None)
av.logging.set_libav_level(av.logging.ERROR)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
# Containers a folder input picks up: each has a signature ``sniff_media_type`` knows (or ISO/Matroska).
VIDEO_EXTS = {".mp4", ".m4v", ".mov", ".qt", ".3gp", ".3g2", ".f4v", ".webm", ".mkv", ".avi", ".divx",
              ".ts", ".mts", ".m2ts", ".m2t", ".mpg", ".mpeg", ".m1v", ".m2v", ".vob", ".mxf", ".wmv",
              ".asf", ".flv", ".ogv"}
SNIFF_BYTES = 400  # head bytes kept for sniffing: MPEG-TS is recognised by its sync byte repeating


def open_local_or_remote(url: str, mode: str = "rb"):
    return fsspec.open(url, mode).open()


def encode_video(
    frames: Iterable[np.ndarray],
    fps: float,
    out: str | io.BytesIO,
    codec: str = "libx264",
    crf: int = 20,
    container_format: str | None = None,
    keyframes: Iterable[int] | None = None,
) -> None:
    """Encode RGB uint8 frames (H, W, 3) to a video file or buffer; ``keyframes``: frame indices
    forced to be keyframes (H.264/H.265 IDR), as precise extraction places them for the scorers."""
    it = iter(frames)
    first = next(it)
    h, w = first.shape[:2]
    if h % 2 or w % 2:
        raise ValueError(f"frame size {w}x{h} must be even for yuv420p")
    fmt = container_format or ("mp4" if isinstance(out, io.BytesIO) else None)
    with av.open(out, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        if codec in ("libx264", "libx265"):
            # mbtree=0: with x264's macroblock tree the same frames encoded twice in one process can
            # give different bytes (short videos: fewer frames than the lookahead), and a seeded
            # sample or a rerun must be reproducible byte for byte (see ingest/extract.py).
            stream.options = {"crf": str(crf), "preset": "veryfast", "x264-params": "mbtree=0",
                              **({"forced-idr": "1"} if keyframes else {})}
        elif codec == "libvpx-vp9" or codec == "libvpx":
            stream.options = {"crf": str(crf + 10), "b:v": "0", "deadline": "realtime", "cpu-used": "8"}

        keys = set(keyframes or ())
        count = [0]

        def put(arr: np.ndarray) -> None:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            if keys:
                frame.pict_type = PictureType.I if count[0] in keys else PictureType.NONE
            count[0] += 1
            for packet in stream.encode(frame):
                container.mux(packet)

        put(first)
        for arr in it:
            put(arr)
        for packet in stream.encode():
            container.mux(packet)


def stream_timing(container, stream) -> tuple[float | None, float | None, int | None]:
    """(fps, duration in seconds, frame count) of a video stream, from the headers alone."""
    fps = float(stream.average_rate or stream.guessed_rate or 0) or None
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    n_frames = stream.frames or (round(duration * fps) if duration and fps else None)
    return fps, duration, n_frames


def probe_video(fileobj_or_path) -> dict:
    """Container-level metadata of a video; decodes nothing but the header."""
    try:
        with av.open(fileobj_or_path) as c:
            if not c.streams.video:
                raise DecodeError("no video stream", "not_media")
            s = c.streams.video[0]
            fps, duration, n_frames = stream_timing(c, s)
            return {
                "container": c.format.name,
                "codec": s.codec_context.name,
                "width": s.codec_context.width,
                "height": s.codec_context.height,
                "fps": fps,
                "n_frames": n_frames,
                "duration_s": duration,
            }
    except av.error.FFmpegError as e:
        raise DecodeError(f"cannot open video: {e}") from e



# -- rotation (phone footage): the stored pixels turned upright ---------------------------------------

def clockwise_rotation(frame: av.VideoFrame) -> int:
    """Clockwise degrees (0, 90, 180, 270) a decoded frame's pixels need to be displayed upright,
    from its display matrix (PyAV's ``frame.rotation`` is counter-clockwise; FFmpeg turns a legacy
    ``rotate`` tag into the same matrix). The probe records the same value as ``rotation``."""
    ccw = getattr(frame, "rotation", 0) or 0
    return int(round(-float(ccw) / 90.0) * 90) % 360


def upright(arr: np.ndarray, clockwise: int) -> np.ndarray:
    """An (H, W, ...) frame turned ``clockwise`` degrees (a multiple of 90)."""
    k = (clockwise // 90) % 4
    return np.ascontiguousarray(np.rot90(arr, k=-k)) if k else arr


def displayed_size(width: int, height: int, clockwise: int) -> tuple[int, int]:
    """(width, height) of stored pixels once turned upright."""
    return (height, width) if clockwise % 180 == 90 else (width, height)


DETECT_WIDTH = 256  # scenedetect's own automatic target width


def detection_size(width: int, height: int, downscale: int) -> tuple[int, int]:
    """(w, h) the shot detectors see (``ingest/split.py``; TransNetV2's frames are shrunk from the
    default one): 1/downscale of the frame, or about DETECT_WIDTH wide when 0."""
    factor = downscale if downscale > 0 else max(1.0, width / DETECT_WIDTH)
    return max(2, round(width / factor)), max(2, round(height / factor))


def detection_frame(frame: av.VideoFrame, width: int, height: int, clockwise: int) -> np.ndarray:
    """The shot detectors' upright BGR frame of ``width`` x ``height`` (``detection_size``), area-averaged
    by FFmpeg: one definition for the per-frame reader, the batched one and TransNetV2's input."""
    return upright_array(frame, width, height, format="bgr24", interpolation="AREA", clockwise=clockwise)


def to_rgb_upright(frame: av.VideoFrame) -> np.ndarray:
    """``frame_seek.to_rgb`` turned upright when the frame carries a display matrix (phone footage);
    the very same array otherwise (clips vidcorpus extracts carry none)."""
    return upright(to_rgb(frame), clockwise_rotation(frame))


def upright_array(frame: av.VideoFrame, width: int | None = None, height: int | None = None,
                  format: str = "rgb24", interpolation: str | None = None,
                  clockwise: int | None = None) -> np.ndarray:
    """The frame as displayed (``clockwise``, default its own rotation, applied), scaled by FFmpeg to
    ``width`` x ``height`` as displayed when given (the scaler makes the transposed size first)."""
    cw = clockwise_rotation(frame) if clockwise is None else clockwise
    kwargs: dict = {}
    if width and height:
        kwargs["width"], kwargs["height"] = displayed_size(width, height, cw)
    if interpolation:
        kwargs["interpolation"] = interpolation
    # The same pixels as frame.to_ndarray(...), through a cached single-threaded scaler: to_ndarray
    # builds a scaler with a thread per CPU for every frame (a 720p frame to the detection and
    # TransNetV2 sizes: 1.64 ms of CPU against 0.57; bench/bench_frame_scaling.py).
    rf = reformatter(f"{format}:{kwargs.get('width')}x{kwargs.get('height')}:{interpolation}")
    return upright(rf.reformat(frame, format=format, threads=1, **kwargs).to_ndarray(), cw)


def upright_frame(frame: av.VideoFrame) -> av.VideoFrame:
    """A frame whose pixels are turned upright (no display matrix on it); the frame itself when it has
    none. For encoders: a clip made from phone footage must not rely on a player honouring a matrix."""
    cw = clockwise_rotation(frame)
    if not cw:
        return frame
    out = av.VideoFrame.from_ndarray(upright_array(frame, clockwise=cw), format="rgb24")
    out.pts, out.time_base = frame.pts, frame.time_base
    return out


def decode_indices(src, indices) -> dict[int, np.ndarray]:
    """RGB arrays of the wanted frame indices of a video (a path, URL or open file), decoding
    sequentially up to the last one and converting only those, upright (a display matrix applied).
    Missing indices are left out: containers can announce more frames than they deliver."""
    want = set(indices)
    if not want:
        return {}
    if isinstance(src, str):
        with fsspec.open(src, "rb") as f:
            return decode_indices(f, indices)

    got: dict[int, np.ndarray] = {}
    try:
        with av.open(src) as c:
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"
            for i, arr in decode_in_order(c, stream, want, to_rgb_upright):
                got[i] = arr
    except av.error.FFmpegError as e:
        raise DecodeError(f"decode failed: {e}") from e
    return got


def read_frames(path: str, indices: Sequence[int] | None = None, n: int | None = None,
                fps: float | None = None) -> np.ndarray:
    """Frames of a clip (video or image) as (N, H, W, 3) uint8.

    ``indices`` picks frames by index; ``n`` picks n frames uniformly (first and last included);
    neither reads them all. ``fps``: frames at about that rate instead, at most ``n`` of them
    (``fps_indices``). An image is a one-frame clip.
    """
    lower = path.lower()
    if any(lower.endswith(ext) for ext in IMAGE_EXTS):
        with fsspec.open(path, "rb") as f:
            img = load_image_rgb(f)
        count = len(indices) if indices is not None else (n or 1)
        return np.stack([img] * count)
    with fsspec.open(path, "rb") as f:
        if indices is None:
            total = probe_video(f)["n_frames"] or 0
            f.seek(0)
            if fps:
                f.seek(0)
                native = probe_video(f)["fps"] or fps
                f.seek(0)
                wanted = fps_indices(total, native, fps, n)
            elif n is None:
                wanted = list(range(total))
            else:
                wanted = uniform_indices(total, n)
        else:
            wanted = list(indices)
        if not wanted:
            raise DecodeError("clip has no frames")
        got = decode_indices(f, wanted)
    if not got:
        raise DecodeError("no frame could be decoded")
    last = got[max(got)]
    # Containers can report one frame more than decodes; repeat the last decoded frame then.
    return np.stack([got.get(i, last) for i in wanted])


def is_image(row: dict) -> bool:
    """A pipeline row of an image (its media type, else its clip file's extension)."""
    if row.get("media_type") == "image":
        return True
    path = (row.get("clip_path") or "").lower()
    return any(path.endswith(ext) for ext in IMAGE_EXTS)


def load_image_rgb(fileobj, max_pixels: int | None = None) -> np.ndarray:
    """An image as displayed: EXIF orientation applied, RGB uint8 (H, W, 3).

    Refuses images above ``max_pixels`` (and Pillow's own decompression-bomb limit) before
    decoding them: ``DecodeError`` with class ``too_large``.
    """
    try:
        img = Image.open(fileobj)
    except Image.DecompressionBombError as e:
        raise DecodeError(f"decompression bomb: {e}", "too_large") from e
    if max_pixels and img.size[0] * img.size[1] > max_pixels:
        raise DecodeError(f"image of {img.size[0]}x{img.size[1]} pixels is more than {max_pixels}", "too_large")
    return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))


def uniform_indices(total: int, n: int) -> list[int]:
    if total <= 0:
        return []
    if n <= 1:
        return [total // 2]
    return [round(i * (total - 1) / (n - 1)) for i in range(n)]


def fps_indices(total: int, native_fps: float, fps: float, max_frames: int | None = None) -> list[int]:
    """Indices sampling a clip of ``total`` frames at ``native_fps`` at about ``fps``, centred in
    each sampling interval; at most ``max_frames`` (then spread uniformly), at least one."""
    if total <= 0:
        return []
    count = max(1, int(total / native_fps * fps)) if native_fps > 0 and fps > 0 else 1
    if max_frames and count > max_frames:
        return uniform_indices(total, max_frames)
    step = total / count
    return [min(total - 1, int(step * (i + 0.5))) for i in range(count)]


def save_jpeg(arr: np.ndarray, url: str, quality: int = 90) -> int:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    data = buf.getvalue()
    with fsspec.open(url, "wb") as f:
        f.write(data)
    return len(data)


def _mpeg_ts(head: bytes, first: int, stride: int) -> bool:
    """MPEG transport stream packets: the sync byte 0x47 at ``first`` and every ``stride`` bytes after."""
    positions = range(first, len(head), stride)
    return len(positions) >= 2 and all(head[i] == 0x47 for i in positions)


def sniff_media_type(head: bytes) -> tuple[str, str] | None:
    """(media_type, extension) from magic bytes (the first ``SNIFF_BYTES``), or None when the bytes are
    not media we take."""
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return "video", ".mp4"
    if len(head) >= 8 and head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"):
        return "video", ".mov"  # QuickTime without a file-type box
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video", ".webm"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "video", ".avi"
    if _mpeg_ts(head, 0, 188):
        return "video", ".ts"
    if _mpeg_ts(head, 4, 192):  # M2TS: a 4-byte timecode before each packet
        return "video", ".m2ts"
    if head.startswith(b"\x00\x00\x01\xba"):  # MPEG program stream (.mpg, .vob)
        return "video", ".mpg"
    if head.startswith(b"\x00\x00\x01\xb3"):  # MPEG-1/2 video elementary stream
        return "video", ".m2v"
    if head.startswith(b"\x06\x0e\x2b\x34"):  # MXF (SMPTE universal label)
        return "video", ".mxf"
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):  # ASF (.wmv)
        return "video", ".wmv"
    if head.startswith(b"FLV\x01"):
        return "video", ".flv"
    if head.startswith(b"OggS"):
        return "video", ".ogv"
    if head.startswith(b"\xff\xd8\xff"):
        return "image", ".jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image", ".png"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image", ".webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image", ".gif"
    return None
