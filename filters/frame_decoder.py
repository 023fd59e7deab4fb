"""Decoding the CLIP scorer's frames in worker processes, ahead of the model.

PyAV holds the GIL while decoding, so threads do not scale: worker processes read and hash each
clip, decode its K frames and write them into slots of one shared-memory block (``FrameDecoder``);
``DecodeAhead`` keeps those workers busy on later clips of a stage call while the model embeds the
frames already decoded, and gives each slot back once its frames are on the device.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import pickle
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import shared_memory
from typing import Callable

import cv2
import numpy as np

from vidcorpus.errors import DecodeError
from vidcorpus.filters.clip_frames import MAX_SIDE, ScaleToModel, square_frame, read_clip, scoring_frames
from vidcorpus.frame_seek import KeyframeDecoder, to_rgb

ROW_KEYS = ("clip_path", "media_type", "clip_frames", "first_frame", "last_frame", "fps", "clip_fps", "stills_path",
            "clip_width", "clip_height", "source_path", "sha256", "width", "height", "clip_id")
_SHM = None  # the worker process's view of the shared frame slots
_KEYDEC: KeyframeDecoder | None = None  # the worker's long-lived hardware decoder, if any


def _worker_init(shm_name: str, hwaccel: str | None = None) -> None:
    global _SHM, _KEYDEC

    cv2.setNumThreads(1)
    _SHM = shared_memory.SharedMemory(name=shm_name)
    if hwaccel:
        try:
            _KEYDEC = KeyframeDecoder(hwaccel)
        except Exception as e:  # noqa: BLE001 - no such device here: decode on the CPU
            logging.getLogger(__name__).warning("no %s video decoder (%s); decoding on the CPU", hwaccel, e)


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return DecodeError(f"{type(exc).__name__}: {exc}")


def _decode_to_slots(tasks: list[tuple[dict, int, int]], slot_bytes: int,
                     scale: ScaleToModel | None) -> list[tuple[tuple, str] | BaseException]:
    """Worker: for each (row, K, slot), read the clip (its sha256) and decode its K frames (from the
    stills file when there is a readable one, else from the clip) and write them into its slot,
    center squares (or, with `scale`, the model's input) one after the other; per clip (shape,
    sha256) or the exception that failed it (a bad clip fails its row only)."""
    out: list[tuple[tuple, str, bool] | BaseException] = []
    for row, k, slot in tasks:
        try:
            data, digest = read_clip(row)
            hw_before = _KEYDEC.clips if _KEYDEC is not None else 0
            frames, source = scoring_frames(row, data, k, scale or to_rgb, _KEYDEC)
            sq = frames if scale else [square_frame(f) for f in frames]
            shape = (len(sq), *sq[0].shape)
            view = np.ndarray(shape, dtype=np.uint8, buffer=_SHM.buf, offset=slot * slot_bytes)
            for i, f in enumerate(sq):
                view[i] = f
            del view
            out.append((shape, digest, _KEYDEC is not None and _KEYDEC.clips > hw_before, source == "stills"))
        except Exception as exc:  # noqa: BLE001
            out.append(_picklable(exc))
    return out


class FrameDecoder:
    """Decodes clips in worker processes (PyAV holds the GIL while decoding, so threads do not
    scale) into slots of one shared-memory block; the caller reads the frames in place and frees
    the slot once they are copied to the device. Several clips travel per worker task (fewer
    round trips through the pool; the main process spent ~0.5 ms of CPU per task).

    `scale`: frames leave the workers at the model's input size (ScaleToModel); None: center
    squares at most MAX_SIDE, resized on the device."""

    MAX_CLIPS_PER_TASK = 8

    def __init__(self, workers: int, k: int, n_slots: int, scale: ScaleToModel | None = None,
                 hwaccel: str | None = None):
        self.k = k
        self.scale = scale
        side = scale.size if scale else MAX_SIDE
        self.slot_bytes = k * side * side * 3
        try:
            self.shm = shared_memory.SharedMemory(create=True, size=self.slot_bytes * n_slots)
        except OSError as e:
            raise RuntimeError(
                f"cannot allocate {self.slot_bytes * n_slots / 2**20:.0f} MiB of shared memory for frame decoding "
                f"({e}); give the worker a larger /dev/shm or lower filters.clip_batch_size / filters.decode_threads"
            ) from e
        self.n_slots = n_slots
        self.free = list(range(n_slots))
        self.workers = workers
        self.hwaccel = hwaccel
        self.hw_clips = 0  # clips whose frames the hardware decoder gave
        self.stills_clips = 0  # clips whose frames came from their stills file
        self.pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                        initargs=(self.shm.name, hwaccel))

    def submit_many(self, rows: list[tuple[dict, int]]) -> list[tuple[Future, int, int]]:
        """Queue (row, K) pairs, as many as there are free slots, several per task; per submitted
        row (future, position in the future's result, slot)."""
        rows = rows[:len(self.free)]
        if not rows:
            return []
        per_task = max(1, min(self.MAX_CLIPS_PER_TASK, len(rows) // self.workers))
        jobs: list[tuple[Future, int, int]] = []
        for start in range(0, len(rows), per_task):
            chunk = [({key: row.get(key) for key in ROW_KEYS}, k, self.free.pop())
                     for row, k in rows[start:start + per_task]]
            fut = self.pool.submit(_decode_to_slots, chunk, self.slot_bytes, self.scale)
            jobs.extend((fut, i, slot) for i, (_, _, slot) in enumerate(chunk))
        return jobs

    def result(self, job: tuple[Future, int, int]) -> tuple[tuple, str]:
        """(shape, sha256) of a submitted row; raises the row's own error (or BrokenProcessPool)."""
        fut, i, _slot = job
        res = fut.result()[i]
        if isinstance(res, BaseException):
            raise res
        shape, digest, hw, stills = res
        self.hw_clips += hw
        self.stills_clips += stills
        return shape, digest

    def frames(self, slot: int, shape: tuple) -> np.ndarray:
        return np.ndarray(shape, dtype=np.uint8, buffer=self.shm.buf, offset=slot * self.slot_bytes)

    def release(self, slot: int) -> None:
        self.free.append(slot)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        try:
            self.shm.close()
            self.shm.unlink()
        except (BufferError, FileNotFoundError):
            pass


class DecodeAhead:
    """One stage call's clips through the decoder into model batches: decoding runs ahead of the
    model as far as free slots allow, and a slot goes back once its frames are embedded.

    ``embed(frames)`` runs one model batch and returns (embeddings, aesthetic values); ``fail(row,
    exc)`` turns a row whose clip cannot be decoded into a failed row (it fails alone)."""

    def __init__(self, dec: FrameDecoder, rows: list[dict], frames_of: Callable[[dict], int], batch: int,
                 embed: Callable, fail: Callable[[dict, BaseException], dict]):
        self.dec, self.rows, self.frames_of, self.batch, self.embed, self.fail = dec, rows, frames_of, batch, embed, fail
        self.jobs: list[tuple[Future, int, int]] = []
        self.out: list[dict] = []  # failed rows, in order
        self.good: list[tuple[dict, int, int, str]] = []  # row, first frame position, frame count, sha256
        self.embs: list = []
        self.aes: list = []
        self.pending: list[np.ndarray] = []
        self.pending_slots: list[int] = []  # slots whose frames are (partly) in `pending`
        self.n_frames = 0
        self.handled = 0  # rows[:handled] are in `out` (failed) or in `good`

    def run(self) -> None:
        """Decode and embed every row (BrokenProcessPool and model errors propagate)."""
        self.submit_more()
        for j, row in enumerate(self.rows):
            while j >= len(self.jobs):  # every slot held by frames waiting for a full batch: run it short
                if not self.pending:
                    raise RuntimeError("frame decoder has no free slot and nothing to flush")
                self.flush(len(self.pending))
            self._take(j, row)
            while len(self.pending) >= self.batch:
                self.flush(self.batch)
        if self.pending:
            self.flush(len(self.pending))

    def submit_more(self) -> None:
        if len(self.jobs) < len(self.rows) and self.dec.free:
            todo = self.rows[len(self.jobs):len(self.jobs) + len(self.dec.free)]
            self.jobs.extend(self.dec.submit_many([(row, self.frames_of(row)) for row in todo]))

    def flush(self, count: int) -> None:
        e, a = self.embed(self.pending[:count])  # copies to pinned memory, then runs asynchronously
        self.embs.append(e)
        self.aes.append(a)
        self.pending = self.pending[count:]
        keep = {self.pending_slots[-1]} if self.pending else set()  # a clip split across two batches keeps its slot
        for slot in self.pending_slots:
            if slot not in keep:
                self.dec.release(slot)
        self.pending_slots = list(keep)
        self.submit_more()

    def _take(self, j: int, row: dict) -> None:
        """Row j's decoded frames join the pending batch (or the row fails alone)."""
        slot = self.jobs[j][2]
        try:
            shape, digest = self.dec.result(self.jobs[j])
        except BrokenProcessPool:
            raise
        except Exception as exc:  # noqa: BLE001 - an unreadable clip fails its row only
            self.dec.release(slot)
            self.submit_more()
            self.out.append(self.fail(row, exc))
            self.handled += 1
            return
        frames = self.dec.frames(slot, shape)
        self.good.append((row, self.n_frames, len(frames), digest))
        self.handled += 1
        self.n_frames += len(frames)
        self.pending.extend(frames)
        self.pending_slots.append(slot)

    def failed_all(self, exc: BaseException) -> list[dict]:
        """Every row failed by ``exc`` (after a model error or a dead decoder), decode failures kept."""
        return (self.out + [self.fail(row, exc) for row, *_ in self.good]
                + [self.fail(row, exc) for row in self.rows[self.handled:]])
