"""Captioning: tiny BLIP through the production loader, the caption stage, cleanup, fail-fast loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vidcorpus.captioning.cleanup import clean_caption, collapse_repeats, is_degenerate
from vidcorpus.captioning.models import PROMPTS, build_tiny_captioner, load_captioner
from vidcorpus.config import Config
from vidcorpus.schemas import empty_row, rows_to_table


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("captioner") / "captioner"
    build_tiny_captioner(str(out))
    return str(out)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict:
    from vidcorpus.synth import make_image, make_video

    d = tmp_path_factory.mktemp("clips")
    videos = [make_video(i, d).path for i in range(2)]
    image, _ = make_image(0, d)
    broken = d / "broken.mp4"
    broken.write_bytes(b"<html>404 not found</html>\n")
    return {"videos": videos, "image": image, "broken": str(broken)}


def _frames(seed: int, n: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 48, 64, 3), dtype=np.uint8)


def test_tiny_captioner_round_trips(tiny_dir):
    assert (Path(tiny_dir) / "config.json").exists()
    assert not [p for p in Path(tiny_dir).parent.iterdir() if p.name.startswith(".")]  # no temp dir left
    a = load_captioner(tiny_dir)
    b = load_captioner(tiny_dir)
    assert type(a.model).__name__ == "BlipForConditionalGeneration"
    assert a.model.dtype == torch.float32 and a.device.type == "cpu"
    assert len(a.tokenizer) > 300  # the offline vocabulary really is in the saved tokenizer
    for pa_, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa_, pb)
    frames = [_frames(s) for s in range(3)]
    gens = a.generate(frames, "long", 12)
    assert [g.text for g in gens] == b.caption(frames, "long", 12)  # greedy: deterministic
    assert all(g.text and g.n_tokens >= 4 for g in gens)  # min_new_tokens: never empty
    assert len({g.text for g in gens}) > 1  # captions depend on the image


_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _build_tiny_qwen2_vl(out: Path) -> None:
    """A tiny random Qwen2-VL (byte-level tokenizer, Qwen-style chat template): the production code path."""
    from transformers import Qwen2Tokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor
    from transformers import Qwen2VLProcessor
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, bos_token=None, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": [
        "<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]})
    ids = tok.convert_tokens_to_ids
    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4},
                         bos_token_id=None, eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>")),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
    )
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(cfg).save_pretrained(out)
    pixels = dict(min_pixels=56 * 56, max_pixels=112 * 112)
    Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels), video_processor=Qwen2VLVideoProcessor(**pixels),
                     tokenizer=tok, chat_template=_CHAT_TEMPLATE).save_pretrained(out)


def test_chat_vlm_path_with_tiny_qwen2_vl(tmp_path):
    """The production branch: chat template, frames as a video, left-padded batches, SDPA."""
    _build_tiny_qwen2_vl(tmp_path / "qwen")
    cap = load_captioner(str(tmp_path / "qwen"), batch_size=2)
    assert cap.chat and cap.input_mode == "video" and cap.tokenizer.padding_side == "left"
    assert cap.model.config._attn_implementation == "sdpa"
    frames = [_frames(0), _frames(1), _frames(2, n=3)]  # an odd frame count too
    gens = cap.generate(frames, "long", 8)
    assert len(gens) == 3 and all(g.text and 4 <= g.n_tokens <= 8 for g in gens)
    assert [g.text for g in gens] == cap.caption(frames, "long", 8)


def test_rebuild_is_identical(tiny_dir, tmp_path):
    other = tmp_path / "again"
    build_tiny_captioner(str(other))
    assert (other / "model.safetensors").read_bytes() == (Path(tiny_dir) / "model.safetensors").read_bytes()


def test_oom_halves_batch_and_retries(tiny_dir, monkeypatch):
    cap = load_captioner(tiny_dir, batch_size=8)
    real = cap._generate_batch
    sizes: list[int] = []

    def limited(chunk, prompt, max_new_tokens):
        sizes.append(len(chunk))
        if len(chunk) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(chunk, prompt, max_new_tokens)

    monkeypatch.setattr(cap, "_generate_batch", limited)
    frames = [_frames(s) for s in range(5)]
    texts = cap.caption(frames, "short", 6)
    assert sizes[:3] == [5, 4, 2] and cap.batch_size == 2
    expected = load_captioner(tiny_dir).caption(frames, "short", 6)
    assert texts == expected


def test_caption_stage(tiny_dir, clips):
    from vidcorpus.captioning.stage import CaptionStage

    cfg = Config()
    cfg = cfg.model_copy(update={"models": cfg.models.model_copy(update={"captioner": tiny_dir})})
    paths = clips["videos"] + [clips["image"], clips["broken"]]
    rows = [empty_row(source_id=f"s{i}", clip_id=f"c{i}", clip_path=p, kept=True) for i, p in enumerate(paths)]
    rows.append(empty_row(source_id="dropped", clip_id="d", clip_path=clips["videos"][0], kept=False))
    stage = CaptionStage(cfg)
    assert stage.resources.actor and stage.resources.cpus < 1 and stage.wants_gpu
    out = {r["clip_id"]: r for r in stage(rows_to_table(rows)).to_pylist()}
    assert set(out) == {"c0", "c1", "c2", "c3", "d"}

    for cid in ("c0", "c1", "c2"):
        r = out[cid]
        assert r["error_class"] is None
        assert [c["kind"] for c in r["captions"]] == ["long", "short"]
        for c in r["captions"]:
            assert c["text"].strip()
            assert c["model"] == "captioner" and c["prompt_version"] == "p1" and c["version"] == "v1"
            meta = json.loads(c["meta_json"])
            assert meta["generation"]["do_sample"] is False and meta["input"] == "middle_frame"
            assert isinstance(meta["edits"], list) and isinstance(meta["degenerate"], bool)
        long_meta = json.loads(r["captions"][0]["meta_json"])
        assert long_meta["generation"]["max_new_tokens"] == cfg.captioning.max_new_tokens
    bad = out["c3"]
    assert bad["error_stage"] == "caption" and bad["error_class"] and bad["captions"] == []
    assert out["d"]["captions"] == [] and out["d"]["error_class"] is None  # not kept: untouched


def test_cleanup_examples():
    assert clean_caption("The video shows a man riding a bike down a hill.") == (
        "A man riding a bike down a hill.", ["boilerplate"])
    assert clean_caption("In this video, a dog runs on the beach. It chases a ball.") == (
        "A dog runs on the beach. It chases a ball.", ["boilerplate"])
    assert clean_caption("This image depicts two cats on a sofa.")[0] == "Two cats on a sofa."
    assert clean_caption("a picture of a dog running") == ("a dog running", ["boilerplate"])
    assert clean_caption("I'm sorry, but I can't help with that.") == ("", ["refusal"])
    assert clean_caption("a cat a cat a cat a cat sitting on a mat") == ("a cat sitting on a mat", ["repetition"])
    assert clean_caption("A man walks. A man walks. A man walks in the park.")[0] == "A man walks in the park."
    assert clean_caption("A bird flies. A bird flies.") == ("A bird flies.", ["duplicate_sentence"])
    assert clean_caption("A red car drives on the road. The car turns left and then the") == (
        "A red car drives on the road.", ["truncated"])
    # the model stopped by itself: an unpunctuated ending is kept
    assert clean_caption("A red car drives. The car turns left", truncated=False)[1] == []
    # no full sentence to fall back to: keep the fragment
    assert clean_caption("a dog running on the") == ("a dog running on the", [])
    assert clean_caption("The clip depicts\ta   woman\x00 cooking.") == ("A woman cooking.", ["whitespace", "boilerplate"])
    assert clean_caption("A calm lake at sunset.") == ("A calm lake at sunset.", [])
    assert collapse_repeats("very very good") == "very very good"  # two in a row is language, not a loop


def test_is_degenerate():
    assert is_degenerate("") and is_degenerate(None) and is_degenerate("a dog")
    assert is_degenerate("the the the the the the the the")
    assert is_degenerate("12 34 56 ### !!! ?? a b c 78")
    assert not is_degenerate("A dog runs along a sandy beach at sunset.")


def test_prompts_are_versioned():
    assert set(PROMPTS["p1"]) == {"long", "short"}


def test_missing_production_captioner_fails_fast(tmp_path):
    code = (
        "import time\n"
        "from vidcorpus.captioning.models import load_captioner\n"
        "from vidcorpus.errors import ModelNotAvailable\n"
        "from vidcorpus.presets import PRODUCTION\n"
        "t = time.time()\n"
        "try:\n"
        "    load_captioner(PRODUCTION['captioner'])\n"
        "except ModelNotAvailable as e:\n"
        "    print('ERR', round(time.time() - t, 1), e)\n"
    )
    # an empty Hugging Face cache: the production id is certainly not cached there
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert res.stdout.startswith("ERR"), res.stdout + res.stderr
    seconds, message = float(res.stdout.split()[1]), res.stdout
    assert seconds < 5
    from vidcorpus.presets import PRODUCTION

    assert PRODUCTION["captioner"] in message and "models.captioner" in message and "huggingface-cli download" in message and "--preset tiny" in message


def test_auto_class_covers_blip_and_qwen_vl():
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    from vidcorpus.presets import PRODUCTION

    assert "/" in PRODUCTION["captioner"]  # a hub id, loaded by the same Auto class as the tiny BLIP
    assert {"blip", "qwen2_vl", "qwen2_5_vl"} <= set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)
