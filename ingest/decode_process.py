"""Shot detection's decoding in a process of its own; the frames cross in shared memory.

On a 16-core GPU host at 360p, detection in one process stayed at 0.50 to 0.60 of decoding alone
however the pool's work was cut (docs/benchmarks.md, issue 23's rounds): the decoding thread gives
the GIL up inside FFmpeg several times a frame and each time waits to get it back from the pool's
and the detectors' Python. Here a child process, with a GIL of its own, decodes the stream and
makes FFmpeg's part of each batch (``detect_batches.scale_batch``: the detectors' frames,
TransNetV2's when it reads another size, the flash watch's luma grids) into a ring of slots in a
shared file; the parent's pool copies a batch out, its slot is handed back, and the rest is
``detect_batches``' as before, so every value is the one the in-process reader computes
(tests/test_decode_process.py).

A child serves one stream at a time and stays for the next (starting one imports PyAV and
scenedetect: about half a second); a process that detects shots in several sources at once starts
several. A child that dies (FFmpeg crashed on a broken file) costs that source a ``DecodeError``;
the next stream starts a new one. The child ends when its parent does (its pipe closes). The
child's side is ``ingest/decode_child.py``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import mmap
import os
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import NoReturn

import numpy as np

from vidcorpus.errors import DecodeError
from vidcorpus.frame_index import FrameIndex
from vidcorpus.ingest import detect_batches
from vidcorpus.ingest.detect_batches import (BatchPlan, PreparedBatch, Scratch, batch_frames, batch_layout,
                                             batches_ahead, prepare_copied)
from vidcorpus.storage import absolute

SHM_DIR = "/dev/shm"  # the ring's file (memory on Linux); elsewhere the temporary directory
WHOLE_SLOT = 2**31  # frames: a slot's arrays uncut
SLOTS_PER_BATCH_AHEAD = 2  # the ring: this many slots a batch the reader keeps ahead, and 2 (the child decodes on)
log = logging.getLogger(__name__)


class DecoderUnavailable(DecodeError):
    """No child could be started, or its ring not made (no memory left in /dev/shm): nothing to do
    with the source; ``split.decode_process`` auto then decodes in the process instead."""


@dataclass(frozen=True)
class StreamSpec:
    """What the child needs to decode the parent's stream exactly as ``ScaledStream`` would."""

    path: str
    turn: int
    start: int
    index: FrameIndex | None
    end_frame: int | None
    per_batch: int
    plan: BatchPlan
    nvdec: bool = False


