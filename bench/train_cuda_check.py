"""CUDA-path check of the base trainer on the tiny preset (not a benchmark).

Runs the loop on the GPU with bf16 autocast, fused AdamW and activation checkpointing: 6 steps with
a checkpoint at step 3 and a probe sample at step 6; then a second run directory holding only the
step-3 checkpoint resumes to step 6. Writes a JSON summary (runtime facts, losses, whether the
resumed run consumed the same samples and how close its losses are) to --out.

    python bench/train_cuda_check.py --out $OUT/train_cuda_check.json
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_shards(root: Path) -> list[str]:
    import av
    import webdataset as wds

    from vidcorpus.synth import FPS, make_video

    media = root / "media"
    media.mkdir(parents=True)
    urls = []
    for s in range(2):
        url = str(root / f"shard-{s:02d}.tar")
        with wds.TarWriter(url) as sink:
            for j in range(2):
                i = 2 * s + j
                v = make_video(i, media)
                with av.open(v.path) as c:
                    n = c.streams.video[0].frames
                meta = {"clip_id": f"clip{i}", "media_type": "video", "fps": FPS, "n_frames": n or None,
                        "text": v.text}
                sink.write({"__key__": f"clip{i}", "mp4": Path(v.path).read_bytes(),
                            "json": json.dumps(meta).encode(), "txt": v.text.encode()})
        urls.append(url)
    return urls


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--allow-cpu", action="store_true", help="dry run of this script on a CPU")
    args = ap.parse_args()

    from vidcorpus.config import TrainConfig
    from vidcorpus.train.checkpoint import read_state
    from vidcorpus.train.loop import train_base
    from vidcorpus.train.i2vgen_components import build_tiny_i2vgen

    assert torch.cuda.is_available() or args.allow_cpu, "needs a GPU"
    work = Path(tempfile.mkdtemp(prefix="train-cuda-"))
    model = str(work / "i2vgen")
    t0 = time.perf_counter()
    build_tiny_i2vgen(model)
    urls = make_shards(work / "shards")
    cfg = TrainConfig(steps=6, batch_size=2, num_frames=4, height=64, width=64, fps=8, shuffle_buffer=8, seed=0,
                      warmup_steps=2, lr=1e-4, mixed_precision="bf16", gradient_checkpointing=True,
                      checkpoint_every=3, keep_checkpoints=2, sample_every=6, sample_steps=2, log_every=1,
                      tensorboard=False)
    setup_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    full = train_base(cfg, model, urls, str(work / "full"), progress=False)
    full_s = time.perf_counter() - t0
    part = work / "part" / "checkpoints"
    part.mkdir(parents=True)
    shutil.copytree(work / "full" / "checkpoints" / "step-00000003", part / "step-00000003")
    t0 = time.perf_counter()
    resumed = train_base(cfg, model, urls, str(work / "part"), progress=False, resume="latest")
    resumed_s = time.perf_counter() - t0

    state = read_state(full.checkpoint_dir)
    logs = [json.loads(x) for x in (work / "full" / "logs" / "train.jsonl").read_text().splitlines()]
    diff = np.abs(np.array(full.losses) - np.array(resumed.losses))
    out = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
        "runtime": state["runtime"],
        "setup_s": setup_s, "full_run_s": full_s, "resumed_run_s": resumed_s,
        "losses_full": full.losses, "losses_resumed": resumed.losses,
        "max_abs_loss_diff_after_resume": float(diff.max()),
        "same_samples_after_resume": resumed.step_keys == full.step_keys,
        "step_keys": full.step_keys,
        "probe_mp4": sorted(p.name for p in (work / "full" / "samples").glob("*.mp4")),
        "checkpoints": sorted(p.name for p in (work / "full" / "checkpoints").iterdir()),
        "log_records": logs,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps({k: v for k, v in out.items() if k not in ("step_keys", "log_records")}, indent=1, default=str))


if __name__ == "__main__":
    main()
