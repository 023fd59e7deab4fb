"""The decoding child's side of ``ingest/decode_process.py``: streams decoded into the ring, one
after another, until the parent's pipe closes.

This thread decodes a batch at a time (``detect_batches.read_batch``, the in-process reader's own
loop) and the child's scaler pool makes each (``detect_batches.scale_batch``) into a free slot; the
batches are announced in decode order once made. A slot comes back from the parent once its batch
is copied out.
"""

from __future__ import annotations

import contextlib
import mmap
import signal
import time
from collections import deque
from concurrent.futures import Future
from multiprocessing.connection import Connection

from vidcorpus.errors import DecodeError
from vidcorpus.ingest.decode_process import Ring, StreamSpec
from vidcorpus.ingest.detect_batches import read_batch, scale_batch
from vidcorpus.ingest.scale_ahead import scaler_pool
from vidcorpus.ingest.scaled_stream import ScaledStream


def child_main(inbox_fd: str, outbox_fd: str) -> None:
    """The child's loop: streams one after another until the parent's pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C: the parent stops, the pipe closes, this ends
    inbox, outbox = Connection(int(inbox_fd), writable=False), Connection(int(outbox_fd), readable=False)
    outbox.send(("ready",))
    ring = None
    with contextlib.suppress(EOFError, BrokenPipeError):  # the parent has gone
        while True:
            message = inbox.recv()
            if message[0] != "open":
                continue  # a "free" or "stop" sent before its stream's end arrived
            _, spec, ring_path, slots = message
            try:
                if ring_path:
                    ring = None
                    with open(ring_path, "r+b") as f:
                        ring = Ring(mmap.mmap(f.fileno(), 0), spec.plan, spec.per_batch, slots)
                video = ScaledStream(spec.path, lambda w, h: (w, h), spec.turn, spec.start, spec.index, nvdec=spec.nvdec)
            except Exception as e:  # noqa: BLE001 - the parent raises it as its DecodeError
                outbox.send(("error", f"cannot open for shot detection: {e}", None, True))
                continue
            outbox.send(("opened", video.decoded))
            try:
                _stream(video, spec, ring, inbox, outbox)
            except (EOFError, BrokenPipeError):
                raise
            except Exception as e:  # noqa: BLE001 - the parent raises it as its DecodeError
                outbox.send(("error", str(e), getattr(e, "error_class", None), isinstance(e, DecodeError)))
            del video  # its container closes


def _stream(video, spec: StreamSpec, ring: Ring, inbox: Connection, outbox: Connection) -> None:
    """Decode ``spec``'s stream into ``ring``'s free slots until its end or a stop: this thread decodes,
    the scaler pool makes each batch (FFmpeg's scaler gives the GIL up, and at 360p it costs about
    what the decoding does: one thread doing both ran at half the speed of decoding alone on an H100
    host), and each is announced in decode order once made. The end message carries this side's
    seconds (``detect_batches.BatchTimes``' child fields)."""
    pool, clock = scaler_pool(), time.perf_counter
    free, start, ended = list(range(ring.slots)), video.decoded, False
    made: deque[tuple[int, list[int], Future]] = deque()  # (slot, frame counts, scaling) in decode order
    times = dict.fromkeys(("child_decode_s", "child_wait_free_s", "child_wait_scaled_s"), 0.0)
    try:
        while made or not ended:
            t0 = clock()
            if not _take_frees(inbox, ring, free, {slot for slot, _n, _s in made}, wait=not free and not made):
                break  # a stop
            t1 = clock()
            if free and not ended:
                decoded, ended = read_batch(video, spec.per_batch, spec.end_frame, start)
                if decoded:
                    slot = free.pop(0)
                    made.append((slot, [n for n, _f in decoded],
                                 pool.submit(scale_batch, [f for _n, f in decoded], spec.plan, ring.taker(slot))))
            t2 = clock()
            while made and (made[0][2].done() or ended or not free):  # the oldest, when done or nothing else to do
                slot, numbers, scaling = made.popleft()
                scaling.result()
                outbox.send(("batch", slot, numbers))
            times["child_wait_free_s"] += t1 - t0
            times["child_decode_s"] += t2 - t1
            times["child_wait_scaled_s"] += clock() - t2
    finally:
        for _slot, _numbers, scaling in made:  # a stop or an error: nothing writes into a slot after this
            scaling.cancel() or scaling.exception()
    outbox.send(("end", times))


def _take_frees(inbox: Connection, ring: Ring, free: list[int], writing: set[int], wait: bool) -> bool:
    """The slots the parent handed back so far (``wait``: until one is): False at a stop. ``writing``:
    the slots of batches made or being made and not yet announced."""
    while (wait and not free) or inbox.poll():
        message = inbox.recv()
        if message[0] == "stop":
            return False
        slot = message[1]  # ("free", slot)
        if not 0 <= slot < ring.slots or slot in free or slot in writing:
            raise RuntimeError(f"slot {slot} handed back twice")  # the parent's error: its source fails, not others
        free.append(slot)
    return True
