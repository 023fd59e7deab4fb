"""Out of GPU memory: the one error the captioner answers by retrying (at half the batch) rather
than by falling back or failing, so every path that catches exceptions asks this first."""

from __future__ import annotations

import torch


def is_oom(exc: BaseException) -> bool:
    """CUDA out-of-memory, as torch raises it or as a RuntimeError's message says it."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )
