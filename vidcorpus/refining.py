"""Driver side of the refiner stage and the cascade: select high-resolution shards, train the refiner
with the base stage's loop and launchers, record the run; generate a video with both stages."""

from __future__ import annotations

import datetime as dt
import json
from typing import Callable

from vidcorpus.config import Config
from vidcorpus.ids import new_run_id
from vidcorpus.presets import resolve_refiner
from vidcorpus.training import TrainingSummary, catalog_snapshot, run_dir_of, select_training_shards


def run_refiner_training(cfg: Config, output: str | None = None, progress: bool = True,
                         log: Callable[[str], None] = print, resume: str | None = None) -> TrainingSummary:
    """Train the refiner (``cfg.refiner``, initialised from ``models.refiner``) on the clips that
    ``refiner.release`` / ``refiner.select`` choose; in this process, under torchrun, or on Ray Train."""
    from vidcorpus.catalog.store import Catalog
    from vidcorpus.train.checkpoint import read_state, resolve_resume
    from vidcorpus.train.launch import broadcast, init_torchrun, launch_ray
    from vidcorpus.train.refiner import train_refiner

    distributed = init_torchrun()
    models = resolve_refiner(cfg.models)
    rcfg = cfg.refiner
    run_id = None
    if resume and resume not in ("latest", "auto"):
        ckpt = resolve_resume(resume)
        run_id = read_state(ckpt).get("data", {}).get("run_id")
        output = output or run_dir_of(ckpt)
    elif resume and not output:
        raise ValueError("--resume latest needs the run directory: pass --output (or give --resume a path)")
    run_id = broadcast(run_id or new_run_id())
    started = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    specs, keys, what = select_training_shards(cfg.model_copy(update={"train": rcfg}))
    urls = [s.url for s in specs]
    out_dir = output or cfg.url("train", run_id)
    run_info = {"run_id": run_id, "stage": "refiner", "selection": what, "release": rcfg.release,
                "select": rcfg.select, "catalog": catalog_snapshot(cfg)}
    rank = 0
    if distributed:
        import torch.distributed as dist

        rank = dist.get_rank()
    if rank == 0:
        log(f"refiner run {run_id}: {len(keys)} clips in {len(urls)} shards ({what}) -> {out_dir}, "
            f"{rcfg.crop_width}x{rcfg.crop_height} crops of {rcfg.width}x{rcfg.height}, t_max {rcfg.t_max}"
            + (f", resuming {resume}" if resume else ""))
    if rcfg.launcher == "ray" and not distributed:
        from vidcorpus.runner import init_ray

        init_ray(cfg)
        result = launch_ray(rcfg, models.refiner, specs, out_dir, keys=keys, resume=resume, run_info=run_info,
                            stage="refiner")
    else:
        result = train_refiner(rcfg, models.refiner, specs, out_dir, progress=progress, keys=keys, resume=resume,
                               run_info=run_info)
    if rank == 0:
        with Catalog(cfg.catalog_path) as cat:
            cat.record_training(run_id, "refiner", what, result.steps, result.losses[-1] if result.losses else None,
                                result.checkpoint_dir, urls, json.dumps(rcfg.model_dump()), started,
                                list(result.step_keys))
            for key, cls, msg in result.decode_failures:
                cat.record_failure(key, "train_decode", cls, msg, run_id)
    return TrainingSummary(run_id=run_id, steps=result.steps, losses=result.losses,
                           distinct_clips=len({k for _s, k in result.step_keys}), n_shards=len(urls),
                           checkpoint_dir=result.checkpoint_dir, seconds=result.seconds, run_dir=out_dir)


def generate_video(cfg: Config, image: str, prompt: str, short_prompt: str | None, base: str, refiner: str,
                   output: str, progress: bool = True):
    """Run the cascade and write the mp4; returns the ``CascadeResult``."""
    from vidcorpus.train.cascade import generate
    from vidcorpus.train.export import write_mp4

    from vidcorpus.presets import resolve_models

    needs_base = not _is_export(base)
    needs_refiner = not _is_export(refiner)
    models = resolve_models(cfg.models, build=False)  # only the components a checkpoint needs are built
    if cfg.models.preset == "tiny" and (needs_base or needs_refiner):
        from vidcorpus.train.models import build_tiny_i2vgen
        from vidcorpus.train.refiner import build_tiny_refiner

        if not _is_export(models.i2vgen):
            build_tiny_i2vgen(models.i2vgen)
        if needs_refiner and not _is_export(models.refiner):
            build_tiny_refiner(models.refiner, models.i2vgen)
    result = generate(image, prompt, short_prompt, base, refiner, cfg.generate,
                      i2vgen_dir=models.i2vgen if needs_base else None,
                      refiner_dir=models.refiner if needs_refiner else None,
                      refiner_t_max=cfg.refiner.t_max, progress=progress)
    write_mp4(result.frames, cfg.generate.fps, output)
    return result


def _is_export(path: str) -> bool:
    from pathlib import Path

    return (Path(path.removeprefix("file://")) / "model_index.json").exists()