class Ring:
    """``slots`` batch slots over one buffer: each the detectors' frames, TransNetV2's own and the luma
    grids of ``per_batch`` frames, as ``plan`` asks (``scale_batch``'s arrays, in that order)."""

    def __init__(self, buffer, plan: BatchPlan, per_batch: int, slots: int):
        self.buffer, self.slots = buffer, slots
        self._layout = batch_layout(plan, per_batch)
        sizes = [0 if a is None else -(-int(np.prod(a[0])) * np.dtype(a[1]).itemsize // 64) * 64 for a in self._layout]
        self._offsets = [sum(sizes[:i]) for i in range(len(sizes))]  # each part aligned to 64 bytes
        self.slot_bytes = max(64, sum(sizes))

    @staticmethod
    def bytes_for(plan: BatchPlan, per_batch: int, slots: int) -> int:
        return Ring(None, plan, per_batch, slots).slot_bytes * slots

    def views(self, slot: int, n: int) -> list[np.ndarray | None]:
        """The slot's arrays, their first ``n`` frames (None: not asked for)."""
        base = slot * self.slot_bytes
        return [None if a is None else np.ndarray(a[0], a[1], self.buffer, base + offset)[:n]
                for a, offset in zip(self._layout, self._offsets)]

    def taker(self, slot: int):
        """``scale_batch``'s ``take`` writing into ``slot``: its arrays in order (the layout is its asks)."""
        arrays = iter([a for a in self.views(slot, WHOLE_SLOT) if a is not None])

        def take(shape: tuple[int, ...], dtype) -> np.ndarray:
            array = next(arrays)[:shape[0]]
            assert array.shape == tuple(shape) and array.dtype == dtype, (array.shape, shape)
            return array

        return take


class DecoderProcess:
    """One child process (``decode_child.child_main``), the two pipes to it and the ring it writes."""

    def __init__(self):
        child_reads, parent_writes = os.pipe()
        parent_reads, child_writes = os.pipe()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))  # what the parent imports
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "import sys; sys.path[:] = [p for p in sys.path if p]; "  # not the cwd's first
                 "from vidcorpus.ingest.decode_child import child_main; child_main(*sys.argv[1:])",
                 str(child_reads), str(child_writes)],
                pass_fds=(child_reads, child_writes), env=env, stdin=subprocess.DEVNULL)
        except OSError as e:
            os.close(parent_writes)
            os.close(parent_reads)
            raise DecoderUnavailable(f"cannot start the decoding process: {e}") from None
        finally:
            os.close(child_reads)
            os.close(child_writes)
        self.outbox, self.inbox = Connection(parent_writes, readable=False), Connection(parent_reads, writable=False)
        self.ring: Ring | None = None
        self._ring_key: tuple | None = None
        try:
            self.recv()  # ("ready",)
        except DecodeError:
            self.close()
            raise DecoderUnavailable(f"cannot start the decoding process (exit code {self.proc.returncode})") from None

    def send(self, message: tuple) -> None:
        try:
            self.outbox.send(message)
        except OSError:
            self._gone()

    def recv(self) -> tuple:
        """The child's next message; a ``DecodeError`` if it has gone (killed, or crashed in FFmpeg)."""
        try:
            return self.inbox.recv()
        except (EOFError, OSError):
            self._gone()

    def _gone(self) -> NoReturn:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        raise DecodeError("shot detection failed: the decoding process "
                          + (f"ended (exit code {code})" if code is not None else "closed its pipe")) from None

    def alive(self) -> bool:
        return self.proc.poll() is None and not self.inbox.closed

    def ring_for(self, plan: BatchPlan, per_batch: int, slots: int) -> str | None:
        """A new ring's file for this stream (its path, for the child to map), None: the current one fits.
        Its memory is reserved here: a full /dev/shm is an error now, not a SIGBUS in the child."""
        key = _ring_key(plan, per_batch, slots)
        if key == self._ring_key:
            return None
        self.ring, self._ring_key = None, None
        size = Ring.bytes_for(plan, per_batch, slots)
        fd, path = tempfile.mkstemp(prefix="vidcorpus-ring-", dir=SHM_DIR if os.path.isdir(SHM_DIR) else None)
        try:
            os.posix_fallocate(fd, 0, size)
            ring = Ring(mmap.mmap(fd, size), plan, per_batch, slots)
        except OSError as e:
            os.unlink(path)
            raise DecoderUnavailable(f"cannot make the decoding process's ring ({size >> 20} MB): {e}") from None
        finally:
            os.close(fd)
        self.ring = ring
        return path

    def mapped(self, plan: BatchPlan, per_batch: int, slots: int) -> None:
        """The child has the current ring mapped: the next stream of the same sizes reuses it."""
        self._ring_key = _ring_key(plan, per_batch, slots)

    def close(self) -> None:
        for c in (self.outbox, self.inbox):
            c.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _ring_key(plan: BatchPlan, per_batch: int, slots: int) -> tuple:
    """What a ring's layout depends on: a stream with the same key reuses it."""
    return plan.size, plan.transnet_size, plan.grids, per_batch, slots


_IDLE: list[DecoderProcess] = []
_ALL: list[DecoderProcess] = []
_LOCK = threading.Lock()


def take_decoder() -> DecoderProcess:
    """An idle child, or a new one (one for each stream read at the same time)."""
    with _LOCK:
        while _IDLE:
            decoder = _IDLE.pop()
            if decoder.alive():
                return decoder
            _ALL.remove(decoder)
            decoder.close()
    decoder = DecoderProcess()
    with _LOCK:
        _ALL.append(decoder)
    return decoder


def give_back(decoder: DecoderProcess) -> None:
    """A child done with its stream: kept for the next one if alive, else closed and forgotten."""
    with _LOCK:
        if decoder.alive():
            _IDLE.append(decoder)
            return
        if decoder in _ALL:
            _ALL.remove(decoder)
    decoder.close()


def retire(decoder: DecoderProcess) -> None:
    """A child that must not serve again: its pipes close, so it ends."""
    with _LOCK:
        if decoder in _ALL:
            _ALL.remove(decoder)
        if decoder in _IDLE:
            _IDLE.remove(decoder)
    decoder.close()


@atexit.register
def _close_all() -> None:
    with _LOCK:
        for decoder in _ALL:
            decoder.close()
        _ALL.clear()
        _IDLE.clear()


def _forget_inherited() -> None:
    """In a forked process: the parent's children are not this one's (their pipes stay the parent's),
    and its lock may have been held by a thread that is not here."""
    global _LOCK
    _LOCK = threading.Lock()
    for decoder in _ALL:
        for c in (decoder.outbox, decoder.inbox):
            with contextlib.suppress(OSError):
                c.close()
    _ALL.clear()
    _IDLE.clear()


