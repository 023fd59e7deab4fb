"""Probe staged media with PyAV (videos) and Pillow (images).

Records container, codec, size, frame rate, duration, frame count, bitrate, audio and rotation.
Refuses what later stages cannot or should not decode: streams without a decoder in this FFmpeg
(``unsupported_codec``), absurd sizes and decompression bombs (``too_large``), unreadable files
(``decode_error``). ``rotation`` is the clockwise turn (0, 90, 180, 270) the stored pixels need to be
displayed upright: from the video's display matrix (or the legacy ``rotate`` tag), or the image's
EXIF orientation. Image sizes are recorded as displayed (EXIF applied), video sizes as coded.
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import av
import fsspec
from PIL import Image

from vidcorpus.errors import DecodeError
from vidcorpus.media import stream_timing
from vidcorpus.stage import Resources, Stage

MAX_PIXELS = 8192 * 8192  # default of ingest.max_pixels
# EXIF orientation -> clockwise degrees to display (mirrored variants map to their rotation part)
EXIF_ROTATION = {1: 0, 2: 0, 3: 180, 4: 180, 5: 270, 6: 90, 7: 90, 8: 270}
EXIF_ORIENTATION_TAG = 0x0112


def stream_decoder_error(stream) -> DecodeError | None:
    """``unsupported_codec`` when FFmpeg here has no decoder for the stream, else None.

    PyAV leaves ``codec_context`` empty for a stream whose codec FFmpeg knows no decoder for
    (a container can name any codec; this build lacks e.g. EVC, JPEG XL and LCEVC decoders).
    """
    if stream.codec_context is None:
        return DecodeError(f"stream {stream.index} ({stream.type}) has a codec this FFmpeg cannot decode",
                           "unsupported_codec")
    return None


def _clockwise(rotation_ccw: float | int | None) -> int:
    if not rotation_ccw:
        return 0
    return int(round(-float(rotation_ccw) / 90.0) * 90) % 360


MAX_DURATION_S = 4 * 3600.0  # default of ingest.max_duration_s


def probe_video_file(fileobj, max_pixels: int = MAX_PIXELS, max_duration_s: float = MAX_DURATION_S) -> dict:
    """Header facts of a video plus its first frame decoded (proves a decoder exists and works)."""
    try:
        container = av.open(fileobj)
    except av.error.FFmpegError as e:
        raise DecodeError(f"cannot open video: {e}") from e
    with container as c:
        if not c.streams.video:
            raise DecodeError("no video stream", "not_media")
        s = c.streams.video[0]
        if (problem := stream_decoder_error(s)) is not None:
            raise problem
        cc = s.codec_context
        width, height = cc.width, cc.height
        if not width or not height:
            raise DecodeError("video stream without a size")
        if width * height > max_pixels:
            raise DecodeError(f"declared size {width}x{height} is more than {max_pixels} pixels", "too_large")
        fps, duration, n_frames = stream_timing(c, s)
        if duration and duration > max_duration_s:
            raise DecodeError(f"declared duration {duration:.0f} s is more than ingest.max_duration_s "
                              f"({max_duration_s:.0f} s)", "too_long")
        audio = c.streams.audio[0] if c.streams.audio else None
        rotation = 0
        try:
            frame = next(c.decode(s), None)
        except av.error.DecoderNotFoundError as e:
            raise DecodeError(f"no decoder: {e}", "unsupported_codec") from e
        except av.error.FFmpegError as e:
            raise DecodeError(f"first frame does not decode: {e}") from e
        if frame is None:
            raise DecodeError("video stream has no decodable frame")
        rotation = _clockwise(getattr(frame, "rotation", 0))
        if not rotation and s.metadata.get("rotate"):
            try:
                rotation = int(float(s.metadata["rotate"])) % 360
            except ValueError:
                rotation = 0
        bitrate = c.bit_rate or cc.bit_rate or None
        if not bitrate and duration and getattr(fileobj, "size", None):
            bitrate = int(fileobj.size * 8 / duration)
        return {
            "container": c.format.name,
            "codec": cc.name,
            "width": width,
            "height": height,
            "fps": fps,
            "n_frames": n_frames,
            "duration_s": duration,
            "bitrate": int(bitrate) if bitrate else None,
            "has_audio": audio is not None,
            "audio_codec": (audio.codec_context.name if audio is not None and audio.codec_context is not None
                            else None),
            "rotation": rotation,
        }


def probe_image_file(fileobj, max_pixels: int = MAX_PIXELS) -> dict:
    """Format and displayed size (EXIF orientation applied) of an image; bombs refused unread."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fileobj)
        w, h = img.size
        if w * h > max_pixels:
            raise DecodeError(f"image of {w}x{h} pixels is more than {max_pixels}", "too_large")
        orientation = img.getexif().get(EXIF_ORIENTATION_TAG, 1)
        rotation = EXIF_ROTATION.get(orientation, 0)
        if orientation in (5, 6, 7, 8):
            w, h = h, w
        fmt = (img.format or "").lower()
        fileobj.seek(0)  # verify() must come straight after open(); reading EXIF may have read chunks
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.open(fileobj).verify()
    except DecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise DecodeError(f"decompression bomb: {e}", "too_large") from e
    except Exception as e:  # noqa: BLE001 - Pillow raises many kinds
        raise DecodeError(f"cannot read image: {e}") from e
    return {"container": fmt, "codec": fmt, "width": w, "height": h, "fps": None, "n_frames": 1,
            "duration_s": 0.0, "bitrate": None, "has_audio": False, "audio_codec": None, "rotation": rotation}


class ProbeStage(Stage):
    name: ClassVar[str] = "probe"
    resources: ClassVar[Resources] = Resources(cpus=0.25)
    whole_blocks: ClassVar[bool] = True  # one task per source block (pipeline.build_dataset sizes them)

    def process_row(self, row: dict) -> dict:
        max_pixels = self.config.ingest.max_pixels
        with fsspec.open(row["source_path"], "rb") as f:
            if row["media_type"] == "image":
                info = probe_image_file(f, max_pixels)
            else:
                info = probe_video_file(f, max_pixels, self.config.ingest.max_duration_s)
        return dict(row, **info)
