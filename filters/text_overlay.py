"""Text overlay scores: how much of a clip's frames burnt-in text covers (captions, logos, titles).

Curated video corpora drop clips with large overlays (subtitles and watermarks teach a generator to
paint text). Detection is PP-OCRv4's text detector (ONNX, shipped inside ``rapidocr-onnxruntime``)
on the frames the other model scorers sample. Scores:

  text_area   fraction of the frame covered by detected text boxes (their union), max over frames
  text_boxes  detected text boxes, max over frames
  text_chars  recognised characters, max over frames (only with ``filters.ocr_recognition``)

Detection runs at the frame's own size up to 960 px on the long side (PaddleOCR's default), so a
256 px still costs about 0.1 to 0.3 s on one core.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import version
from typing import ClassVar

import cv2
import numpy as np

from vidcorpus.errors import DecodeError
from vidcorpus.filters.source_scoring import from_source
from vidcorpus.filters.frame_models import FRAME_MODEL_GPU_SHARE, require_extra, sampled_frames, use_cuda, wants_gpu
from vidcorpus.schemas import add_scores, score
from vidcorpus.config import Config
from vidcorpus.stage import Resources, Stage

TEXT_SCORES = {"text_area", "text_boxes", "text_chars"}
TEXT_VERSION = "ocr-v1"
DET_LIMIT_SIDE = 960
REQUIRE = ("rapidocr_onnxruntime", "rapidocr-onnxruntime==1.4.4", "the text overlay scorer")


def ocr_model_name() -> str:
    return f"rapidocr-onnxruntime-{version('rapidocr-onnxruntime')}/PP-OCRv4"


@lru_cache(maxsize=2)
def load_ocr(device: str = "cpu", threads: int = -1):
    """One RapidOCR engine per worker process (its ONNX sessions on the CPU, or the GPU where
    ``device``, ``filters.frame_models_device``, says so; ``threads``: ONNX Runtime's per session, -1 its own)."""
    require_extra(*REQUIRE)
    cuda = use_cuda(device)
    from rapidocr_onnxruntime import RapidOCR  # inside: the optional models extra (rapidocr-onnxruntime)

    return RapidOCR(det_limit_side_len=DET_LIMIT_SIDE, det_limit_type="max", print_verbose=False,
                    det_use_cuda=cuda, cls_use_cuda=cuda, rec_use_cuda=cuda,
                    intra_op_num_threads=threads, inter_op_num_threads=threads)


def text_boxes(engine, rgb: np.ndarray) -> list[np.ndarray]:
    """Quadrilaterals (4x2 float, pixel coordinates) of the text the detector finds in one frame."""
    boxes, _elapsed = engine.text_det(np.ascontiguousarray(rgb[..., ::-1]))  # the engine reads BGR
    return [] if boxes is None else [np.asarray(b, np.float32).reshape(4, 2) for b in boxes]


def covered_fraction(boxes: list[np.ndarray], height: int, width: int) -> float:
    """Area fraction of the union of the boxes (overlaps counted once)."""
    if not boxes:
        return 0.0
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(b).astype(np.int32) for b in boxes], 1)
    return float(mask.mean())


def text_scores(engine, frames: list[np.ndarray], recognition: bool = False) -> dict[str, float]:
    """Per-clip scores: the worst (largest) frame decides, since an overlay on any frame is in the clip."""
    areas, counts, chars = [], [], []
    for rgb in frames:
        boxes = text_boxes(engine, rgb)
        areas.append(covered_fraction(boxes, *rgb.shape[:2]))
        counts.append(len(boxes))
        if recognition:
            result, _ = engine(np.ascontiguousarray(rgb[..., ::-1]), use_det=True, use_cls=False, use_rec=True)
            chars.append(sum(len(text.replace(" ", "")) for _box, text, _conf in (result or [])))
    out = {"text_area": max(areas), "text_boxes": float(max(counts))}
    if recognition:
        out["text_chars"] = float(max(chars))
    return out


class TextOverlayStage(Stage):
    """Text overlay scores from the sampled frames (ONNX Runtime: CPU, or a GPU share with onnxruntime-gpu)."""

    name: ClassVar[str] = "text_overlay"
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
        frames = sampled_frames(row, cfg.frames_per_clip)
        values = text_scores(load_ocr(cfg.frame_models_device), frames, cfg.ocr_recognition)
        model = ocr_model_name()
        return add_scores(row, [score(k, v, model, TEXT_VERSION) for k, v in values.items()])
