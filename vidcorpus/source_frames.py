"""Frames of a clip read straight from its source, before (or without) extracting the clip.

Filter before you encode (issue 22): the scorers read the frames they sample from the source file
over the clip's recorded frame range, so only clips the recipe keeps are ever encoded. A clip's
frame ``j`` is the frame precise extraction would write as frame ``j``: the same source frame
(``ClipGeometry.source_offset``, which follows ``ingest.extract._ClipWriter``'s resampling when
``split.clip_fps`` is set) at the same size (the same AREA scaling when ``split.clip_short_side``
is set), converted with ``frame_seek.to_rgb``. So scores differ from the extracted clip's only by
the clip's H.264 coding.

One decode per source: ``stream_clip_frames`` decodes the source in order from its first wanted
frame to its last, numbering frames as the splitter did (``vidcorpus.frame_index``: it seeks to
the keyframe before the first wanted frame when the source's packets index its frames, and counts
from frame 0 otherwise), converts only the wanted frames and hands each clip its frames as soon as
its last one is decoded, so memory holds one clip's samples at a time. The scorers read a few frames
a second: the non-reference frames that no clip wants are not decoded at all (FFmpeg's
``skip_frame``, set per packet by ``FrameCursor.take``; the frames handed out are those of a full
decode, and a source whose packets do not index its frames is decoded in full). A long source's clips travel
in several small blocks, each decoding only its own stretch of the source. The decoder stays open
between calls (one per process), so clips that arrive in later batches continue the same decode.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Collection, Iterator

import av
import numpy as np

from vidcorpus.errors import DecodeError
from vidcorpus.frame_index import FrameCursor, index_of
from vidcorpus.frame_seek import to_rgb
from vidcorpus.nvdec import decoder_kind
from vidcorpus.storage import is_url, local_path

DEFERRED = "deferred"  # extract_mode of a clip that has no file yet: scored from its source, not encoded


def target_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """The size precise extraction gives a clip (``ingest/extract.py`` encodes at it, the scorers read
    source frames at it): even (w, h) with the short side scaled to ``short_side`` (never enlarged);
    None keeps the size."""
    if short_side and min(width, height) > short_side:
        scale = short_side / min(width, height)
        width, height = round(width * scale), round(height * scale)
    return max(2, width - width % 2), max(2, height - height % 2)


@dataclass(frozen=True)
class ClipGeometry:
    """What precise extraction would write for a clip: size, rate, frame count, and which source
    frame each clip frame is."""

    width: int
    height: int
    in_rate: Fraction
    rate: Fraction
    frames: int

    @property
    def fps(self) -> float:
        return float(self.rate)

    def source_offset(self, j: int) -> int:
        """Offset from the clip's first source frame of clip frame ``j`` (``_ClipWriter.add`` emits
        output frame j while source frame offset floor(j * in_rate / rate) is showing)."""
        return math.floor(Fraction(j) * self.in_rate / self.rate)


def clip_geometry(row: dict, split_cfg=None) -> ClipGeometry:
    """The clip's geometry from its source row (probe's size and rate) and the extraction settings;
    without settings, from the clip fields the row already carries (``with_geometry``)."""
    fps = row.get("fps") or 25.0
    in_rate = Fraction(float(fps)).limit_denominator(1001)
    n_src = int(row["last_frame"]) - int(row["first_frame"]) + 1
    if split_cfg is None and row.get("clip_fps") and row.get("clip_width") and row.get("clip_height"):
        rate = Fraction(float(row["clip_fps"])).limit_denominator(1001)
        w, h = int(row["clip_width"]), int(row["clip_height"])
    else:
        clip_rate = getattr(split_cfg, "clip_fps", None)
        rate = Fraction(clip_rate).limit_denominator(1001) if clip_rate else in_rate
        w, h = target_size(int(row["width"]), int(row["height"]), getattr(split_cfg, "clip_short_side", None))
    frames = math.ceil(Fraction(n_src) * rate / in_rate)
    return ClipGeometry(w, h, in_rate, rate, frames)


def with_geometry(row: dict, split_cfg) -> dict:
    """The row with the clip fields (size, rate, frames) extraction would record, when it has none."""
    if row.get("clip_frames"):
        return row
    g = clip_geometry(row, split_cfg)
    return dict(row, clip_width=g.width, clip_height=g.height, clip_fps=g.fps, clip_frames=g.frames)


def source_content_id(row: dict) -> str:
    """A content id for a clip that has no file: the source's content hash, the frame range and the
    clip's size and rate (two identical sources give the same id, as two identical extracted files
    gave the same sha256)."""
    g = clip_geometry(row)
    key = "|".join(str(x) for x in (row.get("sha256") or row.get("source_path"), row["first_frame"], row["last_frame"],
                                    g.width, g.height, g.rate))
    return hashlib.sha256(key.encode()).hexdigest()


def _convert(frame: av.VideoFrame, size: tuple[int, int]) -> np.ndarray:
    if (frame.width, frame.height) != size:
        frame = frame.reformat(width=size[0], height=size[1], interpolation="AREA")
    return to_rgb(frame)


def decoder_for(rows: list[dict], filters_cfg) -> dict:
    """The source decoder settings for the rows of one source: ``filters.source_decode_threads``, and
    the kind of NVDEC ``filters.source_decoder`` names (``nvdec.decoder_kind``) unless the source is
    turned by a display matrix (the GPU's decoder hands out frames without it; such sources, phone
    footage, stay on the CPU)."""
    turned = any(r.get("rotation") for r in rows)
    return {"threads": filters_cfg.source_decode_threads,
            "nvdec": None if turned else decoder_kind(filters_cfg.source_decoder)}


def stream_clip_frames(rows: list[dict], wanted: dict[str, list[int]], split_cfg=None, skip_unread: bool = True,
                       threads: int = 1, nvdec: str | None = None) -> Iterator[tuple[dict, dict[int, np.ndarray]]]:
    """(row, {clip frame j: RGB}) for every row of ONE source, in source order, each as soon as its
    last wanted frame is decoded; ``wanted[clip_id]`` lists clip frame indices. Frames the source
    never delivers are missing from the dict (the caller decides); an unreadable source raises
    DecodeError. ``skip_unread`` (``filters.skip_unread_frames``): leave out the non-reference frames
    that no row wants instead of decoding every frame. ``threads``: the decoder's
    (``filters.source_decode_threads``); ``nvdec``: on the GPU's decoder where one opens
    (``decoder_for``)."""
    rows = sorted(rows, key=lambda r: r["first_frame"])
    plan: dict[int, list[tuple[int, int]]] = {}  # source index -> [(row position, clip index)]
    last_of: list[int] = []
    geoms = []
    for pos, row in enumerate(rows):
        g = clip_geometry(row, split_cfg)
        geoms.append(g)
        js = sorted(set(j for j in wanted.get(row["clip_id"], []) if 0 <= j < g.frames))
        srcs = [int(row["first_frame"]) + g.source_offset(j) for j in js]
        for j, s in zip(js, srcs):
            plan.setdefault(s, []).append((pos, j))
        last_of.append(max(srcs) if srcs else -1)
    got: list[dict[int, np.ndarray]] = [{} for _ in rows]
    emitted = [False] * len(rows)
    due = sorted((last, pos) for pos, last in enumerate(last_of))  # clips by the frame that completes them
    k = 0
    if plan:
        for index, frame in decode_source_range(rows[0]["source_path"], min(plan), max(plan),
                                                plan.keys() if skip_unread else None, threads, nvdec):
            for pos, j in plan.get(index, ()):
                got[pos][j] = _convert(frame, (geoms[pos].width, geoms[pos].height))
            while k < len(due) and due[k][0] <= index:
                pos = due[k][1]
                k += 1
                emitted[pos] = True
                yield rows[pos], got[pos]
                got[pos] = {}
    for pos, row in enumerate(rows):
        if not emitted[pos]:
            yield row, got[pos]


class _SourceCursor:
    """An open decoder over one source (``frame_index.FrameCursor``: it seeks through the source's
    packet index when it has one) and the file identity it was opened on."""

    def __init__(self, path: str, start: int, threads: int, nvdec: str | None):
        self.path, self.threads, self.nvdec = path, threads, nvdec
        self.identity = _identity(path)
        self.cursor = FrameCursor(path, start, index_of(path) if start > 0 else None, threads, nvdec)

    @property
    def next(self) -> int:
        return self.cursor.next

    def far_behind(self, first: int) -> bool:
        """Whether seeking to ``first`` skips at least a keyframe interval of decoding."""
        index = self.cursor.index or (index_of(self.path) if first > self.next else None)
        return index is not None and index.keyframe_at_or_before(first) > self.next

    def close(self) -> None:
        self.cursor.close()


def _identity(path: str) -> tuple | None:
    """A local file's (size, mtime): a file written again under the same name is another source."""
    local = None if is_url(path) else local_path(path)
    if local is None:
        return None
    try:
        st = os.stat(local)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


