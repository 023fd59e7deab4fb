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
from vidcorpus.captioning.captioner import load_captioner
from vidcorpus.captioning.prompts import PROMPTS
from vidcorpus.captioning.tiny_models import build_tiny_captioner
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

    def limited(chunk, prompt, max_new_tokens, as_image=False, inputs=None):
        sizes.append(len(chunk))
        if len(chunk) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if inputs is not None:  # prepared for this very chunk
            assert inputs["pixel_values"].shape[0] == len(chunk)
        return real(chunk, prompt, max_new_tokens, as_image, inputs=inputs)

    monkeypatch.setattr(cap, "_generate_batch", limited)
    frames = [_frames(s) for s in range(5)]
    texts = cap.caption(frames, "short", 6)
    assert sizes[:3] == [5, 4, 2] and cap.batch_size == 2
    expected = load_captioner(tiny_dir).caption(frames, "short", 6)
    assert texts == expected


def test_prefetch_out_of_memory_is_retried_at_the_same_size(tiny_dir, monkeypatch):
    """Inputs whose preparation in the thread ran out of GPU memory (the generating batch held it) are
    made again for the same batch; the batch size stays."""

    cap = load_captioner(tiny_dir, batch_size=2)
    cap.prefetch = True
    cap.prefetch_min_batch = 2
    real, failed = cap._prepare, []

    def prepare(chunk, *a, **k):
        if not failed:
            failed.append(len(chunk))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real(chunk, *a, **k)

    monkeypatch.setattr(cap, "_prepare", prepare)
    frames = [_frames(s) for s in range(5)]
    texts = cap.caption(frames, "short", 6)
    assert failed == [2] and cap.batch_size == 2
    assert texts == load_captioner(tiny_dir, batch_size=2).caption(frames, "short", 6)


def test_next_batch_is_prepared_while_one_generates(tiny_dir, monkeypatch):
    """Inputs of batch k+1 (templates, tokens, frames to the device) are made in a thread while batch k
    generates; the captions are those of one batch at a time."""
    import threading
    import time as _time

    cap = load_captioner(tiny_dir, batch_size=2)
    assert not cap.prefetch  # off on CPUs (both threads' torch ops would share the cores); on for the test
    cap.prefetch = True

    cap.prefetch_min_batch = 2  # captioning.prefetch_min_batch: from batch 128 up in production
    events: list[tuple] = []
    real_inputs, real_generate = cap._device_inputs, cap._generate_batch

    def device_inputs(chunk, *a, **k):
        events.append(("prepare", len(chunk), threading.current_thread().name, _time.perf_counter()))
        return real_inputs(chunk, *a, **k)

    def generate(chunk, prompt, max_new_tokens, as_image=False, inputs=None):
        start = _time.perf_counter()
        _time.sleep(0.2)  # a generation long enough to be overlapped
        out = real_generate(chunk, prompt, max_new_tokens, as_image, inputs=inputs)
        events.append(("generate", len(chunk), start, _time.perf_counter()))
        return out

    monkeypatch.setattr(cap, "_device_inputs", device_inputs)
    monkeypatch.setattr(cap, "_generate_batch", generate)
    frames = [_frames(s) for s in range(5)]
    texts = cap.caption(frames, "short", 6)
    prepared = [e for e in events if e[0] == "prepare"]
    generated = [e for e in events if e[0] == "generate"]
    assert [e[1] for e in prepared] == [2, 2, 1] and [e[1] for e in generated] == [2, 2, 1]
    assert all(e[2].startswith("caption-inputs") for e in prepared[1:])  # batches 2 and 3: in the thread
    assert all(prepared[k + 1][3] < generated[k][3] for k in range(2))  # before batch k is done
    assert texts == load_captioner(tiny_dir, batch_size=2).caption(frames[:2], "short", 6) + \
        load_captioner(tiny_dir, batch_size=2).caption(frames[2:4], "short", 6) + \
        load_captioner(tiny_dir, batch_size=2).caption(frames[4:], "short", 6)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> dict:
    from vidcorpus.clip_models import build_tiny_clip
    from vidcorpus.model_names import TINY_CLIP_NAME

    path = tmp_path_factory.mktemp("clip") / "clip.safetensors"
    build_tiny_clip(path)
    return {"clip_model": TINY_CLIP_NAME, "clip_pretrained": str(path)}


