"""Driver side of training: pick shards with a catalog query, run the loop, record what it saw."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Callable

from vidcorpus.config import Config
from vidcorpus.ids import new_run_id
from vidcorpus.presets import resolve_models


class NoTrainingData(RuntimeError):
    """The selection matched no sharded clip."""


@dataclass
class TrainingSummary:
    run_id: str
    steps: int
    losses: list[float]
    distinct_clips: int
    n_shards: int
    checkpoint_dir: str
    seconds: float


def run_training(cfg: Config, output: str | None = None, progress: bool = True,
                 log: Callable[[str], None] = print) -> TrainingSummary:
    from vidcorpus.catalog.store import Catalog
    from vidcorpus.train.loop import train_base

    models = resolve_models(cfg.models)
    run_id = new_run_id()
    started = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    predicate = f"shard_id IS NOT NULL AND ({cfg.train.select})"
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        shards = cat.shard_urls_for(predicate)
        keys = cat.clip_ids_for(predicate)
    if not shards:
        raise NoTrainingData(f"no sharded clip matches --select {cfg.train.select!r} in {cfg.catalog_path}")
    urls = [u for u, _sha, _n in shards]
    log(f"training run {run_id}: {len(keys)} clips in {len(urls)} shards match {cfg.train.select!r}")
    out_dir = output or cfg.url("train", run_id)
    errors: list[tuple[str, str, str]] = []

    def on_error(key: str, exc: Exception) -> None:
        from vidcorpus.errors import classify_error

        errors.append((key, classify_error(exc), f"{type(exc).__name__}: {exc}"))

    result = train_base(cfg.train, models.i2vgen, urls, out_dir, on_error=on_error, progress=progress, keys=keys)
    with Catalog(cfg.catalog_path) as cat:
        cat.record_training(run_id, "base", cfg.train.select, result.steps, result.losses[-1] if result.losses else None,
                            result.checkpoint_dir, urls, json.dumps(cfg.train.model_dump()), started,
                            list(result.step_keys))
        for key, cls, msg in errors:
            cat.record_failure(key, "train_decode", cls, msg, run_id)
    return TrainingSummary(run_id=run_id, steps=result.steps, losses=result.losses,
                           distinct_clips=len({k for _s, k in result.step_keys}), n_shards=len(urls),
                           checkpoint_dir=result.checkpoint_dir, seconds=result.seconds)
