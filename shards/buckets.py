"""Bucket keys, so a trainer can draw batches of one resolution, aspect ratio and length at a time."""

from __future__ import annotations

RESOLUTIONS = (144, 240, 360, 480, 720, 1080, 1440, 2160)
ASPECTS = {"16x9": 16 / 9, "4x3": 4 / 3, "1x1": 1.0, "3x4": 3 / 4, "9x16": 9 / 16, "21x9": 21 / 9}
FRAME_WINDOWS = (16, 32, 64, 128, 256, 512)


def resolution_bucket(width: int, height: int) -> str:
    short = min(width or 0, height or 0)
    chosen = max((r for r in RESOLUTIONS if r <= short), default=0)
    return f"{chosen}p" if chosen else "tiny"


def aspect_bucket(width: int, height: int) -> str:
    if not width or not height:
        return "unknown"
    ratio = width / height
    return min(ASPECTS, key=lambda k: abs(ASPECTS[k] - ratio))


def frames_bucket(n_frames: int | None) -> str:
    n = n_frames or 0
    return "f" + str(next((w for w in FRAME_WINDOWS if n <= w), "long"))


def bucket_of(clip: dict) -> str:
    """e.g. 'video-240p-16x9-f64' or 'image-360p-4x3'. Only [0-9a-z-x] so it is a safe path part."""
    w, h = clip.get("width") or 0, clip.get("height") or 0
    base = f"{clip['media_type']}-{resolution_bucket(w, h)}-{aspect_bucket(w, h)}"
    return base if clip["media_type"] == "image" else f"{base}-{frames_bucket(clip.get('n_frames'))}"