def test_caption_stage(tiny_dir, clips, tiny_clip):
    from vidcorpus.captioning.caption_stage import CaptionStage

    cfg = Config()
    cfg = cfg.model_copy(update={"models": cfg.models.model_copy(update={"captioner": tiny_dir, **tiny_clip})})
    paths = clips["videos"] + [clips["image"], clips["broken"]]
    rows = [empty_row(source_id=f"s{i}", clip_id=f"c{i}", clip_path=p, kept=True) for i, p in enumerate(paths)]
    rows.append(empty_row(source_id="dropped", clip_id="d", clip_path=clips["videos"][0], kept=False))
    stage = CaptionStage(cfg)
    assert stage.resources.actor and stage.resources.cpus < 1 and stage.resources.gpus > 0
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
        assert long_meta["frames"] == (1 if cid == "c2" else cfg.captioning.frames_per_clip)  # c2: an image
        qa = {s["scorer"]: s for s in r["scores"]}
        assert set(qa) == {"caption_clip", "caption_clip_short", "caption_degenerate"}
        assert all(s["version"] == "v1/p1" for s in qa.values())
        assert -1.0 <= qa["caption_clip"]["value"] <= 1.0 and qa["caption_clip"]["model"] == tiny_clip["clip_model"]
        assert qa["caption_degenerate"]["value"] == float(long_meta["degenerate"])
    # QA compares each caption with its own clip's frames: captions differ per clip, so do the scores
    assert len({out[c]["scores"][0]["value"] for c in ("c0", "c1", "c2")}) == 3
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
        "from vidcorpus.captioning.captioner import load_captioner\n"
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


# --- chat VLM (tiny Qwen2.5-VL) and the static-graph decoding path -------------------------------

@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> str:
    from vidcorpus.captioning.tiny_models import build_tiny_chat_vlm

    out = tmp_path_factory.mktemp("vlm") / "qwen25"
    build_tiny_chat_vlm(str(out))
    return str(out)


