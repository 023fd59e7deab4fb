"""Captioning's job-shaped batching: the long and short captions of a batch share one vision pass,
and short batches are padded to the batch size so a job compiles one shape (tiny Qwen2.5-VL, CPU)."""

from __future__ import annotations

import numpy as np
import pytest

from vidcorpus.captioning.captioner import Captioner, load_captioner

LIMITS = {"long": 12, "short": 6}


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> str:
    from vidcorpus.captioning.tiny_models import build_tiny_chat_vlm

    out = tmp_path_factory.mktemp("vlm") / "qwen25"
    build_tiny_chat_vlm(str(out))
    return str(out)


def _clips(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (4, 48, 64, 3), dtype=np.uint8) for _ in range(n)]


def _tokens(gens) -> list[tuple]:
    return [g.token_ids for g in gens]


def _record_batch_sizes(monkeypatch, breaks: np.ndarray | None = None) -> list[int]:
    """The size of every batch the captioner generates, in order; a batch holding ``breaks`` fails."""
    sizes: list[int] = []
    original = Captioner._generate_batch

    def recording(self, chunk, *a, **kw):
        sizes.append(len(chunk))
        if breaks is not None and any(f is breaks for f in chunk):
            raise RuntimeError("this clip breaks any batch it is in")
        return original(self, chunk, *a, **kw)

    monkeypatch.setattr(Captioner, "_generate_batch", recording)
    return sizes


def test_kinds_share_the_vision_pass_and_give_the_same_tokens(tiny_vlm, monkeypatch):
    """generate_kinds runs the vision tower once per batch for both kinds, and every caption is the
    token sequence a separate generate call gives."""
    clips = _clips(5)
    cap = load_captioner(tiny_vlm, batch_size=2, probe_rows=0)
    tower = cap.model.model.visual
    calls = []
    original = type(tower).forward

    def counting(self, *a, **kw):
        calls.append(a[0].shape)
        return original(self, *a, **kw)

    monkeypatch.setattr(type(tower), "forward", counting)
    together = cap.generate_kinds(clips, LIMITS)
    assert len(calls) == 3  # batches of 2, 2 and 1: one pass each, not one per kind
    assert cap.shared_vision == {"runs": 3, "hits": 3}  # each short caption took its long one's pass
    calls.clear()
    separate = {kind: cap.generate(clips, kind, n) for kind, n in LIMITS.items()}
    assert len(calls) == 6
    for kind in LIMITS:
        assert _tokens(together[kind]) == _tokens(separate[kind])
    assert _tokens(together["long"]) != _tokens(together["short"])  # the prompts differ: so do the captions
    assert "forward" not in tower.__dict__  # the model is left as it was


def test_other_frames_are_never_answered_from_memory(tiny_vlm):
    """The shared pass is checked, not assumed: inside one context a batch of other frames runs the tower."""
    from vidcorpus.captioning.shared_vision import SharedVision

    cap = load_captioner(tiny_vlm, batch_size=4, probe_rows=0)
    a, b = _clips(2, seed=1), _clips(2, seed=2)
    with SharedVision(cap.model) as shared:
        first = cap.generate(a, "long", 8)
        second = cap.generate(b, "long", 8)
    assert (shared.runs, shared.hits) == (2, 0)
    assert _tokens(second) == _tokens(cap.generate(b, "long", 8))
    assert _tokens(first) != _tokens(second)


def test_a_short_batch_is_padded_to_the_batch_size_and_only_its_clips_come_back(tiny_vlm, monkeypatch):
    clips = _clips(5, seed=3)
    plain = load_captioner(tiny_vlm, batch_size=4, pad_batches=False)
    padded = load_captioner(tiny_vlm, batch_size=4, pad_batches=True)
    sizes = _record_batch_sizes(monkeypatch)
    want = plain.generate(clips, "long", 10)
    assert sizes == [4, 1]
    sizes.clear()
    got = padded.generate(clips, "long", 10)
    assert sizes == [4, 4]  # one batch shape: the 1-clip tail went in with 3 copies of itself
    assert len(got) == 5 and _tokens(got) == _tokens(want)
    assert load_captioner(tiny_vlm, batch_size=4).pad_batches is False  # CPU: nothing compiles, nothing padded


