"""Stills: the K frames a clip's model scorers sample, written once by precise extraction.

Precise extraction decodes every frame of a shot and re-encodes it, so it already holds the frames
the CLIP scorer samples (``uniform_indices(clip_frames, filters.frames_per_clip)``: first, middle,
last for K = 3). It writes them as one JPEG next to the clip (``<clip_id>.stills.jpg``, the row's
``stills_path``): the K frames stacked top to bottom, each the clip frame as given to the encoder,
shrunk (area filter) so its short side is ``filters.still_size`` (never enlarged). The scorer then
decodes one small JPEG instead of K H.264 frames (docs/benchmarks.md).

Format, measured on 3 x 455x256 frames (dev machine, one core): JPEG quality 95 without chroma
subsampling (4:4:4) decodes in 1.0 to 3.4 ms with a mean absolute error of 0.5 to 2.7 (max 3 to
22) against the frames; PNG is lossless but decodes in 2.8 to 6.6 ms and encodes in 8 to 15 ms;
lossless WebP encodes in 100 to 160 ms; a raw uint8 array is 1 MiB per clip. The stills are taken
before H.264 encoding, so they differ from the clip's decoded frames by the clip's own coding error
plus the JPEG's (tests bound both, and the scores).
"""

from __future__ import annotations

import cv2
import numpy as np

from vidcorpus.errors import DecodeError

JPEG_QUALITY = 95


def encode_stills(frames_rgb: list[np.ndarray]) -> bytes:
    """One JPEG (quality 95, 4:4:4) of equally sized RGB frames stacked top to bottom."""
    shapes = {f.shape for f in frames_rgb}
    if len(shapes) != 1:
        raise ValueError(f"stills must share one size, got {sorted(shapes)}")
    tall = np.concatenate(frames_rgb, axis=0)[:, :, ::-1]  # RGB -> BGR for OpenCV
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    if hasattr(cv2, "IMWRITE_JPEG_SAMPLING_FACTOR_444"):
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(tall), params)
    if not ok:
        raise ValueError("JPEG encoding of stills failed")
    return buf.tobytes()


def decode_stills(data: bytes, k: int, aspect: float | None = None) -> list[np.ndarray]:
    """The K RGB frames of a stills file; DecodeError when the bytes are not K stacked frames
    (unreadable, a height not divisible by K, or, when ``aspect`` (width / height of the clip) is
    given, frames whose shape does not match it within 5%)."""
    flag = getattr(cv2, "IMREAD_COLOR_RGB", None)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flag if flag is not None else cv2.IMREAD_COLOR)
    if img is None:
        raise DecodeError("stills file does not decode")
    if flag is None:
        img = img[:, :, ::-1]
    total, w = img.shape[:2]
    if k <= 0 or total % k:
        raise DecodeError(f"stills file of height {total} does not hold {k} frames")
    h = total // k
    if aspect and abs((w / h) / aspect - 1) > 0.05:
        raise DecodeError(f"stills of {w}x{h} do not match the clip's aspect {aspect:.3f}")
    return [img[i * h:(i + 1) * h] for i in range(k)]


def still_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) of a still: the short side shrunk to ``short_side`` (never enlarged), both even."""
    if short_side and min(width, height) > short_side:
        s = short_side / min(width, height)
        width, height = round(width * s), round(height * s)
    return max(2, width - width % 2), max(2, height - height % 2)
