"""The caption actors of a run: created once, fed by the driver with kept, deduplicated clips.

Captioning is the costliest stage, so it runs on clips that are still kept after their sources'
duplicates were scored (a duplicate is never captioned). That decision is made by the driver, after
the commit, so captioning cannot sit inside the Ray Data stream that ingests and scores; instead the
runner starts ``replicas`` actors of the caption stages (the captioner, then caption alignment) for
the whole run and hands them full batches, or what is queued when an actor would otherwise sit idle.
Each actor loads its models once and compiles once per batch shape for the whole job (the compiled
decoding step serves every shape after its second; captioning/fast_decode.py). At most ``ray.caption_batches_in_flight`` batches wait at each actor,
so its GPU always has the next batch while the driver commits the last one; when all are busy the
driver waits, which stops it taking results from the stream, and Ray Data's backpressure then slows
the stages upstream.
"""

from __future__ import annotations

import threading
import time

import pyarrow as pa

from vidcorpus import stage_clock
from vidcorpus.config import Config
from vidcorpus.schemas import rows_to_table
from vidcorpus.stage import Stage
from vidcorpus.stage_settings import StagePlan


class StageChain:
    """One worker that runs several stages in turn on each batch (a Ray actor's class).

    Called from several threads at once (a threaded actor, ``captioning.read_ahead``), a batch whose
    first stage can ``read_ahead`` (the caption stage: its clips' frames) does that first, outside the
    chain's lock, while the batch before it holds the lock and the model; the stages themselves (their
    set-up, models and GPU) run one batch at a time."""

    def __init__(self, cfg: Config, stage_classes: list[type[Stage]]):
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
    """``submit`` batches of clip rows; ``results`` gives captioned batches back as they finish."""

    def __init__(self, cfg: Config, stage_classes: list[type[Stage]], plan: StagePlan, ray_args: dict,
                 in_flight_per_actor: int):
        import ray  # inside: ray loads only when captions stream (pipeline.py imports this module at its top, ray-free)

        if cfg.captioning.read_ahead and in_flight_per_actor > 1:
            ray_args = dict(ray_args, max_concurrency=2)  # a batch reads its frames while the one before captions
        remote = ray.remote(**ray_args)(StageChain)
        self.actors = [remote.remote(cfg, stage_classes) for _ in range(max(1, plan.replicas))]
        self.batch_rows = plan.batch_rows
        self.limit = max(1, in_flight_per_actor) * len(self.actors)
        self.pending: dict = {}  # ObjectRef -> actor index
        self.queued: list[dict] = []
        # Each actor sets up now, while the ingest stages run: an empty batch loads its models (and,
        # with captioning.warmup, compiles; captioning/caption_stage.py) and comes back as a carrier row of
        # its setup event and time, which the driver commits like any result.
        for a, actor in enumerate(self.actors):
            self.pending[actor.__call__.remote(rows_to_table([]))] = a

    def add(self, rows: list[dict]) -> list[pa.Table]:
        """Queue rows; full batches go to the actors, and so does what is queued when an actor has
        nothing to do (a GPU never waits for a batch to fill). Returns the batches that finished
        meanwhile (waiting for one when every actor already has its share queued)."""
        self.queued.extend(rows)
        done: list[pa.Table] = []
        while len(self.queued) >= self.batch_rows:
            done += self._submit(self.queued[:self.batch_rows])
            self.queued = self.queued[self.batch_rows:]
        return done + self.poll()

    def _idle(self) -> bool:
        busy = set(self.pending.values())
        return len(busy) < len(self.actors)

    def flush(self, timeout: float | None = None) -> list[pa.Table]:
        """Submit what is queued (a last, partial batch) and wait for every batch, or for at most
        ``timeout`` seconds (``pending`` then says whether batches are still out)."""
        done: list[pa.Table] = []
        if self.queued:
            done += self._submit(self.queued)
            self.queued = []
        until = None if timeout is None else time.time() + timeout
        while self.pending:
            done += self._wait(timeout=None if until is None else max(0.0, until - time.time()))
            if until is not None and time.time() >= until:
                break
        return done

    def poll(self) -> list[pa.Table]:
        """Finished batches, without waiting; an actor left idle gets what is queued."""
        done = self._wait(timeout=0) if self.pending else []
        if self.queued and self._idle():
            done += self._submit(self.queued)
            self.queued = []
        return done

    def _submit(self, rows: list[dict]) -> list[pa.Table]:
        done: list[pa.Table] = []
        while len(self.pending) >= self.limit:
            done += self._wait(timeout=None)
        load = [0] * len(self.actors)
        for a in self.pending.values():
            load[a] += 1
        a = load.index(min(load))  # the least busy actor
        self.pending[self.actors[a].__call__.remote(rows_to_table(rows))] = a
        return done

    def _wait(self, timeout: float | None) -> list[pa.Table]:
        import ray  # inside: ray loads only when captions stream (pipeline.py imports this module at its top, ray-free)

        ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=timeout)
        out = []
        for ref in ready:
            self.pending.pop(ref)
            out.append(ray.get(ref))  # a stage error (not a row's) ends the run, as in the stream
        return out

    def close(self) -> None:
        import ray  # inside: ray loads only when captions stream (pipeline.py imports this module at its top, ray-free)

        for a in self.actors:
            ray.kill(a)
        self.actors = []
