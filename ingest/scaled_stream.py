"""scenedetect's PyAV stream, its frames shrunk and turned upright by FFmpeg's scaler.

The shot detectors read this stream (``ingest/split.py``); it is a module of its own because it
subclasses scenedetect's ``VideoStreamAv`` (imported only once a source is split) and overrides how
frames are numbered, decoded, scaled ahead on helper threads (``ingest/scale_ahead.py``) and shared
with the other detectors of the same decode.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scenedetect import FrameTimecode
from scenedetect.backends.pyav import VideoStreamAv

from vidcorpus.frame_index import FrameCursor
from vidcorpus.nvdec import CUVID
from vidcorpus.ingest.scale_ahead import ScaleAhead
from vidcorpus.media import detection_frame

# FFmpeg's decoder threads for the detection stream; None: FFmpeg's choice (one per core, and one).
# A measuring knob (bench/shot_knobs.sh): on an idle 16-core host those threads may take the cores
# from the Python thread that holds the GIL while everyone else waits for it.
DECODE_THREADS: int | None = None


def _gpu_frames(path: str, start: int, index):
    """A ``FrameCursor``'s frames on NVDEC from ``start``; its decoder goes back to ``vidcorpus.nvdec``
    when the stream is done or dropped."""
    cursor = FrameCursor(path, start, index, nvdec=CUVID)  # every frame is read: no frame left on the GPU
    try:
        yield from cursor.take(0, 2**62)
    finally:
        cursor.close()


class ScaledStream(VideoStreamAv):
    """The stream the detectors read: frames counted in decode order, scaled to ``size_of(coded
    width, height)`` and turned ``turn`` degrees clockwise; ``on_frame`` sees every decoded frame;
    ``start`` with ``index`` (a ``vidcorpus.frame_index`` index) starts it at the last keyframe at or
    before that frame (a ``FrameCursor``; positions still count from the start of the file). ``nvdec``:
    the frames come from a ``FrameCursor`` on the GPU's video decoder (split.decoder; the CPU
    decoder's frames, or the CPU decoder itself where NVDEC does not open)."""

    def __init__(self, path: str, size_of: Callable[[int, int], tuple[int, int]], turn: int,
                 start: int = 0, index=None, on_frame: Callable | None = None, nvdec: bool = False) -> None:
        super().__init__(path, threading_mode="AUTO")
        # with ``path``: how to open it again (ingest/decode_process.py)
        self.cursor_start, self.frame_index, self.nvdec = start, index, nvdec
        seeks = start > 0 and index is not None
        if DECODE_THREADS:
            self._codec_context.thread_count = DECODE_THREADS
        self._turn, self._on_frame = turn, on_frame
        self.transnet_stream = None  # TransNetV2's reader of this decode (split.open_detection_stream)
        self.size = size_of(self._codec_context.width, self._codec_context.height)  # of the upright picture
        # frames read so far: the position of the current frame is decoded - 1; a cursor's first frame
        # is the keyframe sought
        self.decoded = index.keyframe_at_or_before(start) if seeks else 0
        self.frames = None  # None: scenedetect's own decoder
        if nvdec:  # opened at the first frame: a parent that hands the decode to its child opens none
            self.frames = _gpu_frames(path, start if seeks else 0, index if seeks else None)
        elif seeks:
            self.frames = FrameCursor(path, start, index).take(0, 2**62)
        self.ahead_count = self.decoded  # frames decoded, including those not handed out yet
        self.ahead = ScaleAhead(self._decode_next, self._scale)

    @property
    def frame_size(self) -> tuple[int, int]:
        return self.size

    @property
    def turn(self) -> int:
        """Clockwise degrees the frames are turned to be upright."""
        return self._turn

    @property
    def coded_size(self) -> tuple[int, int]:
        """(width, height) of the decoded frames, before scaling."""
        return self._codec_context.width, self._codec_context.height

    # Positions count decoded frames. scenedetect derives them from each frame's pts minus the
    # stream's start time, which is one frame late in an AVI whose first pts is 1 (and wrong
    # wherever timestamps are not one per frame): every cut then landed a frame late.
    @property
    def frame_number(self) -> int:
        return self.decoded

    @property
    def position(self) -> FrameTimecode:
        return FrameTimecode(max(0, self.decoded - 1), fps=self.frame_rate)

    def _handle_eof(self) -> bool:
        # scenedetect reopens and seeks back when fewer frames decoded than the header declared;
        # the frames after the seek would be counted twice. Its decoder generator persists, so
        # nothing is lost at the end; extraction counts frames the same way (one plain decode).
        return False

    def _decode_next(self) -> tuple[int, object] | None:
        """(frames read once this one is, the next decoded frame), None at the end."""
        if self.frames is not None:
            got = next(self.frames, None)
            return None if got is None else (got[0] + 1, got[1])
        if VideoStreamAv.read(self, decode=False) is False:
            return None
        self.ahead_count += 1
        return self.ahead_count, self._frame

    def advance(self) -> tuple[int, object] | None:
        """The next decoded frame as (frames read once it is, av.VideoFrame), the stream's position
        moved to it, unscaled and unseen by ``on_frame``: the batched reader
        (``ingest/detect_batches.py``) does both for a batch at a time. None at the end."""
        got = self._decode_next()
        if got is not None:
            self.decoded, self._frame = got
        return got

    def _scale(self, frame) -> np.ndarray:
        w, h = self.size
        return detection_frame(frame, w, h, self._turn)

    def read(self, decode: bool = True) -> np.ndarray | bool:
        # frames are decoded here, in order, and scaled on helper threads a few frames ahead
        # (ingest/scale_ahead.py); the readers see each frame when it is handed out
        got = self.ahead.next(scaled=decode)
        if got is None:
            return False
        self.decoded, self._frame, scaled = got
        if self._on_frame is not None:
            self._on_frame(self._frame)
        if not decode:
            return True
        return scaled.result() if scaled is not None else self._scale(self._frame)
