"""NSFW score: how likely the sampled frames show explicit nudity, from NudeNet's detector.

The detector (``nudenet`` 3.4.2's ``320n.onnx``, a YOLOv8n-style model shipped in its wheel)
returns per-anchor class probabilities; a frame's score is the highest probability of any of the
explicit classes anywhere in it, and a clip's scores are the max and mean over its sampled frames:

  nsfw       max over frames (one explicit frame is enough to drop a clip)
  nsfw_mean  mean over frames

Frames are preprocessed as NudeNet does (padded to a square at the bottom/right, resized to 320,
RGB in [0, 1]) and run as one batch per clip.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from importlib.metadata import version
from typing import ClassVar

import cv2
import numpy as np

from vidcorpus.errors import DecodeError
from vidcorpus.filters.source_scoring import from_source
from vidcorpus.filters.frame_models import (FRAME_MODEL_GPU_SHARE, onnx_providers, require_extra, sampled_frames,
                                            wants_gpu)
from vidcorpus.schemas import add_scores, score
from vidcorpus.config import Config
from vidcorpus.stage import Resources, Stage

NSFW_SCORES = {"nsfw", "nsfw_mean"}
NSFW_VERSION = "nsfw-v1"
INPUT = 320
# NudeNet 3.4's label order; the explicit ones are what production filters drop.
LABELS = ["FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
          "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED", "BELLY_COVERED",
          "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE", "BELLY_EXPOSED",
          "MALE_GENITALIA_EXPOSED", "ANUS_COVERED", "FEMALE_BREAST_COVERED", "BUTTOCKS_COVERED"]
EXPLICIT = ["BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED",
            "ANUS_EXPOSED"]
EXPLICIT_IDX = [LABELS.index(name) for name in EXPLICIT]
REQUIRE = ("nudenet", "nudenet==3.4.2", "the NSFW scorer")


def nsfw_model_name() -> str:
    return f"nudenet-{version('nudenet')}/320n"


@lru_cache(maxsize=2)
def load_nsfw(device: str = "cpu", threads: int = 0):
    """One ONNX Runtime session of the wheel's 320n.onnx per worker process (``device``:
    ``filters.frame_models_device``; ``threads``: ONNX Runtime's per session, 0 its own choice)."""
    require_extra(*REQUIRE)

    import onnxruntime  # inside: the optional models extra (onnxruntime, nudenet's weights)

    folder = importlib.util.find_spec("nudenet").submodule_search_locations[0]
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    return onnxruntime.InferenceSession(os.path.join(folder, "320n.onnx"), options, providers=onnx_providers(device))


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """(3, 320, 320) float32: padded to a square at the bottom and right, resized, scaled to [0, 1]."""
    h, w = rgb.shape[:2]
    side = max(h, w)
    square = np.zeros((side, side, 3), np.uint8)
    square[:h, :w] = rgb
    small = cv2.resize(square, (INPUT, INPUT), interpolation=cv2.INTER_LINEAR)
    return small.transpose(2, 0, 1).astype(np.float32) / 255.0


def frame_nsfw(session, frames: list[np.ndarray]) -> np.ndarray:
    """Per frame, the highest explicit-class probability over all anchors (in [0, 1])."""
    batch = np.stack([preprocess(f) for f in frames])
    out = session.run(None, {session.get_inputs()[0].name: batch})[0]  # (n, 4 + classes, anchors)
    return np.clip(out[:, 4:][:, EXPLICIT_IDX].max(axis=(1, 2)), 0.0, 1.0)


class NsfwStage(Stage):
    """NSFW scores from the sampled frames (ONNX Runtime: CPU, or a GPU share with onnxruntime-gpu)."""

    name: ClassVar[str] = "nsfw"
    resources: ClassVar[Resources] = Resources(cpus=0.5)

    @classmethod
    def resources_for(cls, config: Config) -> Resources:
        if wants_gpu(config.filters):
            return cls.resources.model_copy(update={"gpus": FRAME_MODEL_GPU_SHARE})
        return cls.resources

    @staticmethod
    def require() -> None:
        require_extra(*REQUIRE)

    def process_row(self, row: dict) -> dict:
        if not row.get("clip_path") and not from_source(row):  # a clip not extracted yet reads its source
            raise DecodeError("row has no clip_path")
        cfg = self.config.filters
        per_frame = frame_nsfw(load_nsfw(cfg.frame_models_device), sampled_frames(row, cfg.frames_per_clip))
        model = nsfw_model_name()
        return add_scores(row, [score("nsfw", per_frame.max(), model, NSFW_VERSION),
                                score("nsfw_mean", per_frame.mean(), model, NSFW_VERSION)])