def test_tiny_qwen25_vl_loads_like_production(tiny_vlm):
    cap = load_captioner(tiny_vlm, batch_size=3)
    assert type(cap.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert cap.chat and cap.input_mode == "video" and cap.model.config._attn_implementation == "sdpa"
    assert cap.decode == "static_graph" and cap.graph_decoder is not None
    # the tokenizer learnt real merges: the prompt is words, not bytes
    prompt = PROMPTS["p1"]["long"].chat
    assert len(cap.tokenizer(prompt)["input_ids"]) < len(prompt) / 2
    assert cap.tokenizer.decode(cap.tokenizer(prompt)["input_ids"]) == prompt


def test_static_graph_decoding_matches_generate(tiny_vlm):
    """Same model, same clips: the static-cache path gives generate's greedy tokens exactly (fp32 CPU),
    with left padding (clips of different sizes), images and videos in one call, EOS suppression by
    min_new_tokens and the repetition penalty."""
    frames = [_frames(0), np.random.default_rng(1).integers(0, 256, (6, 96, 80, 3), dtype=np.uint8),
              _frames(2, n=1), _frames(3), _frames(4, n=1)]
    for rp, min_new, kind in ((1.0, 4, "long"), (1.3, 20, "short")):
        fast = load_captioner(tiny_vlm, batch_size=3, repetition_penalty=rp, min_new_tokens=min_new)
        slow = load_captioner(tiny_vlm, batch_size=3, repetition_penalty=rp, min_new_tokens=min_new, decode="default")
        a, b = fast.generate(frames, kind, 20, "p2"), slow.generate(frames, kind, 20, "p2")
        assert [g.decode for g in a] == ["static_graph"] * 5 and [g.decode for g in b] == ["default"] * 5
        assert [g.token_ids for g in a] == [g.token_ids for g in b]
        assert [(g.text, g.n_tokens) for g in a] == [(g.text, g.n_tokens) for g in b]
        assert all(g.n_tokens >= min(min_new, 20) for g in a)
    # images went in as images (fewer tokens than a video of copies) with the image wording
    inputs = fast._inputs([frames[2]], PROMPTS["p2"]["long"], as_image=True)
    assert "pixel_values" in inputs and "pixel_values_videos" not in inputs
    assert "this image" in fast.tokenizer.decode(inputs["input_ids"][0])
    # texts differ between clips: the frames matter on this path too
    assert len({g.text for g in a}) > 1


def test_static_graph_stops_at_eos(tiny_vlm):
    """Rows that end early are padded after EOS like generate's; decoding stops once all have ended."""
    from vidcorpus.captioning.fast_decode import GraphDecoder

    cap = load_captioner(tiny_vlm, decode="default")
    inputs = cap._inputs([_frames(s) for s in range(3)], PROMPTS["p1"]["short"])
    eos = cap.model.generation_config.eos_token_id
    dec = GraphDecoder(cap.model, check_every=2)
    with torch.inference_mode():
        ref = cap.model.generate(**inputs, max_new_tokens=24, do_sample=False)[:, inputs["input_ids"].shape[1]:]
        # make "the most likely token of step 3 for row 0" the EOS: the decoder must stop that row there
        free = dec.generate(inputs, 24, 0, [eos], cap.tokenizer.pad_token_id)
        assert torch.equal(free, ref)
        forced_eos = int(ref[0, 3])
        got = dec.generate(inputs, 24, 0, [forced_eos], cap.tokenizer.pad_token_id)
        want = cap.model.generate(**inputs, max_new_tokens=24, do_sample=False, eos_token_id=forced_eos,
                                  pad_token_id=cap.tokenizer.pad_token_id)[:, inputs["input_ids"].shape[1]:]
    assert got.shape[1] <= 24 and torch.equal(got, want[:, :got.shape[1]])
    assert (got[0, 4:] == cap.tokenizer.pad_token_id).all()


def test_captured_step_reads_only_slot_tensors_and_weights(tiny_vlm):
    """A CUDA graph replays with the memory of the tensors it read at capture. So the decoding step may
    read only the model's weights, its slot's tensors and what it makes itself: a tensor made per call
    (the stop ids were) is freed after that call and a later replay reads whatever took its place (an
    index-out-of-bounds assert on the third call of one batch shape on an H100)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    from vidcorpus.captioning.fast_decode import GraphDecoder

    cap = load_captioner(tiny_vlm, decode="default")
    inputs = cap._inputs([_frames(s) for s in range(2)], PROMPTS["p1"]["short"])
    dec = GraphDecoder(cap.model, use_graph=False)
    with torch.inference_mode():
        dec.generate(inputs, 6, 6, [cap.model.generation_config.eos_token_id], cap.tokenizer.pad_token_id,
                     repetition_penalty=1.3)
    (key, slot), = dec.slots.items()

    def ptr(t):
        return t.untyped_storage().data_ptr()

    class Reads(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.read, self.made = [], set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            self.read += [(func, t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            out = func(*args, **kwargs)
            self.made.update(ptr(t) for t in tree_leaves(out) if isinstance(t, torch.Tensor))
            return out

    owned = {ptr(t) for t in list(cap.model.parameters()) + list(cap.model.buffers())}
    owned.update(ptr(t) for t in tree_leaves(vars(slot)) if isinstance(t, torch.Tensor))
    owned.update(ptr(t) for t in slot.cache.keys + slot.cache.values + [slot.cache.index])
    reads = Reads()
    with torch.inference_mode():
        dec._reset(slot, int(slot.prompt_len), slot.out.clone())  # back to the state a replay starts from
        with reads:
            dec._step(slot, key[3])
    foreign = [(str(func), tuple(t.shape)) for func, t in reads.read
               if t.dim() > 0 and ptr(t) not in owned | reads.made]
    assert not foreign, foreign


def test_blip_ignores_static_graph(tiny_dir):
    cap = load_captioner(tiny_dir)  # decode defaults to static_graph; BLIP is not a chat model
    assert cap.graph_decoder is None
    assert {g.decode for g in cap.generate([_frames(0)], "short", 6)} == {"default"}
    with pytest.raises(ValueError):
        load_captioner(tiny_dir, decode="fastest")


def test_fps_sampling():
    from vidcorpus.media import fps_indices

    assert fps_indices(100, 25.0, 2.0) == [6, 18, 31, 43, 56, 68, 81, 93]  # 4 s at 2 fps, centred
    assert fps_indices(100, 25.0, 2.0, 4) == [0, 33, 66, 99]  # capped: spread uniformly
    assert fps_indices(10, 25.0, 1.0) == [5]  # shorter than one interval: its middle frame
    assert fps_indices(0, 25.0, 1.0) == []


def test_read_frames_at_fps(clips):
    from vidcorpus.media import probe_video, read_frames

    meta = probe_video(clips["videos"][0])
    frames = read_frames(clips["videos"][0], n=64, fps=2.0)
    expected = max(1, int(meta["n_frames"] / meta["fps"] * 2.0))
    assert frames.shape[0] == min(64, expected) and frames.dtype == np.uint8
    assert read_frames(clips["videos"][0], n=2, fps=100.0).shape[0] == 2


def test_caption_versions_round_trip_catalog_shards_training(tmp_path):
    """Two caption versions of one clip coexist in the catalog; a shard's txt is the version asked for,
    its json carries all of them with their settings, and training picks one by name and kind."""
    import random

    import webdataset as wds

    from vidcorpus.catalog.store import Catalog
    from vidcorpus.config import TrainConfig, load_config
    from vidcorpus.ids import clip_id
    from vidcorpus.media import encode_video, save_jpeg
    from vidcorpus.jobs.pack_shards import write_pending_shards
    from vidcorpus.train.data import decode_sample

    frames = np.random.default_rng(0).integers(0, 256, (8, 64, 96, 3), dtype=np.uint8)
    path, first = tmp_path / "c.mp4", tmp_path / "c.first.jpg"
    encode_video(frames, 24, str(path))
    save_jpeg(frames[0], str(first))
    sid = "0" * 16
    row = empty_row(source_id=sid, uri="https://example.com/c.mp4", text="alt text", media_type="video", width=96,
                    height=64, fps=24.0, n_frames=8, duration_s=8 / 24, clip_id=clip_id(sid, 0, 7), first_frame=0,
                    last_frame=7, start_s=0.0, end_s=8 / 24, clip_path=str(path), first_frame_path=str(first),
                    recipe="r@1", kept=True)

    def caps(version, model, pv):
        meta = json.dumps({"generation": {"max_new_tokens": 48, "do_sample": False}, "decode": "static_graph"})
        return [{"version": version, "kind": k, "text": f"{version} {k} caption", "model": model,
                 "prompt_version": pv, "meta_json": meta} for k in ("long", "short")]

    cfg = load_config(None, [], workdir=str(tmp_path / "work"), **{"shards.caption_version": "v2"})
    with Catalog(cfg.catalog_path) as cat:
        cat.commit_results("run1", [dict(row, captions=caps("v1", "blip", "p1"))])
        cat.commit_results("run2", [dict(row, captions=caps("v2", "Qwen/Qwen2.5-VL-3B-Instruct", "p2"))])
        cat.commit_results("run3", [dict(row, captions=caps("v2", "Qwen/Qwen2.5-VL-3B-Instruct", "p2"))])  # rerun
        stored = cat.captions_of([row["clip_id"]])[row["clip_id"]]
        assert [(c["version"], c["kind"]) for c in stored] == [("v1", "long"), ("v1", "short"), ("v2", "long"),
                                                               ("v2", "short")]
        assert {c["model"] for c in stored if c["version"] == "v2"} == {"Qwen/Qwen2.5-VL-3B-Instruct"}
        assert json.loads(stored[2]["meta_json"])["decode"] == "static_graph"
        [manifest] = write_pending_shards(cfg, cat, "run4", progress=False)
    [sample] = list(wds.WebDataset(manifest["url"], shardshuffle=False))
    assert sample["txt"].decode() == "v2 long caption"
    meta = json.loads(sample["json"])
    assert {(c["version"], c["kind"], c["prompt_version"]) for c in meta["captions"]} == {
        ("v1", "long", "p1"), ("v1", "short", "p1"), ("v2", "long", "p2"), ("v2", "short", "p2")}
    tcfg = TrainConfig(num_frames=4, height=32, width=32)
    assert decode_sample(sample, tcfg, random.Random(0))["text"] == "v2 long caption"
    picked = decode_sample(sample, TrainConfig(num_frames=4, height=32, width=32, caption_version="v1",
                                               caption_kind="short"), random.Random(0))
    assert picked["text"] == "v1 short caption"
    missing = TrainConfig(num_frames=4, height=32, width=32, caption_version="v9")
    assert decode_sample(sample, missing, random.Random(0))["text"] == "v2 long caption"


def test_fast_attention_kernels_equal_sdpa():
    """The decode step's grouped-query attention and the vision tower's packed attention compute what
    transformers' SDPA path computes (repeat_kv + a masked SDPA; one SDPA call per segment)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from vidcorpus.captioning.decode_attention import gqa_decode_attention, varlen_sdpa

    g = torch.Generator().manual_seed(0)
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 4, False
    q, k, v = (torch.randn(3, n, length, 16, generator=g) for n, length in ((8, 1), (2, 40), (2, 40)))
    mask = torch.rand(3, 1, 1, 40, generator=g) > 0.3
    mask[:, :, :, -1] = True
    ours, _ = gqa_decode_attention(module, q, k, v, mask, scaling=0.25)
    ref, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.25)
    assert ours.shape == ref.shape == (3, 1, 8, 16) and torch.allclose(ours, ref, atol=1e-5)

    cu = torch.tensor([0, 16, 32, 41, 57, 60])  # equal and unequal segment lengths
    q, k, v = (torch.randn(1, 4, 60, 8, generator=g) for _ in range(3))
    ours, _ = varlen_sdpa(module, q, k, v, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=16, max_length_k=16,
                          scaling=0.3, is_causal=False)
    parts = [torch.nn.functional.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], scale=0.3)
             for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())]
    ref = torch.cat(parts, dim=2).transpose(1, 2)
    assert ours.shape == ref.shape == (1, 60, 4, 8) and torch.allclose(ours, ref, atol=1e-6)
    # back-to-back windows of one length (every window of a 224 px frame): the view path, same result,
    # with what transformers passes: int32 cumulative lengths, (1, H, S, D) views of (S, H, D) tensors
    cu = torch.arange(0, 61, 12, dtype=torch.int32)
    q, k, v = (torch.randn(60, 4, 8, generator=g).transpose(0, 1).unsqueeze(0) for _ in range(3))
    ours, _ = varlen_sdpa(module, q, k, v, cu_seq_lens_q=cu, cu_seq_lens_k=cu, scaling=0.3, is_causal=False)
    parts = [torch.nn.functional.scaled_dot_product_attention(q[:, :, a:a + 12], k[:, :, a:a + 12],
                                                              v[:, :, a:a + 12], scale=0.3) for a in range(0, 60, 12)]
    ref = torch.cat(parts, dim=2).transpose(1, 2)
    assert ours.shape == ref.shape == (1, 60, 4, 8) and torch.allclose(ours, ref, atol=1e-6)


