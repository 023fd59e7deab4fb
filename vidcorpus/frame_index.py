"""Where each frame of a source is, from its packets alone: decode any frame range without
decoding from frame 0.

vidcorpus numbers a source's frames by decode order: frame ``i`` is the i-th frame the decoder
hands out from the start of the file (``ingest/split.py`` explains why timestamps cannot be
trusted to index frames). To process a long source in parallel pieces (shot detection in chunks,
scorers and extraction on a few clips each) a worker must start decoding in the middle and still
know each frame's number. The packets tell it, without decoding: when every packet carries a
distinct presentation timestamp, frame ``i`` is the packet with the i-th smallest pts, and a
keyframe packet is a place to seek to. ``FrameIndex`` is that table (demuxing a 4-minute 720p
file reads its packets in milliseconds).

``FrameCursor`` decodes frames in order from any start frame: it seeks to the last keyframe at
or before the start and numbers each decoded frame by its pts in the index, checking that the
numbers follow one another. Whenever they do not (a frame the decoder dropped, a pts the index
lacks), it starts again from frame 0 and counts frames as they come, so the frames and numbers it
hands out are always those of a decode from the start. Sources whose packets cannot index frames
(missing or repeated pts, a first packet that is not a keyframe, discarded packets) get no index
and are decoded from the start, as before.

A caller that reads only some frames names them (``take(..., wanted=...)``): the cursor then numbers
frames by pts from wherever it is and lets FFmpeg skip the non-reference frames nobody wants
(``frame_seek.skip_setting``). A skipped frame still takes its number (its pts is in the index); only
frames the cursor let the decoder skip may be missing, any other gap is an ``IndexMismatch`` as above.
Frames past the range's last frame are always decoded: a later call may want them.
"""

from __future__ import annotations

import bisect
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Collection, Iterator

import av
import fsspec

from vidcorpus.frame_seek import planar, skip_setting
from vidcorpus.nvdec import CUVID, cuvid_context, hw_frames_context, release, with_stream_tags
from vidcorpus.storage import is_url, local_path


class IndexMismatch(Exception):
    """Decoded frames did not follow the index: the caller decodes from the start instead."""


@dataclass(frozen=True)
class FrameIndex:
    """Presentation timestamps in frame order, and the frames that are keyframes."""

    pts: tuple[int, ...]
    keyframes: tuple[int, ...]  # frame indices, ascending; always starts with 0

    @property
    def n_frames(self) -> int:
        return len(self.pts)

    def position(self, pts: int | None) -> int | None:
        """The frame index of a decoded frame's pts, or None when no packet had it."""
        if pts is None:
            return None
        i = bisect.bisect_left(self.pts, pts)
        return i if i < len(self.pts) and self.pts[i] == pts else None

    def keyframe_at_or_before(self, frame: int) -> int:
        return self.keyframes[max(0, bisect.bisect_right(self.keyframes, frame) - 1)]


def build_index(path: str) -> FrameIndex | None:
    """The index of the first video stream's packets, or None when they cannot index frames."""
    try:
        with fsspec.open(path, "rb") as f, av.open(f) as container:
            stream = container.streams.video[0]
            pts: list[int] = []
            keys: list[int] = []  # pts of keyframe packets
            first = True
            for p in container.demux(stream):
                if not p.size:  # the demuxer's flush packet at the end
                    continue
                if p.pts is None or p.is_discard or (first and not p.is_keyframe):
                    return None
                first = False
                pts.append(p.pts)
                if p.is_keyframe:
                    keys.append(p.pts)
    except (av.error.FFmpegError, OSError, IndexError):
        return None
    ordered = sorted(pts)
    if not ordered or len(set(ordered)) != len(ordered) or keys[0] != ordered[0]:
        return None
    at = {v: i for i, v in enumerate(ordered)}
    return FrameIndex(tuple(ordered), tuple(sorted(at[k] for k in keys)))


def _identity(path: str) -> tuple:
    local = None if is_url(path) else local_path(path)
    if local is None:
        return (path,)
    try:
        st = os.stat(local)
    except OSError:
        return (path,)
    return path, st.st_size, st.st_mtime_ns


_CACHE: "OrderedDict[tuple, FrameIndex | None]" = OrderedDict()  # this process's recent sources


def index_of(path: str) -> FrameIndex | None:
    """``build_index``, remembered for the few sources this process worked on last (a file
    rewritten under the same name is indexed again)."""
    key = _identity(path)
    if key not in _CACHE:
        _CACHE[key] = build_index(path)
        while len(_CACHE) > 8:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    return _CACHE[key]


def forget(path: str) -> None:
    """Remember that ``path``'s packets do not index its frames (``index_of`` gives None from now on)."""
    _CACHE[_identity(path)] = None


