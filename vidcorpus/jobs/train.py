"""Driver side of training: pick shards with a catalog query, run the loop, record what it saw."""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass

import duckdb
import fsspec
import pyarrow.parquet as pq
import torch.distributed as dist

from vidcorpus.catalog.store import Catalog
from vidcorpus.catalog.train_samples import parquet_paths
from vidcorpus.config import Config
from vidcorpus.ids import new_run_id
from vidcorpus.jobs.curate.pipeline import init_ray
from vidcorpus.jobs.encode import LatentCacheMissing, cached_specs
from vidcorpus.jobs.models import resolve_models, resolve_refiner
from vidcorpus.jobs.shard_selection import select_training_shards
from vidcorpus.train.checkpoint import read_state, resolve_resume
from vidcorpus.train.launch import broadcast, init_torchrun, launch_ray
from vidcorpus.train.sample_log import list_parts

logger = logging.getLogger(__name__)


@dataclass
class TrainingSummary:
    run_id: str
    steps: int
    losses: list[float]
    distinct_clips: int
    n_shards: int
    checkpoint_dir: str
    seconds: float
    run_dir: str = ""


def use_latent_cache(cfg: Config, specs: list) -> tuple[list, str]:
    """Swap the shards for their latent-cache sidecars when every one has an entry for this run's
    cache key (``train.latent_cache``: auto / require / off). Returns (specs, a note for the log)."""
    if cfg.train.latent_cache == "off":
        return specs, ""
    sidecars, key, missing = cached_specs(cfg, specs)
    if sidecars is not None:
        return sidecars, f" (cached latents {key})"
    if cfg.train.latent_cache == "require":
        raise LatentCacheMissing(
            f"train.latent_cache=require but {len(missing)} of {len(specs)} shards have no latent-cache entry "
            f"for key {key} (encoders, {cfg.train.height}x{cfg.train.width}, {cfg.train.num_frames} frames at "
            f"{cfg.train.fps} fps, caption {cfg.train.caption_version or cfg.shards.caption_version}/"
            f"{cfg.train.caption_kind}); run `vidcorpus shards encode` with the same settings first")
    return specs, ""


def follow_selection(cfg: Config):
    """``--follow``: a callable giving the query's current answer (shard specs, clip ids), latent-cache
    sidecars swapped in as at the start; rank 0 asks the catalog and every rank gets its answer."""
    if cfg.train.release:
        raise ValueError("--follow follows a --select query; a release is fixed (create a new release instead)")
    def refresh() -> tuple[list, set[str]]:
        answer = None
        if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
            specs, keys, _what = select_training_shards(cfg)
            answer = (use_latent_cache(cfg, specs)[0], keys)
        return broadcast(answer)

    return refresh


def catalog_snapshot(cfg: Config) -> dict:
    """Facts that pin down which catalog state a run selected from (recorded in every checkpoint)."""
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        latest = cat.query_dicts("SELECT run_id, kind, started_at FROM runs ORDER BY started_at DESC LIMIT 1")
        return {"path": cfg.catalog_path, "schema_version": cat.schema_version,
                "latest_run_id": latest[0]["run_id"] if latest else None,
                "latest_run_kind": latest[0]["kind"] if latest else None}


def run_dir_of(checkpoint: str) -> str:
    """{run}/checkpoints/step-N -> {run}."""
    parts = checkpoint.rstrip("/").rsplit("/", 2)
    return parts[0] if len(parts) == 3 and parts[1] == "checkpoints" else checkpoint.rstrip("/")


def _stage_parts(cfg: Config, stage: str):
    """(config with the stage's section as ``train``, that section, a function giving the model
    directory, loop function). The model is resolved (for ``tiny``: built) only once the selection
    has been checked, so a mistake in ``--select`` or ``--release`` fails before any model work."""
    if stage == "refiner":
        from vidcorpus.train.refiner import train_refiner  # inside: only the stage that trains loads its model code

        # The selection, the follow query and the log read the refiner's section where the base reads train.
        scfg = cfg.model_copy(update={"train": cfg.refiner})
        return scfg, cfg.refiner, lambda: resolve_refiner(cfg.models).refiner, train_refiner
    from vidcorpus.train.loop import train_base  # inside: only the stage that trains loads its model code

    return cfg, cfg.train, lambda: resolve_models(cfg.models).i2vgen, train_base