def test_fast_prefill_matches_transformers(tiny_vlm, monkeypatch):
    """The static path's prefill forms (packed vision attention, the patch embedding as a matmul, the
    rope index on CPU copies, compiled blocks) give transformers' vision outputs and generated tokens,
    and leave the model as it was once the context ends."""
    from vidcorpus.captioning.decode_attention import VARLEN_ATTENTION, register_attention
    from vidcorpus.captioning.fast_prefill import FastPrefill

    import vidcorpus.captioning.decode_attention as decode_attention

    register_attention()
    cap = load_captioner(tiny_vlm, decode="default")
    inputs = cap._inputs([_frames(s) for s in range(2)], PROMPTS["p1"]["long"])
    vision = cap.model.model.visual
    calls = {"varlen": 0, "rope": 0, "block": 0, "block_fallback": 0, "before": 0, "after": 0}
    varlen, rope = decode_attention.varlen_sdpa, cap.model.model.get_rope_index

    def counted(name, fn):
        def call(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return call

    def counted_varlen(*a, **k):
        calls["varlen"] += 1
        return varlen(*a, **k)

    def counted_rope(*a, **k):
        calls["rope"] += 1
        assert all(t.device.type == "cpu" for t in list(a) + list(k.values()) if isinstance(t, torch.Tensor))
        return rope(*a, **k)

    monkeypatch.setattr(decode_attention, "varlen_sdpa", counted_varlen)
    register_attention()
    monkeypatch.setattr(cap.model.model, "get_rope_index", counted_rope)  # an instance attribute: restored as is
    pix, grid = inputs["pixel_values_videos"], inputs["video_grid_thw"]
    lm_layers = cap.model.model.language_model.layers
    with torch.inference_mode():
        ref = vision(pix, grid_thw=grid).pooler_output
        ref_gen = cap.model.generate(**inputs, max_new_tokens=6, do_sample=False)
        for compile_blocks in (False, True):
            fast = FastPrefill(cap.model, VARLEN_ATTENTION, compile=compile_blocks, compile_backend="eager",
                               cpu_rope=True)
            if compile_blocks:  # count the fused, compiled graphs' calls (from outside the graphs)
                fast._fused = {name: counted(name, fn) for name, fn in fast._fused_calls().items()}
            with fast:
                assert "forward" in vision.patch_embed.__dict__  # the matmul form is in place
                assert "get_rope_index" in cap.model.model.__dict__
                got = vision(pix, grid_thw=grid).pooler_output
                got_gen = cap.model.generate(**inputs, max_new_tokens=6, do_sample=False)
                if compile_blocks:
                    assert all("forward" in b.__dict__ for b in vision.blocks)
                    assert all("forward" in layer.__dict__ for layer in lm_layers)
            assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()
            assert torch.equal(got_gen, ref_gen)  # float32: the same greedy tokens as transformers
            assert calls["varlen"] > 0 and calls["rope"] > 0  # the fast forms ran
            if compile_blocks:  # windowed and full-attention blocks fused (their windows are equal here),
                # every layer before and after its attention in the prompt's forward; none in decoding steps
                n_vision, n_lm = len(vision.blocks), len(lm_layers)
                assert calls["block"] == 2 * n_vision and calls["block_fallback"] == 0
                assert calls["before"] == calls["after"] == n_lm
            assert "forward" not in vision.patch_embed.__dict__
            assert cap.model.model.__dict__["get_rope_index"] is counted_rope
            assert all(b._compiled_call_impl is None and "forward" not in b.__dict__ for b in vision.blocks)
            assert all("forward" not in layer.__dict__ for layer in lm_layers)
            assert cap.model.config.vision_config._attn_implementation == "sdpa"
        assert torch.equal(vision(pix, grid_thw=grid).pooler_output, ref)
        # a failure while switching on (here: compiling with an unknown backend) changes nothing
        broken = FastPrefill(cap.model, VARLEN_ATTENTION, compile=True, compile_backend="no_such_backend")
        with pytest.raises(Exception):
            with broken:
                pass
        assert "forward" not in vision.patch_embed.__dict__ and broken._depth == 0
        assert all("forward" not in b.__dict__ for b in vision.blocks)
        assert cap.model.config.vision_config._attn_implementation == "sdpa"


def test_rope_index_on_cpu_leaves_pixel_values_where_they_are():
    """The CPU rope index copies what it reads (ids, masks, grids, seconds per grid) and not the pixel
    values generate also hands it (1.2 GB at batch 512); results go back to the inputs' device."""
    from vidcorpus.captioning.fast_prefill import _on_cpu

    seen = {}

    def rope_index(input_ids, **kwargs):
        seen.update(ids=input_ids.device.type, **{k: v.device.type for k, v in kwargs.items()})
        return input_ids + 1, torch.zeros(1)

    pixels = torch.empty(4, 3, device="meta")  # a copy of a meta tensor would raise
    pos, deltas = _on_cpu(rope_index)(torch.zeros(1, 3, dtype=torch.long), pixel_values_videos=pixels,
                                      second_per_grid_ts=torch.ones(1))
    assert seen == {"ids": "cpu", "pixel_values_videos": "meta", "second_per_grid_ts": "cpu"}
    assert pos.tolist() == [[1, 1, 1]] and deltas.device.type == "cpu"


def test_rope_index_of_alike_rows_is_computed_once(tiny_vlm):
    """A batch of clips of one size has identical rows (the video tokens are placeholders): the rope
    index is computed for one row and copied, with transformers' numbers; a batch with a clip of
    another size goes through transformers' loop."""
    from vidcorpus.captioning.fast_prefill import _alike_rows_once

    cap = load_captioner(tiny_vlm, decode="default")
    rope = cap.model.model.get_rope_index
    for frames, alike in (([_frames(s) for s in range(3)], True),
                          ([_frames(0), np.random.default_rng(1).integers(0, 256, (6, 96, 80, 3), dtype=np.uint8),
                            _frames(2)], False)):
        inputs = cap._inputs(frames, PROMPTS["p1"]["long"])
        kwargs = {k: v for k, v in inputs.items() if k != "input_ids"}  # pixel values too, as generate passes
        once = _alike_rows_once(rope)
        with torch.inference_mode():
            ref, got = rope(inputs["input_ids"], **kwargs), once(inputs["input_ids"], **kwargs)
        assert once.calls_from_one_row == int(alike)
        assert all(torch.equal(a, b) for a, b in zip(ref, got)) and got[0].shape == ref[0].shape


def test_compile_failure_keeps_the_static_path(tiny_vlm):
    """A prefill whose compilation fails warns and goes on uncompiled, with generate's tokens."""
    from vidcorpus.captioning.fast_decode import GraphDecoder

    cap = load_captioner(tiny_vlm, decode="default")
    inputs = cap._inputs([_frames(s) for s in range(2)], PROMPTS["p1"]["short"])
    eos, pad = cap.model.generation_config.eos_token_id, cap.tokenizer.pad_token_id
    dec = GraphDecoder(cap.model, use_graph=False, compile_prefill=True)
    dec.fast_prefill.compile_backend = "no_such_backend"
    with torch.inference_mode():
        ref = cap.model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        with pytest.warns(RuntimeWarning, match="compiled prefill failed"):
            got = dec.generate(inputs, 8, 8, [eos], pad)
    assert torch.equal(got, ref[:, inputs["input_ids"].shape[1]:])
    assert dec.fast_prefill.targets == [] and not dec.fast_prefill.compiles


def test_compiled_decoding_step_matches_generate(tiny_vlm):
    """The decoding step through torch.compile (aot_eager: the functionalised graph, in-place writes
    to the slot as copies) gives generate's tokens (float32), repetition penalty included, at three
    batch sizes with two compiles (the second shape-generic); a step whose compilation fails warns and
    decodes uncompiled, with the same tokens."""
    from torch._dynamo.utils import counters

    from vidcorpus.captioning.fast_decode import GraphDecoder

    cap = load_captioner(tiny_vlm, decode="default")
    eos, pad = cap.model.generation_config.eos_token_id, cap.tokenizer.pad_token_id
    with torch.inference_mode():
        for rp in (1.0, 1.3):
            dec = GraphDecoder(cap.model, use_graph=False, compile_decode=True, compile_backend="aot_eager")
            graphs = counters["stats"]["unique_graphs"]
            for batch in (1, 2, 3):
                inputs = cap._inputs([_frames(s) for s in range(batch)], PROMPTS["p1"]["short"])
                start = inputs["input_ids"].shape[1]
                ref = cap.model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                                         repetition_penalty=rp)[:, start:]
                got = dec.generate(inputs, 8, 8, [eos], pad, repetition_penalty=rp)
                assert torch.equal(got, ref) and dec.compile_decode
            assert 1 <= counters["stats"]["unique_graphs"] - graphs <= 2
        broken = GraphDecoder(cap.model, use_graph=False, compile_decode=True, compile_backend="no_such_backend")
        with pytest.warns(RuntimeWarning, match="compiled decoding step failed"):
            got = broken.generate(inputs, 8, 8, [eos], pad, repetition_penalty=1.3)
    assert torch.equal(got, ref) and not broken.compile_decode


