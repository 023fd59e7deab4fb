"""TransNetV2's input: 48x27 RGB frames shrunk from the upright detector-size frames the split makes.

The shot split's batched reader (``ingest/detect_batches.py``) already makes each decoded frame's
small upright BGR frame (about 256 px wide) for PySceneDetect's detectors; TransNetV2 shrinks those,
a batch at a time, where its model runs (``model_frames``), instead of FFmpeg scaling every decoded
frame a second time (docs/benchmarks.md, "Shot detection, fourth round"). ``source_frame`` fixes
which frame that is whatever ``split.downscale`` says; ``source_frame_of`` makes it from one decoded
frame, for the per-frame path (``TransNetStream.push_frame``).
"""

from __future__ import annotations

import numpy as np

from vidcorpus.media import clockwise_rotation, detection_frame, detection_size, displayed_size

WIDTH, HEIGHT = 48, 27  # the model's input size


def model_frames(bgr: np.ndarray, device: str = "cpu"):
    """The model's (n, 27, 48, 3) uint8 RGB frames, a torch tensor on ``device``, from a batch of
    upright BGR frames (n, h, w, 3) of the detectors' size (``source_frame``): antialiased bilinear (FFmpeg's bilinear scaler, which
    made them before, also widens its filter when it shrinks), in 8 bits as the model was trained
    (on a CPU PyTorch's fixed-point kernel, on a GPU its float one rounded: they differ by at most one
    level, as the model's own arithmetic differs between the two).

    Why from the detectors' frames, and here: at 360p FFmpeg's scaling of each decoded frame to 48x27
    took about as long as its scaling to the detectors' 256x144 (110 µs a frame), on the scaler pool,
    one more call a frame that gives the GIL up and waits to get it back (docs/benchmarks.md, "Shot
    detection, fourth round"). Here it is a few calls a batch where the model runs (on a GPU, off the
    CPU), and each frame's result depends on that frame alone (tests/test_transnet.py)."""
    # inside: torch only where TransNetV2 runs (the runner imports this module, via split, without torch)
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(bgr)).permute(0, 3, 1, 2)  # (n, 3, h, w), channels last in memory
    shrink = dict(size=(HEIGHT, WIDTH), mode="bilinear", antialias=True, align_corners=False)
    if str(device) == "cpu":  # PyTorch's 8-bit kernel: 26 µs a 256x144 frame against 250 in float, within one level
        small = F.interpolate(x, **shrink)
    else:  # no 8-bit kernel on CUDA
        small = F.interpolate(x.to(device).float(), **shrink).round_().clamp_(0, 255).to(torch.uint8)
    return small.flip(1).permute(0, 2, 3, 1).contiguous()


def source_frame(width: int, height: int, turn: int) -> tuple[int, int, int]:
    """(w, h, turn) of the upright BGR frame the model's frames are shrunk from, for decoded frames of
    ``width`` x ``height`` turned ``turn`` degrees clockwise: the split's default detection size
    (about 256 px wide), the detectors' own frame unless ``split.downscale`` is set. Fixed so that
    neither the model's input nor the frames queued for it (``TransNetStream._batches_held``) depend
    on that setting, and the shrink stays within what PyTorch's CUDA kernel takes."""
    return (*detection_size(*displayed_size(width, height, turn), 0), turn)


def source_frame_of(frame, source: tuple[int, int, int] | None = None) -> np.ndarray:
    """The upright BGR frame (``source``: its width, height and turn; None: ``source_frame`` of the
    frame's own size and display matrix) of one decoded ``av.VideoFrame``, as the batched reader makes it."""
    if source is None:
        source = source_frame(frame.width, frame.height, clockwise_rotation(frame))
    return detection_frame(frame, *source)
