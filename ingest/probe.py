"""Probe staged media with PyAV (videos) and Pillow (images): size, frame rate, frames, codec."""

from __future__ import annotations

from typing import ClassVar

import fsspec
from PIL import Image

from vidcorpus.errors import DecodeError
from vidcorpus.media import probe_video
from vidcorpus.stage import Resources, Stage

MAX_PIXELS = 8192 * 8192  # refuse decompression bombs and absurd declared sizes


class ProbeStage(Stage):
    name: ClassVar[str] = "probe"
    resources: ClassVar[Resources] = Resources(cpus=0.25)

    def process_row(self, row: dict) -> dict:
        with fsspec.open(row["source_path"], "rb") as f:
            if row["media_type"] == "image":
                try:
                    img = Image.open(f)
                    w, h = img.size
                    if w * h > MAX_PIXELS:
                        raise DecodeError(f"image of {w}x{h} pixels is too large", "too_large")
                    img.verify()
                except DecodeError:
                    raise
                except Exception as e:  # noqa: BLE001 - Pillow raises many kinds
                    raise DecodeError(f"cannot read image: {e}") from e
                return dict(row, container=(img.format or "").lower(), codec=(img.format or "").lower(),
                            width=w, height=h, fps=None, n_frames=1, duration_s=0.0)
            info = probe_video(f)
        if not info["width"] or not info["height"]:
            raise DecodeError("video stream without a size")
        if info["width"] * info["height"] > MAX_PIXELS:
            raise DecodeError(f"declared size {info['width']}x{info['height']} is too large", "too_large")
        return dict(row, **info)
