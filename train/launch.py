"""Launchers for the one training loop: torchrun (env://) and Ray Train's ``TorchTrainer``.

Either way each worker runs ``train_base`` with a ``torch.distributed`` process group up (NCCL on
GPUs, gloo on CPUs): DDP over the UNet, a split of the shards per rank, rank 0 writing checkpoints
and logs. The driver reads the outcome back from the final checkpoint (step, epochs, decode
failures of all ranks) and the run's sample log (losses and the (step, clip) rows of all ranks).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time

import torch
import torch.distributed as dist

from vidcorpus.config import RefinerTrainConfig, TrainConfig
from vidcorpus.train import checkpoint as ckpt_io
from vidcorpus.train.loop import TrainResult, train_base
from vidcorpus.train.refiner import train_refiner


def init_torchrun() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); True if distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend)
    return True


def broadcast(obj):
    """``obj`` of rank 0 on every rank (identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def result_from_checkpoint(ckpt: str, seconds: float, run_dir: str) -> TrainResult:
    """The outcome of a run whose workers are gone: the final checkpoint's facts; losses and clip ids
    come from the run's sample log (``TrainResult`` reads them on first use)."""
    state = ckpt_io.read_state(ckpt)
    return TrainResult(steps=int(state["step"]), checkpoint_dir=ckpt, seconds=seconds, epochs=int(state["epochs"]),
                       run_dir=run_dir, resumed_from=state.get("resumed_from"),
                       decode_failures=[list(f) for f in state.get("decode_failures", [])])


def _ray_worker(config: dict) -> None:
    """One Ray Train worker: Ray Train has set up the process group; run the loop."""
    logging.getLogger("vidcorpus").setLevel(logging.ERROR)  # per-rank decode warnings reach the state json
    if config.get("stage", "base") == "refiner":
        train_refiner(RefinerTrainConfig(**config["cfg"]), config["model_dir"], config["shards"], config["out_dir"],
                      progress=False, keys=config["keys"], resume=config["resume"], run_info=config["run_info"],
                      follow=config.get("follow"))
        return
    train_base(TrainConfig(**config["cfg"]), config["model_dir"], config["shards"], config["out_dir"],
               progress=False, keys=config["keys"], resume=config["resume"], run_info=config["run_info"],
               follow=config.get("follow"))


def launch_ray(cfg: TrainConfig, model_dir: str, shards: list, out_dir: str, keys=None, resume: str | None = None,
               run_info: dict | None = None, storage_path: str | None = None, stage: str = "base",
               follow=None) -> TrainResult:
    """Run ``train_base`` (or, ``stage="refiner"``, ``train_refiner``) on ``cfg.workers`` Ray Train workers
    (a GPU each when ``cfg.use_gpu`` and the cluster has GPUs; otherwise CPU workers over gloo). Ray
    must be initialised by the caller."""
    import ray  # inside: ray (a second to import) only when training runs on Ray Train workers
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    started = time.perf_counter()
    use_gpu = bool(cfg.use_gpu and ray.cluster_resources().get("GPU", 0) >= 1)
    storage = storage_path or tempfile.mkdtemp(prefix="vidcorpus-raytrain-")
    config = {"cfg": cfg.model_dump(), "model_dir": model_dir, "shards": list(shards), "out_dir": out_dir,
              "keys": sorted(keys) if keys is not None else None, "resume": resume, "run_info": run_info,
              "stage": stage,
              "follow": follow}  # cloudpickled to the workers; rank 0 asks the catalog (a local file or a snapshot URL)
    trainer = TorchTrainer(
        _ray_worker, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu,
                                     resources_per_worker=None if use_gpu else {"CPU": 1}),
        run_config=RunConfig(name=(run_info or {}).get("run_id") or "vidcorpus-train", storage_path=storage),
    )
    trainer.fit()
    found = ckpt_io.list_checkpoints(out_dir)
    if not found:
        raise RuntimeError(f"Ray Train finished but wrote no checkpoint under {out_dir}")
    return result_from_checkpoint(found[-1][1], time.perf_counter() - started, out_dir)