def test_aligned_gated_mlp_equals_the_mlp():
    """Gate and up as one product of a width padded to a multiple of 8 (Qwen2.5-VL's vision MLP: 3420
    wide, with biases): the padded columns are silu(0) * 0 and meet zero weights, the sums are equal."""
    from types import SimpleNamespace

    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLMLP

    from vidcorpus.captioning.fused_blocks import gated_mlp_aligned

    torch.manual_seed(0)
    for bias in (True, False):
        mlp = Qwen2_5_VLMLP(SimpleNamespace(hidden_size=16, intermediate_size=60, hidden_act="silu"), bias=bias)
        x = torch.randn(5, 16)
        with torch.no_grad():
            assert torch.allclose(gated_mlp_aligned(mlp, x), mlp(x), atol=1e-6)


def test_fast_prefill_with_unequal_windows_uses_transformers_blocks(tiny_vlm):
    """Frames whose attention windows differ in length (96x80 here) go through the blocks' own forward
    (compiled as it is) inside the context, with transformers' outputs and tokens."""
    from vidcorpus.captioning.decode_attention import VARLEN_ATTENTION, register_attention
    from vidcorpus.captioning.fast_prefill import FastPrefill

    register_attention()
    cap = load_captioner(tiny_vlm, decode="default")
    odd = np.random.default_rng(1).integers(0, 256, (6, 96, 80, 3), dtype=np.uint8)
    inputs = cap._inputs([odd, odd], PROMPTS["p1"]["long"])
    vision, calls = cap.model.model.visual, {"block": 0, "block_fallback": 0}
    fast = FastPrefill(cap.model, VARLEN_ATTENTION, compile=True, compile_backend="aot_eager", cpu_rope=True)

    def counted(name, fn):
        def call(*a, **k):
            calls[name] = calls.get(name, 0) + 1
            return fn(*a, **k)
        return call

    fast._fused = {name: counted(name, fn) for name, fn in fast._fused_calls().items()}
    pix, grid = inputs["pixel_values_videos"], inputs["video_grid_thw"]
    with torch.inference_mode():
        ref = vision(pix, grid_thw=grid).pooler_output
        ref_gen = cap.model.generate(**inputs, max_new_tokens=6, do_sample=False)
        with fast:
            got = vision(pix, grid_thw=grid).pooler_output
            got_gen = cap.model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert calls["block_fallback"] > 0
    assert torch.allclose(got, ref, atol=1e-5) and torch.equal(got_gen, ref_gen)


