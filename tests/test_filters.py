"""Filters: tiny CLIP/aesthetic models through the production loaders, scorers, recipes, decisions."""

from __future__ import annotations

import math
import time

import cv2
import numpy as np
import pytest
import torch

from vidcorpus.config import load_config
from vidcorpus.errors import ModelNotAvailable
from vidcorpus.media import encode_video
from vidcorpus.schemas import empty_row, rows_to_table
from vidcorpus.synth import H, W, _texture_shot, make_image, make_video

CLIP_SCORES = {"aesthetic", "aesthetic_min", "clip_text"}
TECH_SCORES = {"width", "height", "aspect", "min_side", "duration_s", "fps", "blur", "brightness", "black_border", "frozen"}


def scores_of(row: dict) -> dict[str, float]:
    return {s["scorer"]: s["value"] for s in row["scores"]}


def video_row(path: str, n_frames: int, fps: float = 24.0, text: str = "", **kw) -> dict:
    return empty_row(media_type="video", clip_path=str(path), fps=fps, width=W, height=H, first_frame=0,
                     last_frame=n_frames - 1, start_s=0.0, end_s=n_frames / fps, text=text, **kw)


def run_stage(stage, rows: list[dict]) -> list[dict]:
    return stage(rows_to_table(rows)).to_pylist()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from vidcorpus.clip_models import build_tiny_clip
    from vidcorpus.filters.aesthetic_head import build_tiny_aesthetic_head

    root = tmp_path_factory.mktemp("tiny-filters")
    clip = build_tiny_clip(root / "clip" / "open_clip_model.safetensors")
    head = build_tiny_aesthetic_head(root / "aesthetic" / "aesthetic_head.pth", "vidcorpus-tiny-clip")
    return {"clip_model": "vidcorpus-tiny-clip", "clip_pretrained": clip, "aesthetic_head": head}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("filters-media")
    v0, v1 = make_video(0, d), make_video(4, d)
    image, image_text = make_image(1, d)
    broken = d / "broken.mp4"
    broken.write_bytes(b"<html>not a video</html>")
    pan = _texture_shot(24, seed=3, dx=6)
    encode_video(pan, 24, str(d / "fast.mp4"))
    encode_video(_texture_shot(24, seed=3, dx=1), 24, str(d / "slow.mp4"))
    encode_video(np.repeat(pan[:1], 24, axis=0), 24, str(d / "static.mp4"))
    blurred = np.stack([cv2.GaussianBlur(f, (9, 9), 3) for f in pan])
    encode_video(blurred, 24, str(d / "blurred.mp4"))
    boxed = pan.copy()
    boxed[:, :24] = 0
    boxed[:, -24:] = 0
    encode_video(boxed, 24, str(d / "letterbox.mp4"))
    encode_video((pan // 8).astype(np.uint8), 24, str(d / "dark.mp4"))
    encode_video(np.clip(pan.astype(np.int16) + 6, 0, 255).astype(np.uint8), 24, str(d / "near.mp4"))  # near-duplicate
    (d / "copy.mp4").write_bytes((d / "fast.mp4").read_bytes())  # exact duplicate
    rng = np.random.default_rng(5)  # a shaking camera: the window jumps up to 10 px each frame
    big = _texture_shot(1, seed=9, dx=0)[0]
    big = np.pad(big, ((12, 12), (12, 12), (0, 0)), mode="reflect")
    offsets = np.cumsum(rng.integers(-10, 11, (48, 2)), axis=0).clip(-12, 12) + 12
    encode_video(np.stack([big[y:y + H, x:x + W] for y, x in offsets]), 24, str(d / "shaky.mp4"))
    encode_video(_texture_shot(24, seed=11, dx=-3), 24, str(d / "other.mp4"))
    return {"v0": v0, "v1": v1, "image": image, "image_text": image_text, "broken": str(broken),
            **{k: str(d / f"{k}.mp4") for k in ("fast", "slow", "static", "blurred", "letterbox", "dark", "near",
                                                   "copy", "other", "shaky")}}


def cfg_for(tiny: dict | None = None, **filters):
    fields = {f"filters.{k}": v for k, v in filters.items()}
    if tiny:
        fields.update({f"models.{k}": v for k, v in tiny.items()})
    return load_config(None, [], **fields)


# --- models ---------------------------------------------------------------------------------------

def test_tiny_models_round_trip_through_production_loader(tiny):
    from safetensors.torch import load_file

    from vidcorpus.clip_models import load_clip
    from vidcorpus.filters.aesthetic_head import load_aesthetic_head

    model, preprocess, tokenizer = load_clip(tiny["clip_model"], tiny["clip_pretrained"], "cpu")
    saved = load_file(tiny["clip_pretrained"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    head = load_aesthetic_head(tiny["aesthetic_head"], 64)
    # LAION's improved-aesthetic-predictor layout, so the real .pth loads with the same code.
    assert set(torch.load(tiny["aesthetic_head"]).keys()) == {
        f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}
    from PIL import Image

    x = preprocess(Image.fromarray(np.zeros((40, 50, 3), np.uint8)))[None]
    with torch.inference_mode():
        emb = model.encode_image(x, normalize=True)
        txt = model.encode_text(tokenizer(["a ball"]), normalize=True)
        assert emb.shape == (1, 64) and txt.shape == (1, 64)
        assert torch.isfinite(head(emb)).all()


def test_production_tag_offline_fails_fast(monkeypatch, tmp_path):
    from vidcorpus.clip_models import load_clip
    from vidcorpus.filters.aesthetic_head import load_aesthetic_head
    from vidcorpus.filters.clip_scores import ClipScoreStage
    from vidcorpus.presets import LAION_AESTHETIC_URL, PRODUCTION

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("VIDCORPUS_CACHE", str(tmp_path))
    t0 = time.time()
    with pytest.raises(ModelNotAvailable, match="huggingface-cli download"):
        load_clip("ViT-L-14", "openai")
    with pytest.raises(ModelNotAvailable, match="aesthetic_head"):
        load_aesthetic_head(LAION_AESTHETIC_URL, 768)
    with pytest.raises(ModelNotAvailable, match="not an open_clip tag|neither"):
        load_clip("ViT-L-14", "no-such-tag")
    cfg = cfg_for({k: PRODUCTION[k] for k in ("clip_model", "clip_pretrained", "aesthetic_head")})
    with pytest.raises(ModelNotAvailable):
        ClipScoreStage(cfg).setup()
    assert time.time() - t0 < 10


# --- scorers --------------------------------------------------------------------------------------

def test_clip_stage_scores_videos_and_images_and_fails_broken_rows(tiny, media):
    from vidcorpus.filters.clip_scores import ClipScoreStage

    rows = [
        video_row(media["v0"].path, 30, text=media["v0"].text, clip_id="a"),
        video_row(media["v1"].path, 30, text="", clip_id="b"),
        empty_row(media_type="image", clip_path=media["image"], text=media["image_text"], clip_id="c"),
        video_row(media["broken"], 30, text="x", clip_id="d"),
    ]
    out = {r["clip_id"]: r for r in run_stage(ClipScoreStage(cfg_for(tiny, clip_batch_size=2)), rows)}
    for cid, names in (("a", CLIP_SCORES), ("b", CLIP_SCORES - {"clip_text"}), ("c", CLIP_SCORES)):
        s = scores_of(out[cid])
        assert set(s) == names, cid
        assert all(math.isfinite(v) for v in s.values())
        assert s["aesthetic_min"] <= s["aesthetic"] + 1e-6
        assert not out[cid]["error_class"]
    assert -1.0 <= scores_of(out["a"])["clip_text"] <= 1.0
    entry = next(s for s in out["a"]["scores"] if s["scorer"] == "clip_text")
    assert entry["model"] == "vidcorpus-tiny-clip" and entry["version"].startswith("clip-v2")
    assert out["d"]["error_class"] and out["d"]["error_stage"] == "clip" and not out["d"]["scores"]
    # Batched and one-at-a-time scoring agree (the batch size changes nothing but speed).
    single = run_stage(ClipScoreStage(cfg_for(tiny, clip_batch_size=1)), rows[:1])[0]
    assert scores_of(single)["aesthetic"] == pytest.approx(scores_of(out["a"])["aesthetic"], abs=1e-5)


def test_motion_orders_fast_slow_static(media):
    from vidcorpus.filters.motion import MotionStage

    rows = [video_row(media[k], 24, clip_id=k) for k in ("fast", "slow", "static", "broken")]
    rows.append(empty_row(media_type="image", clip_path=media["image"], clip_id="image"))
    out = {r["clip_id"]: r for r in run_stage(MotionStage(cfg_for()), rows)}
    fast, slow, static = (scores_of(out[k]) for k in ("fast", "slow", "static"))
    assert fast["motion"] > 2 * slow["motion"] > 2 * static["motion"]
    # 6 px/frame at 320 wide is 6 * 128/320 * 24 = 57.6 px/s at the default 128-px analysis width.
    assert fast["motion"] == pytest.approx(57.6, rel=0.15)
    assert static["motion_static"] == 1.0 and fast["motion_static"] == 0.0
    assert fast["motion_jitter"] < 0.2 * fast["motion"]  # a steady pan is not shaky
    assert fast["motion_jittery"] == static["motion_jittery"] == 0.0
    assert out["broken"]["error_class"] and out["broken"]["error_stage"] == "motion"
    assert out["image"]["scores"] == [] and not out["image"]["error_class"]


def test_technical_blur_letterbox_frozen_and_geometry(media):
    from vidcorpus.filters.technical import TechnicalStage

    rows = [video_row(media[k], 24, clip_id=k) for k in ("fast", "blurred", "letterbox", "static", "broken")]
    rows[0]["start_s"], rows[0]["end_s"] = 2.0, 3.5
    rows.append(empty_row(media_type="image", clip_path=media["image"], clip_id="image"))
    out = {r["clip_id"]: r for r in run_stage(TechnicalStage(cfg_for()), rows)}
    sharp, blurred, boxed, static = (scores_of(out[k]) for k in ("fast", "blurred", "letterbox", "static"))
    assert set(sharp) == TECH_SCORES
    assert blurred["blur"] < 0.5 * sharp["blur"]
    assert sharp["black_border"] == 0.0
    assert boxed["black_border"] == pytest.approx(48 / H, abs=0.03)  # 24-px letterbox bars, top and bottom
    assert static["frozen"] == 1.0 and sharp["frozen"] == 0.0
    assert sharp["duration_s"] == pytest.approx(1.5) and sharp["fps"] == 24.0
    assert (sharp["width"], sharp["height"], sharp["min_side"]) == (W, H, H)
    assert 0 < sharp["brightness"] < 255
    image = scores_of(out["image"])
    assert {"duration_s", "fps", "frozen"}.isdisjoint(image) and image["width"] == W
    assert out["broken"]["error_class"] and out["broken"]["error_stage"] == "technical"


def test_sample_indices_bounds():
    from vidcorpus.filters.scorers import sample_indices

    assert sample_indices(24, 24.0, 2.0, 32) == [0, 11, 22]  # short clip: still three frames
    assert sample_indices(240, 24.0, 2.0, 32) == list(range(0, 240, 12))  # 10 s at 2 fps
    long = sample_indices(10_000, 24.0, 2.0, 32)  # long clip: the step grows, the whole clip is covered
    assert len(long) <= 32 and long[-1] > 9_000
    assert sample_indices(1, 24.0, 2.0, 32) == [0] and sample_indices(0, 24.0, 2.0, 32) == []


# --- recipes --------------------------------------------------------------------------------------

def test_bundled_recipes_load_and_decide():
    from vidcorpus.filters.recipes import bundled_recipes, load_recipe

    assert {"demo_v1", "pretrain_v1"} <= set(bundled_recipes())
    r = load_recipe("pretrain_v1")
    assert r.id == "pretrain_v1@1" and r.missing == "drop"
    good = {"min_side": 720, "aspect": 16 / 9, "duration_s": 8.0, "fps": 30, "frozen": 0.0, "black_border": 0.0,
            "brightness": 120, "blur": 300, "motion_static": 0.0, "motion_jitter": 5.0, "aesthetic": 5.5,
            "clip_text": 0.3}
    assert r.decide(good) == (True, None)
    assert r.decide({**good, "aesthetic": 4.0}) == (False, "aesthetic<4.5")
    assert r.decide({**good, "duration_s": 90.0}) == (False, "duration_s>60")
    assert r.decide({**good, "min_side": 200, "aesthetic": 1.0}) == (False, "min_side<256")  # first failure
    assert r.decide({**good, "motion_static": 1.0}) == (False, "motion_static!=0")
    no_clip = {k: v for k, v in good.items() if k != "clip_text"}
    assert r.decide(no_clip) == (False, "clip_text missing")
    image = {k: v for k, v in good.items() if k not in ("duration_s", "fps", "frozen", "motion_static", "motion_jitter")}
    assert r.decide(image) == (True, None)  # per-predicate missing: keep
    demo = load_recipe("demo_v1")
    assert demo.id == "demo_v1@1" and demo.decide({"aesthetic": 0.05}) == (True, None)
    assert demo.decide({"duration_s": 0.32}) == (False, "duration_s<1")


def test_recipe_from_file_missing_policy_and_errors(tmp_path):
    from vidcorpus.filters.recipes import load_recipe

    f = tmp_path / "mine.yaml"
    f.write_text("name: mine\nversion: 2b\nmissing: drop\npredicates:\n"
                 "  - {score: motion, op: '>', value: 0.5}\n  - {score: aesthetic, op: '!=', value: 3}\n")
    r = load_recipe(str(f))
    assert r.id == "mine@2b"
    assert r.decide({"aesthetic": 5}) == (False, "motion missing")
    assert r.model_copy(update={"missing": "keep"}).decide({"aesthetic": 5}) == (True, None)
    assert r.decide({"motion": 0.5, "aesthetic": 5}) == (False, "motion<=0.5")
    assert r.decide({"motion": 1, "aesthetic": 3}) == (False, "aesthetic==3")
    assert r.decide({"motion": float("nan"), "aesthetic": 5}) == (False, "motion<=0.5")
    with pytest.raises(FileNotFoundError, match="demo_v1"):
        load_recipe("no_such_recipe")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nversion: 1\npredicates:\n  - {score: a, op: '=>', value: 1}\n")
    with pytest.raises(ValueError):
        load_recipe(str(bad))


def test_decide_stage_sets_recipe_kept_reason():
    from vidcorpus.filters.recipes import DecideStage

    def row(cid, **scores):
        return empty_row(clip_id=cid, scores=[{"scorer": k, "model": "m", "version": "v", "value": float(v)}
                                              for k, v in scores.items()])

    rows = [row("ok", duration_s=2, min_side=192, motion=20), row("short", duration_s=0.3, motion=20),
            row("slow", duration_s=2, motion=1), row("image", min_side=192),
            dict(row("failed"), error_class="decode_error", error_stage="clip")]
    out = {r["clip_id"]: r for r in run_stage(DecideStage(cfg_for(recipe="demo_v1")), rows)}
    assert (out["ok"]["kept"], out["ok"]["reason"], out["ok"]["recipe"]) == (True, None, "demo_v1@1")
    assert (out["short"]["kept"], out["short"]["reason"]) == (False, "duration_s<1")
    assert (out["slow"]["kept"], out["slow"]["reason"]) == (False, "motion<8")
    assert out["image"]["kept"] is True
    assert out["failed"]["recipe"] is None and out["failed"]["kept"] is None  # failures pass through


def test_technical_orders_dark_below_normal(media):
    from vidcorpus.filters.recipes import load_recipe
    from vidcorpus.filters.technical import TechnicalStage

    out = {r["clip_id"]: scores_of(r) for r in run_stage(TechnicalStage(cfg_for()),
                                                         [video_row(media[k], 24, clip_id=k) for k in ("fast", "dark")])}
    assert out["dark"]["brightness"] < 0.25 * out["fast"]["brightness"]
    assert out["dark"]["brightness"] < 20 <= out["fast"]["brightness"]
    base = {"min_side": 720, "aspect": 1.7, "black_border": 0.0, "blur": 300, "aesthetic": 6, "aesthetic_min": 6,
            "clip_text": 0.3}
    assert load_recipe("pretrain_v1").decide({**base, "brightness": out["dark"]["brightness"]})[1] == "brightness<20"


# --- CLIP stage: device-side preprocessing, embeddings, captions ----------------------------------

def test_device_preprocessing_matches_open_clip_transform(tiny, media):
    from PIL import Image

    from vidcorpus.clip_models import load_clip
    from vidcorpus.filters.clip_frames import square_frame
    from vidcorpus.filters.clip_scores import gpu_preprocess
    from vidcorpus.media import read_frames

    model, preprocess, _ = load_clip(tiny["clip_model"], tiny["clip_pretrained"], "cpu")
    frames = read_frames(media["v0"].path, n=3)
    mean = torch.tensor(preprocess.transforms[-1].mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(preprocess.transforms[-1].std).view(1, 3, 1, 1) * 255
    ours = gpu_preprocess([square_frame(f) for f in frames], 64, mean, std, torch.float32, pin=False)
    ref = torch.stack([preprocess(Image.fromarray(f)) for f in frames])
    assert ours.shape == ref.shape
    assert (ours - ref).abs().mean() < 0.05  # same transform up to resampling details
    with torch.inference_mode():
        a = model.encode_image(ours, normalize=True)
        b = model.encode_image(ref, normalize=True)
    assert (a * b).sum(1).min() > 0.99


def test_decoder_scaler_follows_the_models_transform_and_default_frames_are_pyavs(tiny, media):
    """Frames resized and cropped by FFmpeg's scaler in the decoder (ScaleToModel, parameters read from
    the model's preprocess config) stay close to open_clip's own transform; the default conversion
    (cached single-thread swscale context, stream info probed without decoding) gives PyAV's frames."""
    import av
    import open_clip
    from PIL import Image

    from vidcorpus.clip_models import load_clip
    from vidcorpus.filters.clip_frames import ScaleToModel, clip_frame_list, decode_wanted
    from vidcorpus.filters.clip_scores import gpu_preprocess

    model, preprocess, _ = load_clip(tiny["clip_model"], tiny["clip_pretrained"], "cpu")
    pre = open_clip.get_model_preprocess_cfg(model)
    scale = ScaleToModel(pre["size"], pre.get("interpolation", "bicubic"), pre.get("resize_mode", "shortest"))
    data = open(media["v0"].path, "rb").read()
    with av.open(media["v0"].path) as c:
        plain = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    wanted = [0, len(plain) // 2, len(plain) - 1]
    rgb = decode_wanted(data, wanted)
    assert all(np.array_equal(rgb[i], plain[i]) for i in wanted)
    small = decode_wanted(data, wanted, scale)
    assert all(small[i].shape == (64, 64, 3) for i in wanted)
    mean = torch.tensor(pre["mean"]).view(1, 3, 1, 1) * 255
    std = torch.tensor(pre["std"]).view(1, 3, 1, 1) * 255
    ours = gpu_preprocess([small[i] for i in wanted], 64, mean, std, torch.float32, pin=False)
    ref = torch.stack([preprocess(Image.fromarray(plain[i])) for i in wanted])
    assert (ours - ref).abs().mean() < 0.05  # same transform up to the resampling filters
    with torch.inference_mode():
        a = model.encode_image(ours, normalize=True)
        b = model.encode_image(ref, normalize=True)
    assert (a * b).sum(1).min() > 0.99
    image = empty_row(media_type="image", clip_path=media["image"])
    img = clip_frame_list(image, open(media["image"], "rb").read(), 3, scale)
    assert len(img) == 1 and img[0].shape == (64, 64, 3)
    ref_img = preprocess(Image.open(media["image"]).convert("RGB"))[None]
    assert (gpu_preprocess(img, 64, mean, std, torch.float32, pin=False) - ref_img).abs().mean() < 0.05
    assert ScaleToModel(224).out_size(360, 640) == (224, 398) and ScaleToModel(224).out_size(640, 360) == (398, 224)
    with pytest.raises(ValueError, match="resize_mode"):
        ScaleToModel(224, resize_mode="longest")


def test_clip_stage_scaling_in_the_decoder_scores_like_the_device_path(tiny, media):
    from vidcorpus.filters.clip_scores import ClipScoreStage

    rows = [video_row(media["fast"], 24, text="a pan", clip_id="f"), video_row(media["broken"], 30, clip_id="x"),
            video_row(media["v0"].path, 30, clip_id="v"),
            empty_row(media_type="image", clip_path=media["image"], clip_id="i")]
    ref = {r["clip_id"]: r for r in run_stage(ClipScoreStage(cfg_for(tiny, clip_batch_size=4)), rows)}
    stage = ClipScoreStage(cfg_for(tiny, clip_batch_size=4))
    stage.scale_in_decoder = True
    out = {r["clip_id"]: r for r in run_stage(stage, rows)}
    assert stage.decoder().scale is not None and stage.decoder().scale.size == 64
    assert out["x"]["error_class"] and not out["x"]["scores"]
    for cid in "fvi":
        assert not out[cid]["error_class"] and out[cid]["content_sha256"] == ref[cid]["content_sha256"]
        assert float(np.dot(out[cid]["embedding"], ref[cid]["embedding"])) > 0.99
        assert set(scores_of(out[cid])) == set(scores_of(ref[cid]))


def test_long_lived_keyframe_decoder_gives_the_seeking_decoders_frames_or_declines(media, tmp_path):
    """KeyframeDecoder (one H.264 decoder per worker, NVDEC when asked for) decodes exactly the
    keyframe samples of extracted clips; anything else is left to the seeking decoder."""
    from vidcorpus.filters.clip_frames import decode_wanted
    from vidcorpus.filters.frame_decoder import FrameDecoder
    from vidcorpus.frame_seek import KeyframeDecoder, decode_frames_seeking
    from vidcorpus.media import uniform_indices

    pan = _texture_shot(30, seed=5, dx=4)
    paths = []
    for i, n in enumerate((30, 17)):
        paths.append(str(tmp_path / f"k{i}.mp4"))
        encode_video(pan[:n], 24, paths[-1], keyframes=uniform_indices(n, 3))
    kd = KeyframeDecoder()
    for path, n in zip(paths, (30, 17)):  # two clips through the same decoder: each with its own SPS/PPS
        data = open(path, "rb").read()
        wanted = uniform_indices(n, 3)
        got, ref = kd.decode(data, wanted), decode_frames_seeking(data, wanted)
        assert got is not None and sorted(got) == wanted
        assert all(np.array_equal(got[i], ref[i]) for i in wanted)
    assert kd.clips == 2 and kd.fallbacks == 0
    fast = open(media["fast"], "rb").read()  # x264's own keyframes: only the first frame is one
    assert kd.decode(fast, [0, 11, 23]) is None and kd.fallbacks == 1
    assert all(np.array_equal(a, b) for a, b in zip(decode_wanted(fast, [0, 11, 23], keyframes=kd).values(),
                                                       decode_wanted(fast, [0, 11, 23]).values()))
    # Workers asked for NVDEC decode on the CPU where there is none; the frames are the same either way.
    rows = [video_row(p, n, clip_id=str(i)) for i, (p, n) in enumerate(zip(paths, (30, 17)))]
    for hwaccel in (None, "cuda"):
        dec = FrameDecoder(1, 3, 4, hwaccel=hwaccel)
        try:
            jobs = dec.submit_many([(r, 3) for r in rows])
            frames = [dec.frames(job[2], dec.result(job)[0]).copy() for job in jobs]
        finally:
            dec.close()
        if hwaccel is None:
            ref_frames = frames
        assert all(np.array_equal(a, b) for a, b in zip(frames, ref_frames))


def test_clip_stage_embeds_hashes_and_aligns_every_caption(tiny, media):
    import hashlib

    from vidcorpus.filters.clip_scores import CaptionAlignStage, ClipScoreStage

    caps = [{"version": "v1", "kind": "long", "text": "a textured surface panning", "model": "m", "prompt_version": "p",
             "meta_json": None},
            {"version": "v2.1", "kind": "short", "text": "texture", "model": "m", "prompt_version": "p",
             "meta_json": None}]
    rows = [video_row(media["fast"], 24, text="a pan", clip_id="f", captions=caps),
            video_row(media["static"], 24, clip_id="s")]
    out = {r["clip_id"]: r for r in run_stage(ClipScoreStage(cfg_for(tiny)), rows)}
    f = out["f"]
    assert set(scores_of(f)) == CLIP_SCORES | {"clip_text_v1_long", "clip_text_v2_1_short"}
    emb = np.asarray(f["embedding"])
    assert emb.shape == (64,) and abs(np.linalg.norm(emb) - 1) < 1e-4
    assert f["content_sha256"] == hashlib.sha256(open(media["fast"], "rb").read()).hexdigest()
    assert f["embedding_model"] == "vidcorpus-tiny-clip"
    # After captioning, the align stage scores the captions from the stored embedding alone (text tower):
    # the same values as scoring them together with the frames.
    bare = dict(f, scores=[s for s in f["scores"] if not s["scorer"].startswith("clip_text_")], kept=True)
    aligned = scores_of(run_stage(CaptionAlignStage(cfg_for(tiny)), [bare])[0])
    for name in ("clip_text_v1_long", "clip_text_v2_1_short"):
        assert aligned[name] == pytest.approx(scores_of(f)[name], abs=1e-4)
    assert out["s"]["embedding"] and "clip_text" not in scores_of(out["s"])


# --- duplicates -----------------------------------------------------------------------------------

def _commit(cat, run_id, rows, root):
    from vidcorpus.filters.dedup import write_embedding_batch

    index = write_embedding_batch(root, run_id, 0, rows)
    cat.commit_results(run_id, rows)
    cat.commit_embeddings(run_id, index)
    return [r["clip_id"] for r in index]


def test_duplicates_exact_and_near_keep_the_best_copy(tiny, media, tmp_path):
    import pyarrow.parquet as pq

    from vidcorpus.catalog.store import Catalog
    from vidcorpus.filters.apply import apply_recipe
    from vidcorpus.filters.clip_scores import ClipScoreStage
    from vidcorpus.filters.dedup import run_dedup
    from vidcorpus.filters.recipes import load_recipe

    stage = ClipScoreStage(cfg_for(tiny))
    names = ("fast", "copy", "near", "other", "static", "dark")
    scored = {r["clip_id"]: r for r in run_stage(stage, [video_row(media[k], 24, clip_id=k) for k in names])}
    e = {k: np.asarray(scored[k]["embedding"]) for k in names}
    near_sim = float(e["fast"] @ e["near"])
    distinct = max(float(e[a] @ e[b]) for a in names for b in names
                   if a < b and {a, b} not in ({"fast", "copy"}, {"fast", "near"}, {"copy", "near"}))
    assert near_sim > distinct  # a brightness shift of 6 stays closer than any other content
    threshold = (near_sim + distinct) / 2
    recipe_file = tmp_path / "dd.yaml"
    recipe_file.write_text(f"name: dd\nversion: 1\nmissing: keep\npredicates:\n"
                           f"  - {{score: dup_exact, op: '==', value: 0}}\n"
                           f"  - {{score: dup_sim, op: '<', value: {threshold}}}\n")
    recipe = load_recipe(str(recipe_file))
    aesthetic = {k: scores_of(scored[k])["aesthetic"] for k in names}

    cat = Catalog(tmp_path / "cat.duckdb")
    # run 1: the original, its exact copy and unrelated clips
    new = _commit(cat, "run1", [scored[k] for k in ("fast", "copy", "other", "static", "dark")], str(tmp_path / "emb"))
    [url] = {r["url"] for r in cat.query_dicts("SELECT url FROM embeddings")}
    assert pq.read_table(url).num_rows == 5
    run_dedup(cat, "run1", new, floor=0.5)
    d = cat.latest_scores()
    exact = {k: d[k]["dup_exact"] for k in ("fast", "copy")}
    assert sorted(exact.values()) == [0.0, 1.0]  # one copy of the identical pair is the duplicate
    assert exact["fast"] == 1.0  # identical scores: ranked by clip_id, so "copy" is the kept copy
    assert d["copy"]["dup_sim"] >= 0.999 or d["fast"]["dup_sim"] >= 0.999
    assert all(d[k]["dup_exact"] == 0.0 for k in ("other", "static", "dark"))

    # run 2: a near-duplicate arrives; the catalog's original is re-scored against it
    new = _commit(cat, "run2", [scored["near"]], str(tmp_path / "emb"))
    written = run_dedup(cat, "run2", new, floor=0.5)
    assert {"near", "fast", "copy"} <= {w["clip_id"] for w in written}
    assert not {"other", "static", "dark"} & {w["clip_id"] for w in written} or distinct >= 0.5
    res = apply_recipe(cat, recipe, "apply1")
    kept = {c: v["kept"] for c, v in cat.current_decisions().items()}
    group = ("copy", "fast", "near")
    best = min(group, key=lambda k: (-aesthetic[k], k))
    assert [k for k in group if kept[k]] == [best]  # exactly one copy of the group: the best-scored one
    assert kept["other"] and kept["static"] and kept["dark"]
    assert res.kept == 4
    dup_before = cat.query_dicts("SELECT clip_id, scorer, value FROM scores WHERE scorer LIKE 'dup_%' ORDER BY 1, 2")
    cat.close()

    # the command re-scores the whole catalog with the same result and re-decides with filters.recipe
    from typer.testing import CliRunner

    from vidcorpus.catalog.store import Catalog as Reader
    from vidcorpus.cli.app import app

    out = CliRunner().invoke(app, ["filter", "dedup", "--catalog", str(tmp_path / "cat.duckdb"),
                                   "--set", f"filters.recipe={recipe_file}"])
    assert out.exit_code == 0, out.output
    assert "6 clips scored for duplicates and re-decided" in " ".join(out.output.split())
    with Reader(tmp_path / "cat.duckdb", read_only=True) as r:
        again = r.query_dicts("SELECT clip_id, scorer, value FROM scores WHERE scorer LIKE 'dup_%' ORDER BY 1, 2")
        assert [(a["clip_id"], a["scorer"]) for a in again] == [
            (b["clip_id"], b["scorer"]) for b in dup_before]
        assert all(abs(a["value"] - b["value"]) < 1e-6 for a, b in zip(again, dup_before))
        assert {c: v["kept"] for c, v in r.current_decisions().items()} == kept


# --- recipes in the catalog: apply, sweep ---------------------------------------------------------

def _scored_catalog(path, n=20):
    """A catalog of n clips with known scores (aesthetic 0..9.5, motion alternating), decided by demo_v1."""
    from vidcorpus.catalog.store import Catalog
    from vidcorpus.filters.recipes import DecideStage

    rows = []
    for i in range(n):
        values = {"aesthetic": i / 2, "motion": 20.0 if i % 2 else 1.0, "min_side": 720, "aspect": 1.7,
                  "black_border": 0.0, "brightness": 120, "blur": 300, "aesthetic_min": i / 2 - (1.0 if i == 11 else 0.2), "clip_text": 0.3}
        rows.append(video_row(f"/x/{i}.mp4", 48, clip_id=f"clip-{i:02d}", source_id=f"src{i:02d}",
                              scores=[{"scorer": k, "model": "m", "version": "v", "value": float(v)}
                                      for k, v in values.items()]))
    rows = run_stage(DecideStage(cfg_for(recipe="demo_v1")), rows)
    cat = Catalog(path)
    cat.commit_results("run0", rows)
    return cat


def test_apply_redecides_from_stored_scores_only(tmp_path):
    from vidcorpus.catalog.store import CatalogError
    from vidcorpus.filters.apply import apply_recipe
    from vidcorpus.recipe_model import register
    from vidcorpus.filters.recipes import load_recipe

    cat = _scored_catalog(tmp_path / "c.duckdb")
    scores_before = cat.query_dicts("SELECT * FROM scores ORDER BY clip_id, scorer")
    assert {d["kept"] for d in cat.current_decisions().values()} == {True, False}  # demo_v1: motion < 8 drops

    pre = load_recipe("pretrain_v1")
    res = apply_recipe(cat, pre, "apply1")
    after = cat.current_decisions()
    assert res.clips == 20 and res.kept == sum(d["kept"] for d in after.values())
    assert all(d["recipe"] == "pretrain_v1@1" for d in after.values())
    # aesthetic >= 4.5 keeps i >= 9: 11 clips; motion is not in pretrain_v1 (motion_static is, missing: keep)
    assert {c for c, d in after.items() if d["kept"]} == {f"clip-{i:02d}" for i in range(9, 20)}
    assert after["clip-03"]["reason"] == "aesthetic<4.5"
    assert res.newly_kept == 5 and res.newly_dropped == 4  # demo_v1 kept the odd ones (moving)
    assert cat.query_dicts("SELECT * FROM scores ORDER BY clip_id, scorer") == scores_before  # untouched
    wide = {r["clip_id"]: r for r in cat.query_dicts("SELECT clip_id, recipe, kept, reason FROM clips_wide")}
    assert {c: (w["recipe"], w["kept"], w["reason"]) for c, w in wide.items()} == {
        c: (d["recipe"], d["kept"], d["reason"]) for c, d in after.items()}  # what users query follows

    # deterministic: the same recipe twice gives the same decisions
    again = apply_recipe(cat, pre, "apply2")
    assert cat.current_decisions() == after and again.newly_kept == again.newly_dropped == 0

    # the catalog keeps every recipe by content; the finetune recipe names aesthetic_min
    hq = apply_recipe(cat, load_recipe("finetune_hq_v1"), "apply3")
    # predicates in order: the still clips fail motion first, clip-11 passes the mean but not every frame
    assert hq.reasons == {"motion<4": 10, "aesthetic<5.5": 5, "aesthetic_min<5": 1} and hq.kept == 4
    assert cat.current_decisions()["clip-11"]["reason"] == "aesthetic_min<5"
    recs = {r["recipe"]: r for r in cat.query_dicts("SELECT * FROM recipes")}
    assert {"pretrain_v1@1", "finetune_hq_v1@1"} <= set(recs)
    assert "aesthetic_min" in recs["finetune_hq_v1@1"]["yaml"] and len(recs["pretrain_v1@1"]["sha256"]) == 64
    changed = pre.model_copy(update={"predicates": pre.predicates[:-1]})
    with pytest.raises(CatalogError, match="new version"):
        register(cat, changed)
    register(cat, changed.model_copy(update={"version": "2"}))  # a new version is accepted
    cat.close()


def test_sweep_and_cli_filter_commands(tmp_path):
    from typer.testing import CliRunner

    from vidcorpus.cli.app import app
    from vidcorpus.filters.apply import sweep
    from vidcorpus.filters.recipes import load_recipe

    path = tmp_path / "c.duckdb"
    cat = _scored_catalog(path)
    rows = sweep(cat, "aesthetic", ">=", steps=5, recipe=load_recipe("pretrain_v1"))
    assert [r["threshold"] for r in rows] == pytest.approx([0, 2.375, 4.75, 7.125, 9.5])
    assert rows[0]["kept"] == 20 and rows[-1]["kept"] == 1
    assert all(a["kept"] >= b["kept"] for a, b in zip(rows, rows[1:]))
    assert all(r["recipe_kept"] <= r["kept"] for r in rows)
    low = sweep(cat, "motion", "<", thresholds=[5.0])[0]
    assert low["kept"] == 10
    with pytest.raises(ValueError, match="no clip has"):
        sweep(cat, "no_such_score")
    cat.close()

    runner = CliRunner()
    res = runner.invoke(app, ["filter", "sweep", "aesthetic", "--catalog", str(path), "--steps", "3",
                              "--recipe", "pretrain_v1"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "retention of aesthetic >= threshold" in text and "pretrain_v1@1" in text
    res = runner.invoke(app, ["filter", "apply", "pretrain_v1", "--catalog", str(path)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # rich wraps to the terminal width
    assert "pretrain_v1@1: 11 of 20 clips kept" in text and "aesthetic<4.5" in text and "scores untouched" in text
    res = runner.invoke(app, ["filter", "apply", "no_such_recipe", "--catalog", str(path)])
    assert res.exit_code == 2


def test_motion_flags_a_shaking_camera(media):
    from vidcorpus.filters.motion import MotionStage

    rows = [video_row(media[k], n, clip_id=k) for k, n in (("fast", 24), ("shaky", 48), ("slow", 24))]
    out = {r["clip_id"]: scores_of(r) for r in run_stage(MotionStage(cfg_for()), rows)}
    assert out["shaky"]["motion_jitter"] > 5 * max(out["fast"]["motion_jitter"], out["slow"]["motion_jitter"], 1.0)
    assert out["shaky"]["motion_jittery"] == 1.0 and out["fast"]["motion_jittery"] == 0.0


def test_clip_stage_model_failure_fails_every_row_and_loses_none(tiny, media):
    from vidcorpus.filters.clip_scores import ClipScoreStage

    stage = ClipScoreStage(cfg_for(tiny, clip_batch_size=2))
    stage.setup()
    stage._ready = True
    calls = {"n": 0}
    real = stage.embed_frames

    def flaky(frames):  # the second model batch fails (after some rows are decoded, before others are)
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(frames)

    stage.embed_frames = flaky
    rows = [video_row(media[k], 24, clip_id=k) for k in ("fast", "slow", "broken", "static", "blurred", "dark")]
    out = run_stage(stage, rows)
    assert sorted(r["clip_id"] for r in out) == sorted(r["clip_id"] for r in rows)  # nothing lost, nothing twice
    assert all(r["error_class"] and r["error_stage"] == "clip" for r in out)
    # the decoder's slots all came back: the next batch scores normally
    stage.embed_frames = real
    again = run_stage(stage, rows[:2])
    assert all(not r["error_class"] and r["embedding"] for r in again)


def test_fast_decoder_returns_exactly_the_sequential_frames(media, tmp_path):
    from vidcorpus.filters.clip_frames import _decode_by_pts, _decode_sequential, decode_wanted
    from vidcorpus.media import uniform_indices

    for key in ("fast", "shaky", "v0"):
        path = media[key] if isinstance(media[key], str) else media[key].path
        data = open(path, "rb").read()
        n = len(_decode_sequential(data, list(range(10_000))))
        for wanted in (uniform_indices(n, 3), uniform_indices(n, 5), [n // 2 + 1], list(range(n))):
            fast = _decode_by_pts(data, wanted)
            slow = _decode_sequential(data, wanted)
            assert fast is not None and sorted(fast) == sorted(slow) == sorted(set(wanted)), (key, wanted)
            assert all(np.array_equal(fast[i], slow[i]) for i in slow), (key, wanted)
    # indices past the end come back missing, without a second decode pass
    assert sorted(decode_wanted(data, [0, n - 1, n + 5])) == [0, n - 1]
    with pytest.raises(Exception):
        decode_wanted(b"not a video at all", [0])


def test_clip_stage_reads_stills_when_present_and_falls_back_to_the_clip(tiny, media, tmp_path):
    """Clips from precise extraction carry a stills file: the stage embeds those frames (same
    positions as decoding the clip, scores within the coding tolerance); a missing or broken stills
    file falls back to decoding the clip; the hash is always of the clip's bytes."""
    import hashlib

    from vidcorpus.filters.clip_frames import clip_frame_list, load_stills, read_clip
    from vidcorpus.filters.clip_scores import ClipScoreStage
    from vidcorpus.ingest.extract import ExtractStage

    cfg = load_config(None, [], workdir=str(tmp_path / "work"),
                      **{f"models.{k}": v for k, v in tiny.items()}, **{"filters.clip_batch_size": 4, "filters.still_size": 128,
                         "split.extract_mode": "precise"})  # exact copies write no stills
    src = [empty_row(source_id=f"s{i}", clip_id=f"clip{i}", media_type="video", source_path=media[name],
                     first_frame=0, last_frame=23, fps=24.0, width=W, height=H, start_s=0.0, end_s=1.0)
           for i, name in enumerate(("fast", "other", "slow"))]
    rows = sorted(ExtractStage(cfg)(rows_to_table(src)).to_pylist(), key=lambda r: r["clip_id"])
    assert all(r["stills_path"] and not r["error_class"] for r in rows)
    # The stills are the frames the fallback decodes, at the same positions (within coding error).
    data, _ = read_clip(rows[0])
    for still, frame in zip(load_stills(rows[0], 3), clip_frame_list(rows[0], data, 3)):
        assert still.shape == (128, 212, 3)  # short side filters.still_size, even sides
        small = cv2.resize(frame, (212, 128), interpolation=cv2.INTER_AREA)
        assert np.abs(still.astype(np.int16) - small).mean() < 3.0

    stage = ClipScoreStage(cfg)  # one stage (one decoder pool) for every run below
    fast = {r["clip_id"]: r for r in run_stage(stage, rows)}
    assert stage.decoder().stills_clips == 3
    ref = {r["clip_id"]: r for r in run_stage(stage, [dict(r, stills_path=None) for r in rows])}
    assert stage.decoder().stills_clips == 3  # none more
    # Scores on stills differ from scores on the clip's frames far less than clips differ from each other.
    spread = {name: np.ptp([scores_of(r)[name] for r in ref.values()]) for name in ("aesthetic", "aesthetic_min")}
    cos_between = max(float(np.dot(ref[a]["embedding"], ref[b]["embedding"])) for a in ref for b in ref if a < b)
    for cid, r in fast.items():
        assert not r["error_class"]
        assert r["content_sha256"] == ref[cid]["content_sha256"] == hashlib.sha256(
            open(r["clip_path"], "rb").read()).hexdigest()
        assert 1 - float(np.dot(r["embedding"], ref[cid]["embedding"])) < 0.05 * (1 - cos_between)
        for name, v in scores_of(ref[cid]).items():
            assert abs(scores_of(r)[name] - v) < 0.05 * spread[name], name

    # Broken and missing stills: the rows are scored from the clip, exactly as without stills.
    (tmp_path / "broken.stills.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    bad = [dict(rows[0], stills_path=str(tmp_path / "broken.stills.jpg")),
           dict(rows[1], stills_path=str(tmp_path / "missing.stills.jpg")),
           dict(rows[2], stills_path=rows[0]["stills_path"], clip_width=W, clip_height=3 * H)]  # wrong shape
    out = {r["clip_id"]: r for r in run_stage(stage, bad)}
    assert stage.decoder().stills_clips == 3
    for cid, r in out.items():
        assert not r["error_class"] and r["embedding"] == ref[cid]["embedding"]
