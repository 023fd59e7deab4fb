"""Stream-copy the clips whose copy holds exactly the frames precise extraction would encode.

``split.extract_mode = "auto"``: a clip whose shot starts on a keyframe of an H.264 (8-bit 4:2:0)
source is written by copying the source's packets from that keyframe, when the copied packets show
exactly the shot's frames, first to last, in the source's frame numbering
(``vidcorpus/frame_index.py``). The clip then decodes to the very pixels of the source (no second
lossy encode) at a fraction of the CPU of a re-encode, keeps its clip id and frame range, and its
row records ``extract_mode = "copy"``. Every other clip is re-encoded (``precise``): shots starting
between keyframes, shots whose last frames need a packet beyond the shot (B-frames before the next
shot's anchor), sources with a display matrix, clips resized or resampled (``clip_short_side``,
``clip_fps``), other codecs or pixel formats, sources whose packets cannot index frames.

Edited footage gets a keyframe at most hard cuts (x264's scene-cut detection), so most of its clips
qualify; a source with keyframes only at fixed intervals gives few.
"""

from __future__ import annotations

import fsspec
import av

from vidcorpus.frame_index import FrameIndex, index_of

COPY_PIX_FMTS = {"yuv420p", "yuvj420p"}


def _copyable(path: str) -> tuple[float, int, int] | None:
    """(frame rate, width, height) of an H.264 8-bit 4:2:0 video stream without a display matrix, or None."""
    with fsspec.open(path, "rb") as f, av.open(f) as c:
        s = c.streams.video[0]
        cc = s.codec_context
        fmt = cc.format.name if cc.format is not None else None
        rate = s.average_rate or s.guessed_rate
        if cc.name != "h264" or fmt not in COPY_PIX_FMTS or not rate or s.time_base is None:
            return None
        return float(rate), cc.width, cc.height


def exact_copy_plan(path: str, rows: list[dict], split_cfg) -> tuple[list[dict], FrameIndex | None, tuple]:
    """The rows worth trying to copy (their first frame is a keyframe) under this config, the source's
    frame index and (fps, width, height); no rows when the config or the source rules copying out."""
    if split_cfg.clip_short_side is not None or split_cfg.clip_fps is not None:
        return [], None, ()
    if any(r.get("rotation") for r in rows):
        return [], None, ()
    index = index_of(path)
    if index is None:
        return [], None, ()
    try:
        info = _copyable(path)
    except (av.error.FFmpegError, OSError, IndexError):
        return [], None, ()
    if info is None:
        return [], None, ()
    keys = set(index.keyframes)
    return [r for r in rows if r["first_frame"] in keys], index, info


def copy_fields(row: dict, info: tuple) -> dict:
    """The clip fields precise extraction records, as they are for a copied clip (source size and rate)."""
    fps, width, height = info
    return {"clip_width": width, "clip_height": height, "clip_fps": fps,
            "clip_frames": row["last_frame"] - row["first_frame"] + 1, "extract_mode": "copy"}
