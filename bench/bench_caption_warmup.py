"""The caption stage's set-up (model load and warm-up compiles), cold and with the compile caches a previous
job on the node left: how much of a GPU-node job's caption warm-up a second job pays again.

One process per measurement, as one job per process: ``CaptionStage.setup()`` with the GPU-node job's caption
settings (batch 512 on a GPU, long 160 and short 32 new tokens, 8 frames at 640x360, compiled prefill and
decoding step, warm-up on), on a build-models folder. The compile caches are PyTorch's own (Inductor's FX
graph and AOTAutograd caches, on by default, under ``TORCHINDUCTOR_CACHE_DIR``); ``--fresh-cache`` empties
that folder first, so the first process is cold and the next ones find what it compiled.
``captioning.compile_cache`` (vidcorpus/compile_cache.py) keeps the compiled artifacts in ``--artifacts``
too; ``--fresh-cache`` with artifacts left by an earlier process is a fresh node of a job whose
workdir holds them.

    python3 bench/gpu_node_job.py build-models --size 3b --out /tmp/models
    python3 bench/bench_caption_warmup.py --models /tmp/models --fresh-cache --fresh-artifacts --out cold.json
    python3 bench/bench_caption_warmup.py --models /tmp/models --out warm.json
    python3 bench/bench_caption_warmup.py --models /tmp/models --fresh-cache --out fresh_node.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from run_meta import emit, finish_metadata, run_metadata


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, help="a bench/gpu_node_job.py build-models folder")
    ap.add_argument("--cache", default="/tmp/vc_inductor_cache", help="TORCHINDUCTOR_CACHE_DIR")
    ap.add_argument("--fresh-cache", action="store_true", help="empty the cache folder first (a cold node)")
    ap.add_argument("--artifacts", default="/tmp/vc_compile_artifacts", help="captioning.compile_cache_dir")
    ap.add_argument("--fresh-artifacts", action="store_true", help="empty the artifacts folder first")
    ap.add_argument("--batch-size", type=int, default=512, help="captioning.batch_size (512: the runner's GPU default)")
    ap.add_argument("--compile-prefill", action="store_true", help="compile the prefill where it would not by default "
                    "(the CPU: a tiny model's check of the compile cache path)")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.fresh_cache:
        shutil.rmtree(args.cache, ignore_errors=True)
    if args.fresh_artifacts:
        shutil.rmtree(args.artifacts, ignore_errors=True)
    before = {p.name: p.stat().st_size for p in Path(args.artifacts).glob("*.bin")}  # what a run found
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = args.cache
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    meta = run_metadata()
    t0 = time.perf_counter()
    import torch
    from torch._dynamo.utils import counters

    from vidcorpus.captioning.caption_stage import CaptionStage
    from vidcorpus.config import Config

    built = json.loads((Path(args.models) / "models.json").read_text())
    cfg = Config()
    cfg = cfg.model_copy(update={
        "models": cfg.models.model_copy(update={"preset": "production", **{k: built[k] for k in (
            "clip_model", "clip_pretrained", "aesthetic_head", "captioner")}}),
        "captioning": cfg.captioning.model_copy(update={"frames_per_clip": 8, "max_pixels": 230400,
                                                        "max_new_tokens": 160, "short_max_new_tokens": 32,
                                                        "batch_size": args.batch_size, "warmup": True,
                                                        "compile_prefill": True if args.compile_prefill else None,
                                                        "compile_cache_dir": args.artifacts})})
    imports_s = time.perf_counter() - t0
    stage = CaptionStage(cfg)
    t = time.perf_counter()
    stage.setup()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    setup_s = time.perf_counter() - t
    result = {"setup_s": round(setup_s, 1), "imports_s": round(imports_s, 1),
              "batch_size": stage.captioner.batch_size, "fresh_cache": args.fresh_cache,
              "artifacts_file": stage.compile_cache_url,
              "artifacts_found": Path(stage.compile_cache_url or "-").name in before,
              "artifacts_bytes": Path(stage.compile_cache_url).stat().st_size
              if stage.compile_cache_url and Path(stage.compile_cache_url).exists() else 0,
              "inductor_counters": {k: v for k, v in counters["inductor"].items() if "cache" in k},
              "aot_autograd_counters": {k: v for k, v in counters["aot_autograd"].items() if "cache" in k},
              "torch": torch.__version__,
              "accelerator": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)"}
    emit({**finish_metadata(meta), **result}, args.out)


if __name__ == "__main__":
    main()