def test_cleanup_on_vlm_style_output():
    """Output shaped like a chat VLM's long captions: boilerplate plus a cut-off sentence, a sentence
    loop, 'we see', a refusal with a follow-up offer, word loops at the token limit."""
    text, edits = clean_caption(
        "The video shows a young woman in a red jacket walking along a busy city street at dusk. She carries a "
        "shopping bag in her left hand and looks at her phone. The camera follows her from behind as she passes "
        "illuminated shop windows. As she reaches the corner, she turns left and")
    assert edits == ["boilerplate", "truncated"]
    assert text.startswith("A young woman in a red jacket") and text.endswith("illuminated shop windows.")
    assert clean_caption("A man is standing on a beach at sunset. The waves are crashing on the shore. The waves are "
                         "crashing on the shore. The waves are crashing on the shore. The waves are crashing on the "
                         "shore.") == ("A man is standing on a beach at sunset. The waves are crashing on the shore.",
                                       ["repetition"])
    assert clean_caption("In this video, we see a chef chopping vegetables on a wooden cutting board.")[0] == (
        "A chef chopping vegetables on a wooden cutting board.")
    refusal = clean_caption("I'm sorry, but I can't provide a description of this video because the frames appear "
                            "to be completely black. However, if you provide another video I can help.")
    assert refusal == ("", ["refusal"]) and is_degenerate(refusal[0])
    assert clean_caption("This clip features a drone shot of a mountain lake surrounded by pine trees, the camera "
                         "slowly pans from left to right right right right right right right") == (
        "A drone shot of a mountain lake surrounded by pine trees, the camera slowly pans from left to right",
        ["boilerplate", "repetition"])
    assert is_degenerate("<|im_end|>")  # a special token that leaked through is not a caption


