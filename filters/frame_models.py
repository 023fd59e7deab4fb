"""What the per-frame model scorers with weights in wheels share (text overlays, NSFW).

They read the frames the CLIP scorer samples (``filters.frames_per_clip``: the clip's stills file
when extraction wrote one, else decoded from the clip) and run as CPU tasks (ONNX Runtime, a session
per worker process). When they join a pipeline: ``filters/frame_model_stages.py``.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from vidcorpus.errors import ModelNotAvailable
from vidcorpus.filters.clip_frames import clip_frame_list, load_stills, read_clip


def require_extra(module: str, package: str, what: str) -> None:
    """Fail with one line naming the fix when an optional model package is not installed."""
    if importlib.util.find_spec(module) is None:
        raise ModelNotAvailable(f"{what} needs the `models` extra: pip install -e \".[models]\" (or pip install {package})")


def sampled_frames(row: dict, k: int) -> list[np.ndarray]:
    """The K RGB frames the model scorers sample from a clip (one for an image)."""
    stills = load_stills(row, k)
    if stills is not None:
        return stills
    data, _digest = read_clip(row)
    return clip_frame_list(row, data, k)
