"""What the per-frame model scorers with weights in wheels share (text overlays, NSFW).

They read the frames the CLIP scorer samples (``filters.frames_per_clip``: the clip's stills file
when extraction wrote one, else decoded from the clip) and run as tasks with an ONNX Runtime session
per worker process: on the CPU, or on a CUDA GPU where onnxruntime-gpu is installed and the cluster
has one (``filters.frame_models_device``). When they join a pipeline: ``filters/frame_model_stages.py``.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from vidcorpus.errors import ModelNotAvailable
from vidcorpus.filters.clip_frames import clip_frame_list, load_stills, read_clip

CUDA_EP, CPU_EP = "CUDAExecutionProvider", "CPUExecutionProvider"
# GPU share of one scorer task: a few small frames a clip take milliseconds of the GPU; sixteen tasks
# at once must leave the caption and CLIP actors nearly all of it (as the split stage's TransNetV2 share).
FRAME_MODEL_GPU_SHARE = 0.01


def require_extra(module: str, package: str, what: str) -> None:
    """Fail with one line naming the fix when an optional model package is not installed."""
    if importlib.util.find_spec(module) is None:
        raise ModelNotAvailable(f"{what} needs the `models` extra: pip install -e \".[models]\" "
                                f"(or pip install {package})")


def onnx_has_cuda() -> bool:
    """Whether the installed ONNX Runtime is a CUDA build (onnxruntime-gpu lists the CUDA provider)."""
    if importlib.util.find_spec("onnxruntime") is None:
        return False
    import onnxruntime  # inside: the optional models extra (onnxruntime)

    return CUDA_EP in onnxruntime.get_available_providers()


def wants_gpu(filters_cfg) -> bool:
    """Whether the scorer tasks should be given a GPU share where the cluster has a GPU. Ray hides every
    GPU from a task that asks for none, so without the share no session would ever see one."""
    return filters_cfg.frame_models_device != "cpu" and onnx_has_cuda()


def use_cuda(device: str) -> bool:
    """Whether this worker's sessions run on its GPU: ``device`` is ``filters.frame_models_device``.
    ``cuda`` without onnxruntime-gpu or a visible GPU is a one-line error, ``auto`` falls back to the CPU."""
    if device == "cpu":
        return False
    import torch  # inside: torch only to ask whether this process sees a CUDA device (ONNX sessions need none of it)

    ready = onnx_has_cuda() and torch.cuda.is_available()
    if device == "cuda" and not ready:
        what = "onnxruntime-gpu is not installed" if not onnx_has_cuda() else "this worker sees no CUDA GPU"
        raise ModelNotAvailable(f"filters.frame_models_device=cuda, but {what} "
                                "(pip uninstall onnxruntime && pip install onnxruntime-gpu; or set it to auto)")
    if ready:
        import onnxruntime  # inside: the optional models extra (onnxruntime)

        if hasattr(onnxruntime, "preload_dlls"):  # CUDA and cuDNN from the nvidia-* wheels torch installs
            onnxruntime.preload_dlls()
    return ready


def onnx_providers(device: str) -> list[str]:
    """Execution providers for a session under ``filters.frame_models_device``."""
    return [CUDA_EP, CPU_EP] if use_cuda(device) else [CPU_EP]


def sampled_frames(row: dict, k: int) -> list[np.ndarray]:
    """The K RGB frames the model scorers sample from a clip (one for an image)."""
    stills = load_stills(row, k)
    if stills is not None:
        return stills
    data, _digest = read_clip(row)
    return clip_frame_list(row, data, k)
