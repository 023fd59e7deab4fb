"""Training metrics: JSONL and TensorBoard logs, data-wait share, and MFU from counted FLOPs.

MFU = model FLOPs per second / the device's peak dense bf16 FLOP/s. FLOPs are counted, not
guessed: the first step of each bucket shape (batch, frames, height, width) runs under
``torch.utils.flop_counter.FlopCounterMode`` (every matmul and convolution of the step: the frozen
VAE, text and image encoders' forwards and the UNet's forward and backward; with activation
checkpointing the recomputed forward is counted too, so it is then hardware-FLOPs utilisation).
Later steps of that shape reuse the count. On CPU, or a GPU not in the table, MFU is null.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import deque

import fsspec
import torch
from tensorboardX import SummaryWriter
from torch.utils.flop_counter import FlopCounterMode

from vidcorpus.storage import is_url, local_path

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' datasheets (SXM parts; no sparsity).
PEAK_BF16 = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
}


def peak_bf16_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16.items():
        if key in name:
            if key == "H100" and "PCIe" in name:
                return 756e12
            return peak
    return None


class FlopCounter:
    """FLOPs per training step, counted once per batch shape."""

    def __init__(self):
        self.by_shape: dict[tuple, int] = {}

    def needs_count(self, shape: tuple) -> bool:
        return shape not in self.by_shape

    def mode(self):
        return FlopCounterMode(display=False)

    def record(self, shape: tuple, mode) -> None:
        self.by_shape[shape] = int(mode.get_total_flops())

    def flops(self, shape: tuple) -> int | None:
        return self.by_shape.get(shape)


class MetricsLogger:
    """Appends one JSON object per log step to ``{run}/logs/train.jsonl`` and writes TensorBoard
    scalars under ``{run}/logs/tb``. For a remote run directory both are written locally and
    uploaded at every flush (checkpoint time and the end)."""

    def __init__(self, run_dir: str, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.run_dir = run_dir
        self.remote = is_url(run_dir)
        if not enabled:
            self.local_dir, self.tb = None, None
            return
        self.local_dir = (tempfile.mkdtemp(prefix="vidcorpus-logs-") if self.remote
                          else os.path.join(local_path(run_dir), "logs"))
        os.makedirs(self.local_dir, exist_ok=True)
        self.jsonl_path = os.path.join(self.local_dir, "train.jsonl")
        if self.remote:  # a resumed run appends to the log it continues (TensorBoard files are per run)
            fs, path = fsspec.core.url_to_fs(self.run_dir.rstrip("/") + "/logs/train.jsonl")
            if fs.exists(path):
                fs.get_file(path, self.jsonl_path)
        self.tb = None
        if tensorboard:
            self.tb = SummaryWriter(os.path.join(self.local_dir, "tb"))

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = record["step"]
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"train/{k}", v, step)

    def flush(self) -> None:
        if not self.enabled:
            return
        if self.tb is not None:
            self.tb.flush()
        if self.remote:
            fs, path = fsspec.core.url_to_fs(self.run_dir.rstrip("/") + "/logs")
            fs.put(self.local_dir.rstrip("/") + "/", path.rstrip("/") + "/", recursive=True)

    def close(self) -> None:
        if not self.enabled:
            return
        self.flush()
        if self.tb is not None:
            self.tb.close()
        if self.remote:
            shutil.rmtree(self.local_dir, ignore_errors=True)


class LogWindow:
    """What a log record averages: the steps since the last record (their time, data wait, samples
    and FLOPs) and a bounded window of recent losses (never the run's whole history)."""

    def __init__(self, log_every: int, peak: float | None, world: int = 1):
        self.peak, self.world = peak, world
        self.recent: deque[float] = deque(maxlen=max(1, log_every))
        self.reset()

    def reset(self) -> None:
        self.wait = self.total = 0.0
        self.samples = self.flops = self.steps = 0
        self.flops_known = True

    def add(self, wait_s: float, total_s: float, samples: int, flops: int | None) -> None:
        """One step: ``samples`` of this rank (times the world size: every rank trains as many)."""
        self.wait += wait_s
        self.total += total_s
        self.samples += samples * self.world
        self.steps += 1
        self.flops += flops or 0
        self.flops_known &= flops is not None

    def record(self, step: int, lr: float, epoch: int) -> dict:
        """The JSONL/TensorBoard record of the window ending at ``step``; starts the next window."""
        secs = max(self.total, 1e-9)
        losses = list(self.recent)[-self.steps:]
        out = {
            "step": step, "loss": self.recent[-1], "loss_avg": float(sum(losses) / len(losses)), "lr": lr,
            "samples_per_s": self.samples / secs, "data_wait_share": self.wait / secs, "step_s": secs / self.steps,
            "flops_per_step": self.flops / self.steps if self.flops_known else None,
            "mfu": (self.flops / secs / self.peak) if (self.peak and self.flops_known) else None,
            "epoch": epoch, "world_size": self.world, "time": time.time(),
        }
        self.reset()
        return out
