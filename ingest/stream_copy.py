"""Stream copy: cut clips out of a source by remuxing its compressed packets, nothing decoded.

The mechanics both copying modes of extraction share (``ingest/extract.py``): where the keyframes
are, and which packets from a keyframe make a clip whose shown frames are contiguous. Which clips
qualify is the callers' business (``split.extract_mode``: ``copy`` takes the nearest keyframe,
``auto`` only exact copies, ``ingest/exact_copy.py``).
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
import fsspec

from vidcorpus.frame_index import FrameIndex

COPY_CODECS = {"h264", "hevc", "vp9", "av1", "mpeg4"}


class CopyUnsupported(Exception):
    """This source cannot be stream-copied (the caller re-encodes it instead)."""


def _frame_index(pts: int, start: int, time_base: Fraction, fps: Fraction) -> int:
    return round((pts - start) * time_base * fps)


def keyframe_indices(path: str, fps: Fraction) -> list[int]:
    """Presentation indices of the keyframes, from demuxing alone (nothing is decoded)."""
    with fsspec.open(path, "rb") as f, av.open(f) as c:
        s = c.streams.video[0]
        start = s.start_time or 0
        keys = []
        for p in c.demux(s):
            if p.size == 0:
                continue
            if p.pts is None:
                raise CopyUnsupported("packets without timestamps")
            if p.is_keyframe:
                keys.append(_frame_index(p.pts, start, s.time_base, fps))
        return sorted(keys)


def stream_rate(path: str) -> Fraction:
    """The video stream's frame rate; CopyUnsupported when it has none (or is not mp4-copyable)."""
    with fsspec.open(path, "rb") as f, av.open(f) as c:
        s = c.streams.video[0]
        fps = Fraction(s.average_rate or s.guessed_rate or 0)
        if not fps or s.time_base is None:
            raise CopyUnsupported("no frame rate or time base")
        if s.codec_context.name not in COPY_CODECS:
            raise CopyUnsupported(f"{s.codec_context.name} is not stream-copied into mp4")
    return fps


def copy_clips(path: str, ranges: list[tuple[int, int]], keys: list[int] | None = None,
               index: FrameIndex | None = None) -> list[tuple[bytes, int, int] | None]:
    """Stream-copy each inclusive (first, last) range; per range (mp4 bytes, first, last) actually
    written, or None when no frame of it could be copied. With ``index`` frames are numbered as the
    rest of vidcorpus numbers them (``vidcorpus/frame_index.py``), else from timestamps and the rate.

    One demux pass serves every range. Packets are taken in decode order from the keyframe at or
    before ``first``; taking stops at the first packet showing after ``last``, and trailing packets
    are dropped until the written frames are contiguous, so the recorded range is exactly what a
    player shows.
    """
    fps = stream_rate(path)
    if index is not None:
        keys = list(index.keyframes)
    keys = keys if keys is not None else keyframe_indices(path, fps)
    if not keys:
        raise CopyUnsupported("no keyframes")
    starts = [max([k for k in keys if k <= a], default=keys[0]) for a, _ in ranges]
    # per range: None = not begun, list = collecting (index, pts, dts, key, duration, data), True = written
    state: list = [None] * len(ranges)
    results: list = [None] * len(ranges)
    with fsspec.open(path, "rb") as f, av.open(f) as c:
        s = c.streams.video[0]
        start = s.start_time or 0
        for p in c.demux(s):
            if p.size == 0 or p.pts is None:
                continue
            idx = index.position(p.pts) if index is not None else _frame_index(p.pts, start, s.time_base, fps)
            if idx is None:
                raise CopyUnsupported("a packet the frame index does not know")
            for j, (a, b) in enumerate(ranges):
                st = state[j]
                if st is True:
                    continue
                if st is None:
                    if not (p.is_keyframe and idx == starts[j]):
                        continue
                    state[j] = st = []
                if idx > b:  # mux now: only clips still open hold packets in memory
                    results[j], state[j] = _mux_contiguous(s, st, starts[j]), True
                elif idx >= starts[j]:  # leading pictures of an open GOP belong before the keyframe
                    st.append((idx, p.pts, p.dts, p.is_keyframe, p.duration, bytes(p)))
            if all(st is True for st in state):
                break
        for j, st in enumerate(state):
            if isinstance(st, list):  # ran to the end of the stream
                results[j] = _mux_contiguous(s, st, starts[j])
    return results


def _mux_contiguous(in_stream, pkts: list, first: int) -> tuple[bytes, int, int] | None:
    """Write (index, pts, dts, key, data) packets into an mp4, dropping trailing ones until the
    shown frames are exactly first, first+1, ...; returns (bytes, first, last) or None."""
    pkts = list(pkts)
    while pkts:
        shown = sorted(i for i, *_ in pkts)
        if shown == list(range(first, first + len(shown))):
            break
        pkts.pop()  # a decode-order prefix stays decodable
    if not pkts:
        return None
    first_pts = min(pts for _, pts, *_ in pkts)
    shift = min(first_pts, min((dts for _, _, dts, *_ in pkts if dts is not None), default=first_pts))
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        o = out.add_stream_from_template(in_stream)
        for _, pts, dts, key, duration, data in pkts:
            p = av.Packet(data)
            p.duration = duration
            p.pts = pts - shift
            p.dts = None if dts is None else dts - shift
            p.is_keyframe = key
            p.time_base = in_stream.time_base
            p.stream = o
            out.mux(p)
    return buf.getvalue(), first, first + len(pkts) - 1