class FrameCursor:
    """An open decoder over one source handing out (frame index, frame) in order from ``start``.

    With an index and a start past the first keyframe interval it seeks; otherwise (or after an
    ``IndexMismatch``) it decodes from frame 0. ``next`` is the index of the next frame it will hand
    out. ``decoded`` counts the frames the decoder produced (skipped ones are not decoded).
    ``nvdec``: decode on the GPU's video decoder where one opens, of that kind (``vidcorpus/nvdec.py``:
    ``CUVID`` or ``GPU_FRAMES``; it skips no frame, and hands out the wanted frames in host memory, in
    yuv420p, as the software decoder does), else (None, or where none opens) on the CPU; ``on_gpu``
    says which."""

    def __init__(self, path: str, start: int = 0, index: FrameIndex | None = None, threads: int = 0,
                 nvdec: str | None = None):
        # threads: 0, FFmpeg's choice (frame threads, about one per core: the fastest for one decode
        # alone); n, slice threads only, at most n (a source of one slice a frame decodes on one
        # thread): frame threads cost 18 to 29% more CPU a frame, which a host running a decode in
        # every task pays in full (docs/benchmarks.md, "The source decoders' threads")
        self.path, self.index, self.threads, self.nvdec = path, index, threads, nvdec
        self._hw: av.CodecContext | None = None  # the NVDEC decoder (vidcorpus.nvdec keeps it across opens)
        self.next = 0
        self.decoded = 0
        self._wanted: Collection[int] | None = None  # the current take's wanted frames (None: all)
        self._last = -1  # the current take's last frame: later frames are never skipped
        self._file = self.container = None
        self._open(start if index is not None else 0)

    def _open(self, start: int) -> None:
        self.close()
        self._file = fsspec.open(self.path, "rb").open()
        try:
            self.container = av.open(self._file)
        except Exception:
            self._file.close()
            raise
        stream = self.container.streams.video[0]
        if self.threads:
            stream.thread_type = "SLICE"
            stream.codec_context.thread_count = self.threads
        else:
            stream.thread_type = "AUTO"
        key = self.index.keyframe_at_or_before(start) if self.index is not None and start > 0 else 0
        self.seeking = key > 0  # frames are numbered by their pts in the index (else counted)
        if self.seeking:
            self.container.seek(self.index.pts[key], stream=stream, backward=True, any_frame=False)
        self.next = key
        self._skipped: set[int] = set()  # frames whose packets went in skippable, not yet passed
        self._held: tuple[int, av.VideoFrame] | None = None  # a frame past the last take's range
        if self.nvdec:  # close() above gave a decoder of before back, flushed: taken again here
            self._hw = cuvid_context(stream) if self.nvdec == CUVID else hw_frames_context(stream)
        self._frames = self._decode_gpu(stream) if self._hw is not None else self._decode(stream)

    @property
    def on_gpu(self) -> bool:
        return self._hw is not None

    def _decode_gpu(self, stream) -> Iterator[av.VideoFrame]:
        """The stream's packets through the NVDEC decoder (all frames: it takes no skip setting)."""
        for packet in self.container.demux(stream):
            for frame in self._hw.decode(packet if packet.size else None):
                self.decoded += 1
                yield frame

    def _decode(self, stream) -> Iterator[av.VideoFrame]:
        """``container.decode(stream)``, packet by packet, so that each packet's skip setting follows
        the frame it holds."""
        cc = stream.codec_context
        for packet in self.container.demux(stream):
            if self.seeking and self._wanted is not None:
                pos = self.index.position(packet.pts)
                setting = skip_setting(pos if pos is not None and pos <= self._last else None, self._wanted)
                if setting != "DEFAULT":
                    self._skipped.add(pos)
                cc.skip_frame = setting
            for frame in packet.decode():
                self.decoded += 1
                yield frame

    def _numbered(self) -> Iterator[tuple[int, av.VideoFrame]]:
        for frame in self._frames:
            if not self.seeking:
                yield self.next, frame
                continue
            pos = self.index.position(frame.pts)
            if pos is not None and pos < self.next:
                continue  # before the wanted keyframe (the seek landed earlier, or an open GOP's lead)
            if pos is not None and pos > self.next and self._skipped.issuperset(range(self.next, pos)):
                self._skipped.difference_update(range(self.next, pos))  # frames FFmpeg skipped for us
            elif pos != self.next:
                raise IndexMismatch(f"frame with pts {frame.pts} decoded where frame {self.next} was due")
            self._skipped.discard(pos)
            yield pos, frame

    def take(self, first: int, last: int, wanted: Collection[int] | None = None) -> Iterator[tuple[int, av.VideoFrame]]:
        """Frames ``max(first, next)`` to ``last`` (fewer when the source ends first). With ``wanted``,
        the frames in that range that are not wanted may be missing (skipped, when the source's
        packets index its frames); the wanted ones are those of a full decode."""
        self._wanted, self._last = (wanted, last) if wanted is not None else (None, -1)
        if wanted is not None and not self.seeking:
            self._number_by_pts()
        while self.next <= last:
            got, self._held = self._held, None
            try:
                got = got or next(self._numbered(), None)
            except IndexMismatch:
                self._restart_from_zero()
                continue
            if got is None:
                return
            i, frame = got
            if i > last:  # skipped frames ran up to the end of the range: keep this one for the next call
                self._held, self.next = got, i
                return
            self.next = i + 1
            if i >= first:
                # frames nobody wants stay as decoded (on the GPU, where GPU_FRAMES leaves them)
                yield i, (self._host(frame) if wanted is None or i in wanted else frame)

    def _host(self, frame: av.VideoFrame) -> av.VideoFrame:
        """A wanted frame in host memory, yuv420p, tagged as the CPU decoder tags it."""
        if self._hw is not None:
            frame = with_stream_tags(frame, self.container.streams.video[0])
        return planar(frame)

    def _number_by_pts(self) -> None:
        """Number frames by pts from here on (so that skipped frames keep their numbers), when the
        source's packets index its frames."""
        if self.index is None:
            self.index = index_of(self.path)
        self.seeking = self.index is not None

    def _restart_from_zero(self) -> None:
        """This source's packets do not index its frames: decode from the start, up to ``next`` (and
        no cursor of this process seeks in it again)."""
        resume = self.next
        self.index = self._wanted = None
        forget(self.path)
        self._open(0)
        while self.next < resume and next(self._numbered(), None) is not None:
            self.next += 1

    def close(self) -> None:
        if self._hw is not None:
            release(self._hw, self.nvdec)
            self._hw = None
        if self.container is not None:
            try:
                self.container.close()
            finally:
                self._file.close()
        self.container = self._file = None
