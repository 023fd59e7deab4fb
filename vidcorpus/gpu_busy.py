"""How busy a GPU stage keeps its GPU: NVML utilisation sampled while a batch runs.

NVML's utilisation is the share of its last sample period (1/6 s to 1 s) in which a kernel ran on
the device; a thread reads it every ``INTERVAL_S`` while the batch runs (an NVML call costs
microseconds, the thread sleeps otherwise), and the batch's GPU-busy seconds are the mean reading
times the batch's duration. Without NVML (no ``nvidia-ml-py``, no driver, a CPU run) the meter
measures nothing and says so with ``None``: a missing number, never a made-up one.
"""

from __future__ import annotations

import socket
import sys
import threading
import time

INTERVAL_S = 0.1

_unavailable = False  # set once NVML fails in this process: stop trying


def current_device() -> tuple[int, str] | None:
    """(index, host:uuid) of this process's CUDA device, or None without CUDA (torch not even imported)."""
    torch = sys.modules.get("torch")
    if torch is None or _unavailable:
        return None
    try:
        if not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return None

        index = torch.cuda.current_device()
        uuid = str(getattr(torch.cuda.get_device_properties(index), "uuid", index))
        return index, f"{socket.gethostname()}:{uuid}"
    except Exception:  # noqa: BLE001 - a measurement must never stop a stage
        return None


class GpuBusyMeter:
    """Context manager: ``busy_s`` after the block is the GPU-busy seconds inside it (or None)."""

    def __init__(self, index: int, interval_s: float = INTERVAL_S):
        self.index = index
        self.interval_s = interval_s
        self.samples: list[float] = []
        self.busy_s: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def _read(self) -> float | None:
        global _unavailable
        try:
            # inside: torch only once a sampler reads a CUDA device (this core module never loads torch itself)
            import torch

            return float(torch.cuda.utilization(self.index))
        except Exception:  # noqa: BLE001 - no pynvml, no NVML driver, a device NVML cannot see
            _unavailable = True
            return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            value = self._read()
            if value is None:
                return
            self.samples.append(value)

    def __enter__(self) -> "GpuBusyMeter":
        self._t0 = time.time()
        if not _unavailable:
            self._thread = threading.Thread(target=self._run, name="vidcorpus-gpu-busy", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.samples and not _unavailable:  # a batch shorter than one interval: read once now
            value = self._read()
            if value is not None:
                self.samples.append(value)
        if self.samples:
            self.busy_s = (time.time() - self._t0) * sum(self.samples) / len(self.samples) / 100.0
