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


def select_training_shards(cfg: Config) -> tuple[list, set[str], str]:
    """(shard specs with checksums, clip ids to train on, a description) from a release or a query.

    A release's shards come with the sha256 its manifest recorded; a query's with the catalog's.
    Either way the stream refuses a shard whose bytes no longer match.
    """
    from vidcorpus.catalog.store import Catalog
    from vidcorpus.shards.reader import ShardSpec, specs_from_manifest

    select = cfg.train.select
    if cfg.train.release:
        from vidcorpus.releases import release_manifest
        from vidcorpus.shards.release import read_release_clips

        manifest, root = release_manifest(cfg, cfg.train.release)
        specs = specs_from_manifest(manifest)
        keys = set(read_release_clips(root).column("clip_id").to_pylist())
        what = f"release {manifest['name']}"
        if select.strip().upper() != "TRUE":
            with Catalog(cfg.catalog_path, read_only=True) as cat:
                keys &= cat.clip_ids_for(select)
            what += f" where {select}"
    else:
        predicate = f"shard_id IS NOT NULL AND ({select})"
        with Catalog(cfg.catalog_path, read_only=True) as cat:
            specs = [ShardSpec(url=u, sha256=sha) for u, sha, _n in cat.shard_urls_for(predicate)]
            keys = cat.clip_ids_for(predicate)
        what = f"--select {select!r}"
    if not specs or not keys:
        raise NoTrainingData(f"no sharded clip matches {what} in {cfg.catalog_path}")
    return specs, keys, what


def run_training(cfg: Config, output: str | None = None, progress: bool = True,
                 log: Callable[[str], None] = print) -> TrainingSummary:
    from vidcorpus.catalog.store import Catalog
    from vidcorpus.train.loop import train_base

    models = resolve_models(cfg.models)
    run_id = new_run_id()
    started = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    specs, keys, what = select_training_shards(cfg)
    urls = [s.url for s in specs]
    log(f"training run {run_id}: {len(keys)} clips in {len(urls)} shards ({what})")
    out_dir = output or cfg.url("train", run_id)
    errors: list[tuple[str, str, str]] = []

    def on_error(key: str, exc: Exception) -> None:
        from vidcorpus.errors import classify_error

        errors.append((key, classify_error(exc), f"{type(exc).__name__}: {exc}"))

    result = train_base(cfg.train, models.i2vgen, specs, out_dir, on_error=on_error, progress=progress, keys=keys)
    with Catalog(cfg.catalog_path) as cat:
        cat.record_training(run_id, "base", what, result.steps, result.losses[-1] if result.losses else None,
                            result.checkpoint_dir, urls, json.dumps(cfg.train.model_dump()), started,
                            list(result.step_keys))
        for key, cls, msg in errors:
            cat.record_failure(key, "train_decode", cls, msg, run_id)
    return TrainingSummary(run_id=run_id, steps=result.steps, losses=result.losses,
                           distinct_clips=len({k for _s, k in result.step_keys}), n_shards=len(urls),
                           checkpoint_dir=result.checkpoint_dir, seconds=result.seconds)
