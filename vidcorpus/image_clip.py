"""An image's clip file: the image as displayed, re-saved as a JPEG beside its first-frame JPEG.

Shared by two stages, so it lives in the core: the technical scorer gives every image its file
before scoring (it is cheap, and dropped images then still have one to show), and extraction does
it when it runs without the scorers before it.
"""

from __future__ import annotations

import fsspec

from vidcorpus.ids import is_safe_key
from vidcorpus.media import load_image_rgb, save_jpeg


def image_clip(row: dict, config) -> dict:
    """An image's clip file (a JPEG as displayed) and first-frame JPEG: cheap, so every image gets
    them before scoring, kept or not."""
    clip = row["clip_id"]
    if not is_safe_key(clip):  # clip ids name files: never a path from input
        raise ValueError(f"clip id {clip!r} is not a safe key")
    clip_url = config.url("staging", "clips", f"{clip}.jpg")
    first_url = config.url("staging", "clips", f"{clip}.first.jpg")
    with fsspec.open(row["source_path"], "rb") as f:
        img = load_image_rgb(f, config.ingest.max_pixels)  # as displayed (EXIF orientation)
    save_jpeg(img, clip_url, quality=95)
    save_jpeg(img, first_url)
    return dict(row, clip_path=clip_url, first_frame_path=first_url, extract_mode="image",
                clip_width=img.shape[1], clip_height=img.shape[0], clip_fps=None, clip_frames=1)