def test_a_short_batch_is_padded_to_the_smallest_shape_that_holds_it(tiny_vlm, monkeypatch):
    """captioning.pad_shapes: a group of a few kept clips costs a small batch, not a whole one (on the
    H100 node every group of one source's clips went in padded to 512: 44 s of GPU each)."""
    clips = _clips(11, seed=9)
    plain = load_captioner(tiny_vlm, batch_size=8, pad_batches=False)
    padded = load_captioner(tiny_vlm, batch_size=8, pad_batches=True, pad_shapes=3)
    assert padded.pad_sizes() == [8, 4, 2]
    sizes = _record_batch_sizes(monkeypatch)
    want = plain.generate(clips[:3], "long", 10) + plain.generate(clips, "long", 10)
    assert sizes == [3, 8, 3]
    sizes.clear()
    got = padded.generate(clips[:3], "long", 10) + padded.generate(clips, "long", 10)
    assert sizes == [4, 8, 4]  # 3 clips in a shape of 4 (not 8); 11 as 8 and 3 in a 4
    assert len(got) == 14 and _tokens(got) == _tokens(want)
    sizes.clear()
    padded.generate(clips[:1], "long", 10)
    assert sizes == [2]  # the smallest shape
    assert load_captioner(tiny_vlm, batch_size=8, pad_batches=True, pad_shapes=9).pad_sizes() == [8, 4, 2]  # not 1


def test_out_of_memory_on_a_padded_batch_retries_smaller_than_what_failed(tiny_vlm, monkeypatch):
    """Halving the batch size alone left a padded batch at its pad shape (3 clips in a shape of 4 at
    batch sizes 8 and 4 alike): the retry must be smaller than the batch that ran out of memory."""
    import torch

    cap = load_captioner(tiny_vlm, batch_size=8, pad_batches=True, pad_shapes=3)
    real, sizes = cap._generate_batch, []

    def limited(chunk, *a, **kw):
        sizes.append(len(chunk))
        if len(chunk) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(chunk, *a, **kw)

    monkeypatch.setattr(cap, "_generate_batch", limited)
    clips = _clips(3, seed=10)
    got = cap.generate(clips, "long", 8)
    assert sizes == [4, 2, 2] and cap.batch_size == 2  # not [4, 4, 2, 2]
    assert _tokens(got) == _tokens(load_captioner(tiny_vlm, batch_size=8).generate(clips, "long", 8))


@pytest.mark.parametrize("batch,shapes,warmed", [(3, 1, [3]), (4, 2, [4, 2]), (3, 2, [3])])
def test_a_padded_caption_stage_warms_up_at_its_shapes(tiny_vlm, tmp_path, monkeypatch, batch, shapes, warmed):
    """captioning.pad_batches: the warm-up captions a full batch of each kind and, with several pad
    shapes, a batch of the smallest (whose second compile serves the shapes between); one shape: no
    second shape to compile; never a shape of 1 (compile specialises it: nothing generic comes of it)."""
    from vidcorpus.captioning.caption_stage import CaptionStage
    from vidcorpus.config import Config

    cfg = Config()
    cfg = cfg.model_copy(update={
        "models": cfg.models.model_copy(update={"captioner": tiny_vlm}),
        "captioning": cfg.captioning.model_copy(update={"warmup": True, "pad_batches": True, "qa": False,
                                                        "batch_size": batch, "max_new_tokens": 6, "pad_shapes": shapes,
                                                        "short_max_new_tokens": 4})})
    calls = []
    generate = Captioner.generate

    def counting(self, frames, kind, *a, **kw):
        calls.append((len(frames), kind))
        return generate(self, frames, kind, *a, **kw)

    monkeypatch.setattr(Captioner, "generate", counting)
    stage = CaptionStage(cfg)
    stage.setup()
    assert calls == [(n, kind) for n in warmed for kind in ("long", "short")]
    # the short captions took the long ones' vision pass (the other run is the probe's reference pass)
    assert stage.captioner.shared_vision == {"runs": 1 + len(warmed), "hits": len(warmed)}


def test_a_failing_padded_batch_is_retried_clip_by_clip_unpadded(tiny_vlm, monkeypatch):
    """A clip that breaks its batch fails alone; the clip-by-clip retry is not padded to whole batches
    (512 on a GPU)."""
    from vidcorpus.captioning.caption_stage import CaptionStage
    from vidcorpus.config import Config

    cfg = Config()
    cfg = cfg.model_copy(update={
        "models": cfg.models.model_copy(update={"captioner": tiny_vlm}),
        "captioning": cfg.captioning.model_copy(update={"pad_batches": True, "qa": False, "batch_size": 4,
                                                        "max_new_tokens": 6, "short_max_new_tokens": 4})})
    stage = CaptionStage(cfg)
    stage.setup()
    good, bad = _clips(2, seed=4)
    sizes = _record_batch_sizes(monkeypatch, breaks=bad)
    out = stage._generate_isolated([good, bad], {"long": 6, "short": 4})
    # both kinds together (the long kind's batch, padded to the pad shape of 2, fails), then each kind:
    # its whole batch, then clip by clip, unpadded
    assert sizes == [2, 2, 1, 1, 2, 1, 1]
    for kind in ("long", "short"):
        assert not isinstance(out[kind][0], Exception) and isinstance(out[kind][1], RuntimeError)
    assert stage.captioner.pad_batches is True