_CURSOR: list[_SourceCursor] = []  # this process's open source, kept for the next batch of its clips


def decode_source_range(path: str, first: int, last: int, wanted: Collection[int] | None = None,
                        threads: int = 1, nvdec: str | None = None) -> Iterator[tuple[int, av.VideoFrame]]:
    """(source frame index, frame) for ``first`` to ``last``, numbered in decode order from the first
    frame, as the splitter and extraction number them (``frame_index.FrameCursor``); with ``wanted``,
    frames in the range that are not wanted may be skipped (``FrameCursor.take``). The decoder
    stays open for the next call: a later stretch of the same source continues one decode, unless
    seeking skips a keyframe interval or more; a call for an earlier frame or another source opens
    it anew. ``threads``: the decoder's (``FrameCursor``; ``filters.source_decode_threads``); ``nvdec``:
    on the GPU's video decoder where one opens (``FrameCursor``)."""
    cur = _CURSOR[0] if _CURSOR else None
    try:
        if (cur is None or cur.path != path or cur.next > first or cur.identity != _identity(path)
                or cur.threads != threads or cur.nvdec != nvdec or cur.far_behind(first)):
            if cur is not None:
                _CURSOR.clear()
                cur.close()
            cur = _SourceCursor(path, first, threads, nvdec)
            _CURSOR.append(cur)
        yield from cur.cursor.take(first, last, wanted)
    except av.error.FFmpegError as e:
        if _CURSOR:
            _CURSOR.pop().close()
        raise DecodeError(f"cannot decode source: {e}") from e


def frames_decoded() -> int:
    """Frames this process's open source decoder has decoded since it opened (skipped frames are
    not decoded): what the benchmark and the tests count."""
    return _CURSOR[0].cursor.decoded if _CURSOR else 0