_LLAVA_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}{% if c['type'] == 'image' %}"
    "<image>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _build_tiny_llava(out: Path) -> None:
    """A tiny random LLaVA (CLIP vision tower + Llama, image-only processor) saved like a hub model."""
    from transformers import CLIPImageProcessor, GenerationConfig, LlavaConfig, LlavaForConditionalGeneration
    from transformers import LlavaProcessor

    from vidcorpus.captioning.tiny_models import build_chat_tokenizer

    tok = build_chat_tokenizer(extra_specials=("<image>",))
    ids = tok.convert_tokens_to_ids
    eos, pad = ids("<|im_end|>"), ids("<|endoftext|>")
    cfg = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=28, patch_size=14, projection_dim=32),
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         initializer_range=0.1, eos_token_id=eos, pad_token_id=pad, bos_token_id=None),
        image_token_index=ids("<image>"), image_seq_length=4, vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg).eval()
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad)
    model.save_pretrained(out)
    LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}),
                   tokenizer=tok, patch_size=14, vision_feature_select_strategy="default", chat_template=_LLAVA_TEMPLATE,
                   num_additional_image_tokens=1).save_pretrained(out)


def test_llava_style_model_gets_frames_as_images(tmp_path):
    """A chat VLM without a video processor gets one image per frame; the static path works for it too."""
    _build_tiny_llava(tmp_path / "llava")
    fast = load_captioner(str(tmp_path / "llava"), batch_size=4)
    slow = load_captioner(str(tmp_path / "llava"), batch_size=4, decode="default")
    assert type(fast.model).__name__ == "LlavaForConditionalGeneration" and fast.input_mode == "multi_image"
    frames = [_frames(0), _frames(1, n=2), _frames(2, n=1), _frames(3)]
    inputs = fast._inputs(frames[:2], PROMPTS["p1"]["long"])
    image_token = fast.model.config.image_token_id
    assert inputs["pixel_values"].shape[0] == 6  # 4 + 2 frames, in order
    assert (inputs["input_ids"] == image_token).sum(1).tolist() == [16, 8]  # 4 tokens per frame
    a, b = fast.generate(frames, "long", 12), slow.generate(frames, "long", 12)
    assert [g.decode for g in a] == ["static_graph"] * 4
    assert [g.token_ids for g in a] == [g.token_ids for g in b] and all(g.text for g in a)


