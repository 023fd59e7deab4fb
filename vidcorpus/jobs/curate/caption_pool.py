"""The caption actors of a run: created once, fed by the driver with kept, deduplicated clips.

Captioning is the costliest stage, so it runs on clips that are still kept after their sources'
duplicates were scored (a duplicate is never captioned). That decision is made by the driver, after
the commit, so captioning cannot sit inside the Ray Data stream that ingests and scores; instead the
runner starts ``replicas`` actors of the caption stages (the captioner, then caption alignment) for
the whole run and hands them full batches, or what is queued when an actor would otherwise sit idle.
Each actor loads its models once and compiles once per batch shape for the whole job (the compiled
decoding step serves every shape after its second; captioning/fast_decode.py). At most ``ray.caption_batches_in_flight`` batches wait at each actor,
so its GPU always has the next batch while the driver commits the last one; further full batches
wait in the driver, which itself waits (it stops taking results from the stream, and Ray Data's
backpressure then slows the stages upstream) only when ``QUEUED_BATCHES`` batches a slot are queued,
and never while an actor still sets up (minutes of compile on a GPU), so the ingest goes on.
"""

from __future__ import annotations

import logging
import threading
import time

import pyarrow as pa

from vidcorpus import stage_clock
from vidcorpus.config import Config
from vidcorpus.schemas import rows_to_table
from vidcorpus.stage import Stage
from vidcorpus.stage_settings import StagePlan

logger = logging.getLogger(__name__)

QUIET_S = 60.0  # with a set-up or batches out and nothing back for this long, the driver says where captioning stands
QUEUED_BATCHES = 4  # full batches queued in the driver per in-flight slot before it waits (once actors are set up)


def _log_setup_to_stderr() -> None:
    """The caption stages' set-up lines (captioning/caption_stage.py: models, compile cache, warm-up
    shapes) into this actor's worker log (Ray's ``logs/worker-*.err``; the driver does not show
    workers' output): where a set-up that lasts minutes spends them."""
    log = logging.getLogger("vidcorpus.captioning.setup")
    if not log.handlers:
        handler = logging.StreamHandler()  # stderr
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


class StageChain:
    """One worker that runs several stages in turn on each batch (a Ray actor's class).

    Called from several threads at once (a threaded actor, ``captioning.read_ahead``), a batch whose
    first stage can ``read_ahead`` (the caption stage: its clips' frames) does that first, outside the
    chain's lock, while the batch before it holds the lock and the model; the stages themselves (their
    set-up, models and GPU) run one batch at a time."""

    def __init__(self, cfg: Config, stage_classes: list[type[Stage]]):
        _log_setup_to_stderr()
        self.stages = [cls(cfg) for cls in stage_classes]
        self.read_ahead = cfg.captioning.read_ahead and hasattr(self.stages[0], "read_ahead")
        self._lock = threading.Lock()

    def __call__(self, table: pa.Table) -> pa.Table:
        first = self.stages[0]
        ahead = read = None
        if table.num_rows and self.read_ahead:
            t0 = time.time()
            ahead = first.read_ahead(table)
            # its own step in the run's stage table (``<stage>_read``): it overlaps the batch before's
            # turn, so counted inside the stage it would be counted twice
            read = stage_clock.stamp(f"{first.name}_read", t0, time.time(), len(ahead), len(ahead))
        with self._lock:
            if ahead is not None:
                first.ahead = ahead
            try:
                for i, stage in enumerate(self.stages):
                    table = stage(table, before=read if i == 0 else None)
            finally:  # frames the stage did not take (no row to caption, an error) are not kept
                if ahead is not None:
                    first.ahead = None
        return table