def run_training(cfg: Config, output: str | None = None, progress: bool = True,
                 resume: str | None = None, stage: str = "base") -> TrainingSummary:
    """Select shards, train (in this process, under torchrun, or on Ray Train workers), record the run.

    ``stage``: "base" (``cfg.train``, the I2VGen-XL UNet) or "refiner" (``cfg.refiner``, the UNet3D
    refiner, initialised from ``models.refiner``); both run the same loop and launchers.
    ``resume``: "latest" (the newest checkpoint of ``output``), or a run or checkpoint URL; the run
    keeps its run id and directory and continues with the next unseen samples.
    """
    distributed = init_torchrun()
    scfg, tcfg, model_dir_of, train_fn = _stage_parts(cfg, stage)
    run_id = None
    if resume and resume not in ("latest", "auto"):
        ckpt = resolve_resume(resume)
        run_id = read_state(ckpt).get("data", {}).get("run_id")
        output = output or run_dir_of(ckpt)
    elif resume and not output:
        raise ValueError("--resume latest needs the run directory: pass --output (or give --resume a path)")
    follow = follow_selection(scfg) if tcfg.follow else None
    run_id = broadcast(run_id or new_run_id())
    started = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    specs, keys, what = select_training_shards(scfg)
    model_dir = model_dir_of()
    if stage == "base":  # the refiner's loss decodes pixels (crops of high-resolution frames): no cache
        specs, cache_note = use_latent_cache(cfg, specs)
        what += cache_note
    urls = [s.url for s in specs]
    out_dir = output or cfg.url("train", run_id)
    run_info = {"run_id": run_id, "stage": stage, "selection": what, "release": tcfg.release, "select": tcfg.select,
                "catalog": catalog_snapshot(cfg)}
    rank = 0
    if distributed:
        rank = dist.get_rank()
    if rank == 0:
        detail = (f", {tcfg.crop_width}x{tcfg.crop_height} crops of {tcfg.width}x{tcfg.height}, t_max {tcfg.t_max}"
                  if stage == "refiner" else "")
        logger.info(f"{'refiner' if stage == 'refiner' else 'training'} run {run_id}: {len(keys)} clips in {len(urls)} "
                    f"shards ({what}) -> {out_dir}{detail}" + (f", resuming {resume}" if resume else ""))
    if tcfg.launcher == "ray" and not distributed:
        init_ray(cfg)
        result = launch_ray(tcfg, model_dir, specs, out_dir, keys=keys, resume=resume, run_info=run_info,
                            stage=stage, follow=follow)
    else:
        result = train_fn(tcfg, model_dir, specs, out_dir, progress=progress, keys=keys,
                          resume=resume, run_info=run_info, follow=follow)
    files = sample_files(result)
    losses, distinct_clips = log_stats(files)
    if rank == 0:
        record_run(cfg, run_id, stage, what, result, urls, json.dumps(tcfg.model_dump()), started, files, losses)
    return TrainingSummary(run_id=run_id, steps=result.steps, losses=losses, distinct_clips=distinct_clips,
                           n_shards=len(urls), checkpoint_dir=result.checkpoint_dir, seconds=result.seconds,
                           run_dir=out_dir)


def record_run(cfg: Config, run_id: str, stage: str, what: str, result, urls: list[str], config_json: str,
               started: dt.datetime, files: list[dict], losses: list[float]) -> None:
    """The run into the catalog: train_runs, train_samples read by DuckDB from the run's sample log
    (replacing the run's rows from the first step the log covers: exact across resumes), its decode
    failures."""
    with Catalog(cfg.catalog_path) as cat:
        cat.record_training(run_id, stage, what, result.steps, losses[-1] if losses else None, result.checkpoint_dir,
                            urls, config_json, started, None, files=files)
        for key, cls, msg in result.decode_failures:  # every rank's, gathered into the checkpoint
            cat.record_failure(key, "train_decode", cls, msg, run_id)


def log_stats(files: list[dict]) -> tuple[list[float], int]:
    """(one loss per step, how many distinct clips) of a run's sample-log parts, aggregated by DuckDB
    over the Parquet files: the driver never holds the run's history."""
    if not files:
        return [], 0
    con = duckdb.connect()
    try:
        with parquet_paths(con, [f["url"] for f in files]) as paths:
            losses = [r[0] for r in con.execute(
                "SELECT any_value(loss) FROM read_parquet(?) GROUP BY step ORDER BY step", [paths]).fetchall()]
            [(distinct,)] = con.execute("SELECT count(DISTINCT clip_id) FROM read_parquet(?)", [paths]).fetchall()
    finally:
        con.close()
    return losses, distinct


def sample_files(result) -> list[dict]:
    """The sample-log parts ``train_samples`` is filled from (steps below the run's final step)."""
    out = []
    for part in list_parts(result.run_dir):
        if part.end <= result.steps:
            with fsspec.open(part.url, "rb") as f:
                rows = pq.read_metadata(f).num_rows
            out.append({"rank": part.rank, "url": part.url, "first_step": part.start, "end_step": part.end,
                        "rows": rows})
    return out