os.register_at_fork(after_in_child=_forget_inherited)


class ChildFeed:
    """``detect_batches.detect_batched``'s batches (a ``BatchFeed``), decoded and scaled by a child
    process. The parent's ``video`` is only moved along (``decoded``): the child opens its own."""

    def __init__(self, video, plan: BatchPlan, end_frame: int | None, per_batch: int, slots: int):
        self.video, self.ended = video, False
        self._sending = threading.Lock()  # the pool's threads hand slots back
        self._closing = False  # set under _sending: a slot handed back later would reach the next stream
        self._broken = False  # a message half sent or read (an interrupt): the pipes are out of step
        self.decoder = take_decoder()
        new_ring = None
        try:
            new_ring = self.decoder.ring_for(plan, per_batch, slots)
            spec = StreamSpec(absolute(video.path), video.turn, video.cursor_start, video.frame_index, end_frame,
                              per_batch, plan, video.nvdec)  # an absolute path: the child's working directory may differ
            self.decoder.send(("open", spec, new_ring, slots))
            answer = self.decoder.recv()  # ("opened", first frame) once the child has the ring and the stream
        except BaseException:  # its pipes may hold this stream's messages: it goes
            retire(self.decoder)
            raise
        finally:
            if new_ring:
                os.unlink(new_ring)  # mapped by both (or never will be): the name can go
        if answer[0] == "error":
            self.ended = True
            give_back(self.decoder)
            raise _error(answer)
        self.decoder.mapped(plan, per_batch, slots)
        if answer[1] != video.decoded:  # the child reads from the start the parent's stream was opened at
            self.close()
            raise RuntimeError(f"the decoding process starts at frame {answer[1]}, the stream at {video.decoded}")

    def submit(self, pool, plan: BatchPlan, previous: Future | None, scratch: Scratch) -> Future | None:
        """The next batch's copying and preparing, submitted once the child has made it; None at the end."""
        message = self._talk(self.decoder.recv)
        if message[0] == "batch":
            _, slot, numbers = message
            return pool.submit(prepare_copied, numbers, *self.decoder.ring.views(slot, len(numbers)), plan, previous,
                               scratch, lambda: self._free(slot))
        self.ended = True
        if message[0] == "error":
            raise _error(message)
        if (times := detect_batches.TIMES) is not None:  # ("end", the child's seconds)
            for name, seconds in message[1].items():
                setattr(times, name, getattr(times, name) + seconds)
        return None

    def _talk(self, call, *args):
        """``call(*args)`` (a send or a receive); an interrupt in it leaves the pipes out of step."""
        try:
            return call(*args)
        except DecodeError:
            raise
        except BaseException:
            self._broken = True
            raise

    def _free(self, slot: int) -> None:
        """The slot's batch is copied out (on a pool thread): the child may write it again."""
        with self._sending:
            if not self._closing:
                self._talk(self.decoder.send, ("free", slot))

    def consumed(self, future: Future, batch: PreparedBatch) -> None:
        self.video.decoded = batch.numbers[-1]

    def close(self) -> None:
        """Stops the child if the pass ended early (an error here), waits for it, and hands it back;
        a child whose pipes may be out of step is retired instead."""
        with self._sending:
            self._closing = True
        if self._broken:
            retire(self.decoder)
            return
        try:
            if not self.ended:
                self.decoder.send(("stop",))
                while self.decoder.recv()[0] not in ("end", "error"):
                    pass
                self.ended = True
        except DecodeError:
            pass  # it has gone: give_back forgets it
        except BaseException:
            retire(self.decoder)
            raise
        give_back(self.decoder)


def child_feed(video, plan: BatchPlan, end_frame: int | None, required: bool) -> ChildFeed | None:
    """``video``'s batches from a child (``detect_batched``'s ``feed``), ``video`` read to ``end_frame``.
    None (with a warning) when no child or ring can be had and the child is not ``required``."""
    try:
        return ChildFeed(video, plan, end_frame, batch_frames(*video.coded_size),
                         slots=SLOTS_PER_BATCH_AHEAD * batches_ahead() + 2)
    except DecoderUnavailable as e:
        if required:
            raise
        log.warning("%s; decoding in this process", e)
        return None


def _error(message: tuple) -> DecodeError:
    """The parent's error for the child's ("error", text, error class, a DecodeError there): as the
    in-process reader raises it (its own DecodeErrors as they are, others as "shot detection failed")."""
    _, text, error_class, decode_error = message
    return DecodeError(text if decode_error else f"shot detection failed: {text}", error_class)
