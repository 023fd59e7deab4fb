"""8x6 grey thumbnails of decoded frames: block means of a sparse grid of the luma plane.

The flash filter keeps one per frame (``ingest/flash.py``: 48 bytes a frame); the pan check
(``ingest/camera_shift.py``) compares them shifted by whole blocks.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

THUMB_W, THUMB_H = 8, 6


def thumbnail(frame) -> np.ndarray:
    """(THUMB_H, THUMB_W) uint8 grey thumbnail of an ``av.VideoFrame``: block means of ``luma_grid``."""
    return luma_grid(frame).reshape(THUMB_H, 4, THUMB_W, 4).mean(axis=(1, 3)).astype(np.uint8)


def luma_grid(frame) -> np.ndarray:
    """(4 THUMB_H, 4 THUMB_W) float32 grey samples of an ``av.VideoFrame``: a sparse grid of its luma
    plane when it has one (YUV, NV, grey; 8 to 16 bits), else through FFmpeg's scaler."""
    fmt = frame.format
    bits = fmt.components[0].bits
    if not fmt.name.startswith(("yuv", "nv", "gray")) or bits > 16:
        return frame.to_ndarray(width=THUMB_W * 4, height=THUMB_H * 4, format="gray8").astype(np.float32)
    plane = frame.planes[0]
    if bits > 8:  # little-endian 16-bit samples: scale to 8 bits
        y = np.frombuffer(plane, np.uint16).reshape(plane.height, plane.line_size // 2) >> (bits - 8)
        return y[_grid_index(frame.height, frame.width)].astype(np.float32)
    # the same samples, taken from the flat plane in one call (this runs for every decoded frame)
    return np.frombuffer(plane, np.uint8).take(_flat_grid_index(frame.height, frame.width, plane.line_size)).astype(
        np.float32)


@lru_cache(maxsize=16)
def _grid_index(height: int, width: int) -> tuple:
    """The rows and columns ``luma_grid`` samples (the same for every frame of a stream)."""
    ys = np.linspace(0, height - 1, THUMB_H * 4).astype(int)
    xs = np.linspace(0, width - 1, THUMB_W * 4).astype(int)
    return np.ix_(ys, xs)


@lru_cache(maxsize=16)
def _flat_grid_index(height: int, width: int, line_size: int) -> np.ndarray:
    """``_grid_index`` as offsets into a plane of ``line_size`` bytes a row."""
    ys, xs = _grid_index(height, width)
    return ys * line_size + xs
