"""The data stream of a training run: epoch after epoch of batches, and where it stands (the cursor).

Each epoch's sample order is a pure function of (seed, epoch, rank, shard list, selected keys,
shuffle buffer, DataLoader worker count), so a checkpoint stores only the cursor (see
``train/loop.py``'s docstring) and a resumed run rebuilds the stream from it. ``Prefetcher`` reads
ahead on a thread; ``Selection`` is the shards and keys an epoch streams (asked again at each epoch
boundary with ``--follow``).
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from vidcorpus.config import TrainConfig
from vidcorpus.shard_reader import as_specs
from vidcorpus.train.data import EpochBatches, OnError


class NoTrainableSamples(RuntimeError):
    """A full pass over the shards produced no batch (every sample failed or none was selected)."""


@dataclass
class DataCursor:
    """Where a rank's stream stands: epoch ``epoch``, at ``position`` (see ``EpochBatches.position``);
    ``batches`` batches of that epoch trained on (informational)."""

    epoch: int = 0
    batches: int = 0
    position: dict | None = None

    def snapshot(self) -> dict:
        return {"epoch": self.epoch, "batches": self.batches, "position": self.position}


@dataclass
class StreamMark:
    """The stream's state right after one batch was produced: the cursor to record once that batch
    is trained on, and the selection it came from (a prefetching thread runs ahead of training, so
    the live stream's state is not the consumed one)."""

    cursor: DataCursor
    fingerprint: str
    urls: list
    joined: int = 0


@dataclass
class _Raised:
    """What the prefetched iterator raised, handed to the consumer in its place."""

    error: BaseException


class Prefetcher:
    """Pulls items of an iterator on a thread, ``depth`` ahead, so reading, parsing and collating the
    next batch overlap the current step (the step ends in a host sync for the loss). Exceptions
    reach the consumer at the item where they happened. ``pin``: page-locked tensors, so the copy to
    the GPU can be asynchronous."""

    _END = object()

    def __init__(self, it: Iterator, depth: int, pin: bool = False):
        self.it, self.pin = it, pin
        self.q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="vidcorpus-prefetch", daemon=True)
        self.thread.start()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self.it:
                if self.pin:
                    batch, mark = item
                    item = ({k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}, mark)
                if not self._put(item):
                    break
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._put(_Raised(e))
        finally:
            self._put(self._END)
            close = getattr(self.it, "close", None)
            if close is not None:
                close()

    def __iter__(self):
        return self

    def __next__(self):
        item = self.q.get()
        if item is self._END:
            raise StopIteration
        if isinstance(item, _Raised):
            raise item.error
        return item

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


@dataclass
class Selection:
    """The shards and clip ids an epoch streams. With ``follow`` the selection is asked again at
    every epoch boundary, so shards sealed since the run started join the next pass."""

    urls: list
    keys: set[str] | None
    fingerprint: str = ""
    joined: int = 0  # shards that joined after the start (follow)

    def __post_init__(self):
        self.fingerprint = self.fingerprint or data_fingerprint(self.urls, self.keys)

    def update(self, urls: list, keys) -> int:
        """Adopt a fresh answer of the query; returns how many shards are new."""
        before = {s.url for s in as_specs(self.urls)}
        new = sum(s.url not in before for s in as_specs(urls))
        self.urls, self.keys = list(urls), (set(keys) if keys is not None else None)
        self.fingerprint = data_fingerprint(self.urls, self.keys)
        self.joined += new
        return new


def batches_forever(urls: list, cfg: TrainConfig, keys, on_error: OnError | None,
                     cursor: DataCursor, follow=None, selection: Selection | None = None
                     ) -> Iterator[tuple[dict, StreamMark]]:
    """Epoch after epoch of the stream, starting at ``cursor``: (batch, the stream's mark right after
    it); each failing key is reported once, not once per epoch. ``follow()`` -> (urls, keys), called
    at each epoch boundary, replaces the selection (``selection`` records it)."""
    reported: set[str] = set()

    def report(key: str, exc: Exception) -> None:
        if key not in reported:
            reported.add(key)
            if on_error is not None:
                on_error(key, exc)

    epoch, skip, done = cursor.epoch, cursor.position, cursor.batches
    while True:
        stream = EpochBatches(urls, cfg, epoch=epoch, keys=keys, on_error=report, skip=skip)
        n = 0
        for batch in stream:
            n += 1
            mark = StreamMark(DataCursor(epoch, done + n, stream.position()),
                              selection.fingerprint if selection else "", selection.urls if selection else urls,
                              selection.joined if selection else 0)
            yield batch, mark
        if n == 0 and not skip:
            raise NoTrainableSamples(
                f"no trainable sample in {len(urls)} shard(s)" + (f"; {len(reported)} failed to decode" if reported else ""))
        epoch, skip, done = epoch + 1, None, 0
        if follow is not None:
            urls, keys = follow()
            if selection is not None:
                new = selection.update(urls, keys)
                if new:
                    logging.getLogger(__name__).info("follow: %d new shard(s) join epoch %d", new, epoch + 1)


def data_fingerprint(shard_urls: list, keys: Iterable[str] | None) -> str:
    h = hashlib.sha256()
    for spec in as_specs(shard_urls):
        h.update(f"{spec.url}\0{spec.sha256}\n".encode())
    h.update(b"--keys--\n")
    for k in sorted(keys) if keys is not None else ["<all>"]:
        h.update(k.encode() + b"\n")
    return h.hexdigest()
