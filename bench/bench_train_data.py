"""Issue 8's data target: the training loop fed from latent-cache shards against the same loop fed
from memory (synthetic input), same model, batch and step, timed in the same process.

Both runs go through ``train.loop.train_base`` with the same config: the UNet (the default 1.42 B
``I2VGenXLUNet`` with ``--size full``), bf16 autocast, fused AdamW, gradient clipping and the EMA.

- synthetic: ``_batches_forever`` is replaced by one collated latent-cache batch yielded forever
  (already in host memory: no reading, no parsing), so the loop's step rate is the ceiling.
- from shards: the real stream: sidecar shards written by the real writer (``stream_tar``), read,
  verified (sha256) and parsed by the reader in ``--workers`` DataLoader workers, bucketed and
  collated, then the same step.

The sidecar samples hold random values of the real shapes (VAE posterior parameters (F, 8, h, w),
CLIP text states (77, D), CLIP image embedding (D,), float16), i.e. the bytes a real cache holds for
16 frames at 256x448. Harness shortcuts, stated: the components come from the tiny preset except the
UNet (built from its default config, random weights, instead of being saved and loaded from disk),
the text encoder only gives the empty prompt's states (width matched to the UNet), and checkpoint
writing is skipped (a 1.4 B fp32 UNet + EMA + AdamW state is ~23 GB of disk per checkpoint).

    python bench/bench_train_data.py --size full --steps 40 --batch 2 --workers 4 --json out.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def new_unet(size: str, device: torch.device):
    """A freshly initialised UNet (built on the device: initialising 1.4 B parameters on the CPU is slow)."""
    from diffusers import I2VGenXLUNet

    from vidcorpus.train.i2vgen_components import TINY_UNET

    torch.manual_seed(0)
    with torch.device(device):
        return I2VGenXLUNet() if size == "full" else I2VGenXLUNet(**TINY_UNET)


def build_components(size: str, device: torch.device):
    from dataclasses import replace

    from transformers import CLIPTextConfig, CLIPTextModel

    from vidcorpus.train.i2vgen_components import build_tiny_i2vgen, load_components

    import torch.distributed as dist

    from vidcorpus.train.launch import broadcast

    on_rank0 = not dist.is_initialized() or dist.get_rank() == 0
    root = Path(broadcast(tempfile.mkdtemp(prefix="bench-i2vgen-") if on_rank0 else None))
    if on_rank0:  # one copy for every rank of this machine
        build_tiny_i2vgen(str(root / "i2vgen"))
    if dist.is_initialized():
        dist.barrier()
    comps = load_components(str(root / "i2vgen"), device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    unet = new_unet(size, device)
    dim = unet.config.cross_attention_dim
    te = comps.text_encoder
    if te.config.hidden_size != dim:  # only the empty prompt is encoded: a text tower of the UNet's width
        te = CLIPTextModel(CLIPTextConfig(**{**te.config.to_dict(), "hidden_size": dim, "projection_dim": dim,
                                             "intermediate_size": 2 * dim, "num_attention_heads": 8}))
        te = te.to(device, next(comps.text_encoder.parameters()).dtype).requires_grad_(False).eval()
    return replace(comps, unet=unet, text_encoder=te), str(root / "i2vgen")


def write_sidecars(root: Path, n_shards: int, per_shard: int, frames: int, h: int, w: int, dim: int,
                   scaling: float) -> list:
    from vidcorpus.shard_reader import ShardSpec
    from vidcorpus.shards.writer import stream_tar

    rng = np.random.default_rng(0)
    specs = []
    for s in range(n_shards):
        samples = []
        for j in range(per_shard):
            mean = rng.standard_normal((frames, 4, h // 8, w // 8), dtype=np.float32)
            logvar = np.full_like(mean, -12.0)
            samples.append({
                "__key__": f"clip-{s:03d}-{j:03d}",
                "latent.npy": np.concatenate([mean, logvar], axis=1).astype(np.float16),
                "clip_image.npy": rng.standard_normal(dim, dtype=np.float32).astype(np.float16),
                "text.npy": rng.standard_normal((77, dim), dtype=np.float32).astype(np.float16),
                "json": json.dumps({"frames": frames, "fps": 8, "height": h, "width": w, "scaling_factor": scaling,
                                    "cache_key": "bench", "text": f"clip {s} {j}"}).encode(),
            })
        url = str(root / f"latents-{s:03d}.tar")
        sha, size, _new = stream_tar(url, samples)
        specs.append(ShardSpec(url=url, sha256=sha, bytes=size, n=per_shard))
    return specs


def run_loop(label: str, cfg, comps, model_dir: str, specs: list, out_dir: Path, synthetic_batch=None) -> dict:
    from unittest import mock

    from vidcorpus.train import loop, trainer
    from vidcorpus.train.stream import DataCursor, StreamMark

    def constant(urls, cfg_, keys, on_error, cursor, follow=None, selection=None):
        mark = StreamMark(DataCursor(), selection.fingerprint, selection.urls)
        while True:
            yield synthetic_batch, mark

    patches = [mock.patch.object(loop, "load_components", lambda *_a, **_k: comps),
               mock.patch("vidcorpus.train.checkpoint.save_checkpoint", lambda run_dir, step, *_a, **_k: f"{run_dir}/skipped-{step}")]
    if synthetic_batch is not None:
        patches.append(mock.patch.object(trainer, "batches_forever", constant))
    for p in patches:
        p.start()
    try:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        res = loop.train_base(cfg, model_dir, specs, str(out_dir), progress=False)
        seconds = time.perf_counter() - t0
    finally:
        for p in reversed(patches):
            p.stop()
    log_file = out_dir / "logs" / "train.jsonl"
    if not log_file.exists():  # a rank other than 0 under torchrun: rank 0 logs for all
        return {"run": label, "steps": res.steps, "seconds": seconds}
    logs = [json.loads(line) for line in log_file.read_text().splitlines()]
    steady = logs[1:] or logs  # the first window holds warm-up (allocator, cuDNN autotune, workers starting)
    out = {
        "run": label, "steps": res.steps, "seconds": seconds,
        "samples_per_s": float(np.mean([r["samples_per_s"] for r in steady])),
        "data_wait_share": float(np.mean([r["data_wait_share"] for r in steady])),
        "step_s": float(np.mean([r["step_s"] for r in steady])),
        "mfu": (float(np.mean([r["mfu"] for r in steady])) if all(r.get("mfu") for r in steady) else None),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "windows": [{k: r[k] for k in ("step", "samples_per_s", "data_wait_share", "step_s")} for r in logs],
    }
    if cfg.compile:  # did dynamo capture the UNet, in how many graphs, with which breaks
        from torch._dynamo.utils import counters

        out["dynamo"] = {k: dict(counters[k]) for k in ("frames", "stats", "graph_break", "recompiles") if counters[k]}
    print(json.dumps({k: v for k, v in out.items() if k != "windows"}), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=["full", "tiny"], default="full")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=448)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--per-shard", type=int, default=16)
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--compile", action="store_true", help="train.compile: torch.compile the UNet (minutes).")
    ap.add_argument("--compile-mode", default=None, help="train.compile_mode")
    ap.add_argument("--compile-cache", default=None,
                    help="torch.compiler cache artifacts: loaded from this file if it exists, saved to it after the run "
                         "(a later run of the same graphs skips most of the compile)")
    ap.add_argument("--only", choices=["all", "synthetic"], default="all",
                    help="synthetic: only the loop's own step rate (e.g. to time --compile once).")
    ap.add_argument("--parallel", choices=["ddp", "fsdp"], default="ddp",
                    help="under torchrun (WORLD_SIZE > 1): train.parallel; samples/s are counted over all ranks")
    ap.add_argument("--ddp-bucket-mb", type=int, default=25, help="train.ddp_bucket_mb")
    ap.add_argument("--ddp-bucket-view", action="store_true", help="train.ddp_bucket_view")
    ap.add_argument("--group-of-one", action="store_true",
                    help="without torchrun: a process group of one rank, so the step runs under DDP (its buckets, "
                         "hooks and, compiled, dynamo's DDP graph splits) with nothing to communicate")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import os

    from vidcorpus.train.launch import init_torchrun

    distributed = init_torchrun()
    if args.group_of_one and not distributed:
        import torch.distributed as dist

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", init_method="tcp://127.0.0.1:29517",
                                rank=0, world_size=1)
        distributed = True
    rank = int(os.environ.get("RANK", 0))

    from vidcorpus.config import TrainConfig
    from vidcorpus.train.data import collate, decode_cached_sample
    from vidcorpus.shard_reader import sample_pipeline

    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else torch.device("cpu")
    comps, model_dir = build_components(args.size, device)
    dim = comps.unet.config.cross_attention_dim
    work = Path(tempfile.mkdtemp(prefix="bench-train-data-"))
    t0 = time.perf_counter()
    specs = write_sidecars(work / "latents", args.shards, args.per_shard, args.frames, args.height, args.width, dim,
                           float(comps.vae.config.scaling_factor))
    write_s = time.perf_counter() - t0
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch, num_frames=args.frames, height=args.height,
                      width=args.width, fps=8, mixed_precision="bf16", log_every=args.log_every,
                      num_workers=args.workers, shuffle_buffer=16, tensorboard=False, warmup_steps=2,
                      gradient_checkpointing=args.gradient_checkpointing, compile=args.compile,
                      compile_mode=args.compile_mode, parallel=args.parallel, ddp_bucket_mb=args.ddp_bucket_mb,
                      ddp_bucket_view=args.ddp_bucket_view)
    if args.compile_cache and Path(args.compile_cache).exists():
        info = torch.compiler.load_cache_artifacts(Path(args.compile_cache).read_bytes())
        print(f"loaded compile cache {args.compile_cache}: {info}", flush=True)
    first = [decode_cached_sample(s) for s, _ in zip(sample_pipeline(specs[:1], split=False), range(args.batch))]
    batch = collate(first)
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "world_size":
               int(os.environ.get("WORLD_SIZE", 1)), "parallel": args.parallel if distributed else None,
               "torch": torch.__version__, "args": vars(args), "write_sidecars_s": write_s,
               "unet_params": sum(p.numel() for p in comps.unet.parameters()),
               "sidecar_bytes_per_sample": sum(s.bytes for s in specs) / (args.shards * args.per_shard)}
    from dataclasses import replace

    # synthetic, shards, synthetic again: the reference brackets the measured run; a fresh UNet each
    results["synthetic"] = run_loop("synthetic", cfg, comps, model_dir, specs, work / "run-synthetic", synthetic_batch=batch)
    if args.compile and args.compile_cache and not Path(args.compile_cache).exists():
        saved = torch.compiler.save_cache_artifacts()
        if saved is not None:
            Path(args.compile_cache).write_bytes(saved[0])
            print(f"saved compile cache {args.compile_cache}: {len(saved[0]) / 2**20:.1f} MiB", flush=True)
    if args.only == "synthetic":
        if args.json and rank == 0:
            Path(args.json).write_text(json.dumps(results, indent=2))
        return
    comps = replace(comps, unet=new_unet(args.size, device))
    results["shards"] = run_loop("shards", cfg, comps, model_dir, specs, work / "run-shards")
    comps = replace(comps, unet=new_unet(args.size, device))
    results["synthetic_again"] = run_loop("synthetic-again", cfg, comps, model_dir, specs, work / "run-synthetic2",
                                          synthetic_batch=batch)
    reference = (results["synthetic"]["samples_per_s"] + results["synthetic_again"]["samples_per_s"]) / 2
    ratio = results["shards"]["samples_per_s"] / reference
    results["ratio_shards_over_synthetic"] = ratio
    print(f"from shards / synthetic = {ratio:.3f}; data wait {results['shards']['data_wait_share']:.3f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