class CaptionPool:
    """``add`` kept clip rows; ``add``, ``poll`` and ``flush`` give captioned batches back as they finish."""

    def __init__(self, cfg: Config, stage_classes: list[type[Stage]], plan: StagePlan, ray_args: dict,
                 in_flight_per_actor: int, quiet_s: float = QUIET_S):
        import ray  # inside: ray loads only when captions stream (pipeline.py imports this module at its top, ray-free)

        if cfg.captioning.read_ahead and in_flight_per_actor > 1:
            ray_args = dict(ray_args, max_concurrency=2)  # a batch reads its frames while the one before captions
        remote = ray.remote(**ray_args)(StageChain)
        self.actors = [remote.remote(cfg, stage_classes) for _ in range(max(1, plan.replicas))]
        self.batch_rows = plan.batch_rows
        self.limit = max(1, in_flight_per_actor) * len(self.actors)
        self.cap_rows = QUEUED_BATCHES * self.limit * self.batch_rows
        self.pending: dict = {}  # ObjectRef -> (actor index, when it went out)
        self.queued: list[dict] = []
        self.setting_up: set = set()  # the set-up calls not back yet (ObjectRefs)
        self.created_at = self.last_result_at = self.said_at = time.time()
        self.quiet_s = quiet_s
        # Each actor sets up now, while the ingest stages run: an empty batch loads its models (and,
        # with captioning.warmup, compiles; captioning/caption_stage.py) and comes back as a carrier row of
        # its setup event and time, which the driver commits like any result.
        for a, actor in enumerate(self.actors):
            ref = actor.__call__.remote(rows_to_table([]))
            self.pending[ref] = (a, time.time())
            self.setting_up.add(ref)

    def add(self, rows: list[dict]) -> list[pa.Table]:
        """Queue rows; full batches go to the actors while they have room, and so does what is queued
        when an actor has nothing to do (a GPU never waits for a batch to fill). Returns the batches
        that finished meanwhile. The driver waits (and so slows the stream: Ray Data's backpressure)
        only when more than ``QUEUED_BATCHES`` batches a slot are queued behind full actors, never
        while an actor still sets up: a compile must not stall the ingest (queued rows are small;
        their frames are read only when a batch goes out)."""
        self.queued.extend(rows)
        done = self._send_while_room()
        while len(self.queued) >= self.cap_rows and not self.setting_up:
            done += self._send(self.batch_rows)  # waits for a batch to come back first
        return done + self.poll()

    @property
    def busy(self) -> bool:
        """Batches out or rows queued: captioning is not done."""
        return bool(self.pending or self.queued)

    def _idle(self) -> bool:
        busy = {a for a, _ in self.pending.values()}
        return len(busy) < len(self.actors)

    def _batches_out(self) -> int:
        """Batches sent and not back (an actor's set-up call is not one)."""
        return len(self.pending) - len(self.setting_up)

    def _send_while_room(self, partial: bool = False) -> list[pa.Table]:
        """Send full batches (with ``partial``, a last short one too) while the actors have room."""
        done: list[pa.Table] = []
        while self._batches_out() < self.limit and (len(self.queued) >= self.batch_rows or (partial and self.queued)):
            done += self._send(self.batch_rows)
        return done

    def flush(self, timeout: float | None = None) -> list[pa.Table]:
        """Send what is queued (full batches, then a last, partial one) as the actors have room, and
        wait for every batch, or for at most ``timeout`` seconds (``busy`` then says whether batches
        are still out or queued); results are returned as they came, not held until the end."""
        done: list[pa.Table] = []
        until = None if timeout is None else time.time() + timeout
        while True:
            done += self._send_while_room(partial=True)
            if not self.pending or (until is not None and time.time() >= until):
                return done
            left = self.quiet_s if until is None else min(self.quiet_s, max(0.0, until - time.time()))
            done += self._wait(timeout=left)
            self._say_if_quiet()

    def poll(self) -> list[pa.Table]:
        """Finished batches, without waiting; full batches go out while there is room, and an actor
        left idle gets what is queued (at most a batch)."""
        done = self._wait(timeout=0) if self.pending else []
        done += self._send_while_room()
        if self.queued and self._idle():
            done += self._send(self.batch_rows)
        self._say_if_quiet()
        return done

    def _send(self, n: int) -> list[pa.Table]:
        """Submit the first ``n`` queued rows (or all, when fewer) as one batch."""
        rows, self.queued = self.queued[:n], self.queued[n:]
        return self._submit(rows)

    def _submit(self, rows: list[dict]) -> list[pa.Table]:
        done: list[pa.Table] = []
        while self._batches_out() >= self.limit:  # the driver waits here: it says why when that lasts
            done += self._wait(timeout=self.quiet_s)
            self._say_if_quiet()
        load = [0] * len(self.actors)
        for a, _ in self.pending.values():
            load[a] += 1
        a = load.index(min(load))  # the least busy actor
        self.pending[self.actors[a].__call__.remote(rows_to_table(rows))] = (a, time.time())
        return done

    def _wait(self, timeout: float | None) -> list[pa.Table]:
        import ray  # inside: ray loads only when captions stream (pipeline.py imports this module at its top, ray-free)

        ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=timeout)
        out = []
        for ref in ready:
            self.pending.pop(ref)
            self.setting_up.discard(ref)
            self.last_result_at = time.time()
            out.append(ray.get(ref))  # a stage error (not a row's) ends the run, as in the stream
        return out

    def _say_if_quiet(self) -> None:
        now = time.time()
        if self.pending and now - max(self.last_result_at, self.said_at) >= self.quiet_s:
            self.said_at = now
            logger.info(self.describe())

    def describe(self) -> str | None:
        """One line on where captioning stands (None when nothing is out or queued): actors still
        loading and compiling, batches out and for how long, clips queued. What a user sees when a
        job seems to stall after its last source is done (a compile slower than the stream)."""
        if not self.busy:
            return None
        now = time.time()
        parts = []
        if self.setting_up:
            parts.append(f"{len(self.setting_up)} of {len(self.actors)} caption actors still setting up "
                         f"(loading models, compiling; {now - self.created_at:.0f} s so far)")
        batches = [sent for ref, (_, sent) in self.pending.items() if ref not in self.setting_up]
        if batches:
            oldest = now - min(batches)
            parts.append(f"{len(batches)} caption batch{'es' if len(batches) != 1 else ''} out "
                         f"(the oldest for {oldest:.0f} s)")
        if self.queued:
            parts.append(f"{len(self.queued)} kept clips queued")
        return "captioning: " + "; ".join(parts)

    def close(self) -> None:
        import ray  # inside: ray loads only when captions stream (pipeline.py imports this module at its top, ray-free)

        for a in self.actors:
            ray.kill(a)
        self.actors = []