def test_a_warmed_up_caption_stage_compiles_its_shapes_at_setup_and_captions_as_a_cold_one(tiny_dir, clips, tiny_clip,
                                                                                         monkeypatch):
    """captioning.warmup: the dummy batches (full size, then 2 clips; long and short) run at setup,
    before the first real batch, and change nothing the real batches produce."""
    from vidcorpus.captioning.caption_stage import CaptionStage
    from vidcorpus.captioning.captioner import Captioner

    cold = Config()
    cold = cold.model_copy(update={"models": cold.models.model_copy(update={"captioner": tiny_dir, **tiny_clip})})
    warm = cold.model_copy(update={"captioning": cold.captioning.model_copy(update={"warmup": True})})
    rows = [empty_row(source_id=f"s{i}", clip_id=f"c{i}", clip_path=p, kept=True) for i, p in enumerate(clips["videos"])]
    calls: list[tuple[int, str]] = []
    generate = Captioner.generate

    def counting(self, frames, kind, *a, **kw):
        calls.append((len(frames), kind))
        return generate(self, frames, kind, *a, **kw)

    monkeypatch.setattr(Captioner, "generate", counting)
    stage = CaptionStage(warm)
    stage.setup()
    stage._ready = True
    assert calls == [(8, "long"), (8, "short"), (2, "long"), (2, "short")]  # 8: the CPU batch size
    calls.clear()
    texts = lambda out: {r["clip_id"]: [c["text"] for c in r["captions"]] for r in out.to_pylist()}  # noqa: E731
    assert texts(stage(rows_to_table(rows))) == texts(CaptionStage(cold)(rows_to_table(rows)))
    assert CaptionStage(cold).config.captioning.warmup is None  # off on the CPU unless asked for


def test_a_failed_warm_up_is_one_warning_and_the_stage_still_captions(tiny_dir, clips, tiny_clip, monkeypatch):
    from vidcorpus import events
    from vidcorpus.captioning.caption_stage import CaptionStage
    from vidcorpus.captioning.captioner import Captioner

    cfg = Config()
    cfg = cfg.model_copy(update={"models": cfg.models.model_copy(update={"captioner": tiny_dir, **tiny_clip}),
                                 "captioning": cfg.captioning.model_copy(update={"warmup": True})})
    generate, calls = Captioner.generate, []

    def failing_once(self, frames, kind, *a, **kw):
        calls.append(len(frames))
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return generate(self, frames, kind, *a, **kw)

    monkeypatch.setattr(Captioner, "generate", failing_once)
    rows = [empty_row(source_id="s0", clip_id="c0", clip_path=clips["videos"][0], kept=True)]
    out, raised = events.split(CaptionStage(cfg)(rows_to_table(rows)).to_pylist())  # its warnings travel with the rows
    assert [e["message"] for e in raised if "warm-up failed" in e["message"]], raised
    assert out[0]["error_class"] is None and [c["kind"] for c in out[0]["captions"]] == ["long", "short"]