def test_clip_embeddings_preprocessed_in_threads_equal_one_thread(tmp_path):
    import torch

    from vidcorpus.clip_models import embed_images, load_clip
    from vidcorpus.jobs.models import resolve_models
    from vidcorpus.config import Config

    m = resolve_models(Config().models.model_copy(update={"cache_dir": str(tmp_path)}), only={"clip"})
    model, preprocess, _tok = load_clip(m.clip_model, m.clip_pretrained, torch.device("cpu"))
    frames = [f for clip in _clips(3, seed=5) for f in clip]
    one = embed_images(model, preprocess, frames, "cpu", batch_size=5)
    many = embed_images(model, preprocess, frames, "cpu", batch_size=5, threads=4)
    assert one.shape == (12, one.shape[1]) and torch.equal(one, many)


def test_the_stage_scales_frames_once_in_its_readers_and_captions_as_before(tiny_vlm, tmp_path, monkeypatch):
    """Frames above captioning.max_pixels are scaled where the clip is read, so generate gets small
    frames for both kinds, with the captions it gave when it scaled them itself."""
    import av

    from vidcorpus.captioning.caption_stage import CaptionStage
    from vidcorpus.config import Config
    from vidcorpus.schemas import empty_row

    path = tmp_path / "wide.mp4"
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 320, 192, "yuv420p"
        for i in range(12):
            arr = np.random.default_rng(i).integers(0, 256, (192, 320, 3), dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    cfg = Config()
    cfg = cfg.model_copy(update={
        "models": cfg.models.model_copy(update={"captioner": tiny_vlm}),
        "captioning": cfg.captioning.model_copy(update={"qa": False, "max_pixels": 96 * 64, "frames_per_clip": 4,
                                                        "max_new_tokens": 6, "short_max_new_tokens": 4})})
    stage = CaptionStage(cfg)
    stage.setup()
    seen = []
    generate = Captioner.generate

    def recording(self, frames, kind, *a, **kw):
        seen.append([f.shape for f in frames])
        return generate(self, frames, kind, *a, **kw)

    monkeypatch.setattr(Captioner, "generate", recording)
    rows = stage.process_rows([empty_row(source_id="s", clip_id="c", clip_path=str(path), kept=True)])
    assert seen and all(h * w <= 96 * 64 for shapes in seen for (_n, h, w, _c) in shapes)
    from vidcorpus.media import read_frames

    raw = read_frames(str(path), n=4)
    want = {k: stage.captioner.generate([raw], k, n)[0].text for k, n in (("long", 6), ("short", 4))}
    assert [c["text"] for c in rows[0]["captions"]] == [want["long"], want["short"]]


def test_a_broken_fast_vision_path_is_still_caught_by_the_probe(tiny_vlm, monkeypatch):
    """The first-batch probe runs the reference model: it must get the tower's reference features,
    never the fast path's shared ones, or a broken fast path would be checked against itself."""
    import torch

    from vidcorpus.captioning import fast_prefill

    def broken(embed):
        return lambda x: type(embed).forward(embed, x) * 0.0 + 1.0  # the fast patch embedding, gone wrong

    monkeypatch.setattr(fast_prefill, "_linear_patch_embed", broken)
    clips = _clips(2, seed=6)
    cap = load_captioner(tiny_vlm, batch_size=2, probe_rows=4)
    with pytest.warns(RuntimeWarning, match="static_graph"):
        got = cap.generate_kinds(clips, LIMITS)
    reference = load_captioner(tiny_vlm, batch_size=2, decode="default")
    for kind, n in LIMITS.items():
        assert _tokens(got[kind]) == _tokens(reference.generate(clips, kind, n))
    assert {g.decode for g in got["long"]} == {"default"}
    assert torch.is_tensor(cap.model.model.visual.patch_embed.proj.weight)  # the model itself untouched


def test_images_and_videos_in_one_call_share_per_group_and_only_videos_are_padded(tiny_vlm, monkeypatch):
    clips = _clips(3, seed=7) + [_clips(1, seed=8)[0][:1]]  # three videos, one image
    cap = load_captioner(tiny_vlm, batch_size=4, probe_rows=0, pad_batches=True)
    sizes = _record_batch_sizes(monkeypatch)
    got = cap.generate_kinds(clips, LIMITS)
    assert sizes == [4, 4, 1, 1]  # the videos padded to the batch, the lone image not
    assert cap.shared_vision == {"runs": 2, "hits": 2}  # one pass per group, both kinds
    plain = load_captioner(tiny_vlm, batch_size=4, probe_rows=0)
    for kind, n in LIMITS.items():
        assert _tokens(got[kind]) == _tokens(plain.generate(clips, kind, n))
