"""Base-stage training on real WebDataset shards with the tiny I2VGen-XL build (CPU, seconds)."""

from __future__ import annotations

import io
import json
import math
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
from PIL import Image

from vidcorpus.config import TrainConfig
from vidcorpus.errors import DecodeError, ModelNotAvailable
from vidcorpus.media import encode_video
from vidcorpus.synth import FPS, make_video

GOOD_VIDEOS = ["clip0", "clip1", "clip2"]  # 4 frames at 8 fps from 24 fps sources
SHORT, IMAGE, BAD = "short0", "image0", "broken0"


def _frames(path: str, n: int) -> np.ndarray:
    """The first n frames, decoded single-threaded (see train/data.py on threaded decoders)."""
    import av

    out = []
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type, s.thread_count = "NONE", 1
        for frame in c.decode(s):
            out.append(frame.to_ndarray(format="rgb24"))
            if len(out) == n:
                break
    return np.stack(out)


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _sample(key: str, media_key: str, data: bytes, first: np.ndarray, text: str, media_type: str,
            n_frames: int | None, fps: float | None) -> dict:
    h, w = first.shape[:2]
    meta = {"clip_id": key, "media_type": media_type, "fps": fps, "n_frames": n_frames, "width": w, "height": h,
            "text": text, "captions": [], "scores": []}
    return {"__key__": key, media_key: data, "first.jpg": _jpeg(first), "json": json.dumps(meta).encode(),
            "txt": text.encode("utf-8")}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    from vidcorpus.train.i2vgen_components import build_tiny_i2vgen

    out = str(tmp_path_factory.mktemp("models") / "i2vgen")
    build_tiny_i2vgen(out)
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict:
    """Three shards: two H.264 clips; a VP9 clip and a 6-frame clip; an image and a corrupt mp4."""
    root = tmp_path_factory.mktemp("shards")
    media = root / "media"
    media.mkdir()
    samples = []
    for i, key in enumerate(GOOD_VIDEOS):
        codec, ext = ("libvpx-vp9", ".webm") if i == 2 else ("libx264", ".mp4")
        v = make_video(i, media, codec=codec, ext=ext)
        first = _frames(v.path, 1)[0]
        n = v.shots[-1][1] + 1
        samples.append(_sample(key, "mp4", Path(v.path).read_bytes(), first, v.text, "video", n, FPS))
    short_frames = _frames(str(media / "synth_00.mp4"), 6)
    buf = io.BytesIO()
    encode_video(short_frames, FPS, buf)
    samples.append(_sample(SHORT, "mp4", buf.getvalue(), short_frames[0], "a very short clip", "video", 6, FPS))
    still = short_frames[3]
    samples.append(_sample(IMAGE, "jpg", _jpeg(still), still, "a still image", "image", 1, None))
    samples.append(_sample(BAD, "mp4", b"\x00\x00\x00\x18ftypisom" + b"garbage" * 50, still, "broken", "video", 48, FPS))

    layout = [[0, 1], [2, 3], [4, 5]]
    urls = []
    for s, members in enumerate(layout):
        url = str(root / f"shard-{s:02d}.tar")
        with wds.TarWriter(url) as sink:
            for m in members:
                sink.write(samples[m])
        urls.append(url)
    return {"urls": urls, "texts": {s["__key__"]: s["txt"].decode() for s in samples}}


def _cfg(**kw) -> TrainConfig:
    base = dict(steps=6, batch_size=2, num_frames=4, height=64, width=64, fps=8, shuffle_buffer=8, seed=0,
                warmup_steps=2, lr=1e-4)
    base.update(kw)
    return TrainConfig(**base)


# -- models ---------------------------------------------------------------------------------------

def test_tiny_model_round_trips_through_the_hub_layout(tiny_model, tmp_path):
    from diffusers import I2VGenXLUNet

    from vidcorpus.train.i2vgen_components import SUBFOLDERS, TINY_UNET, build_tiny_i2vgen, load_components

    index = json.loads((Path(tiny_model) / "model_index.json").read_text())
    assert set(SUBFOLDERS) <= set(index)
    comps = load_components(tiny_model, "cpu", torch.float32)
    norm = lambda c: json.loads(json.dumps({k: v for k, v in dict(c).items() if not k.startswith("_")}))  # noqa: E731
    assert norm(comps.unet.config) == norm(I2VGenXLUNet(**TINY_UNET).config)
    assert all(norm(comps.unet.config)[k] == json.loads(json.dumps(v)) for k, v in TINY_UNET.items())
    assert comps.text_encoder.config.hidden_size == comps.unet.config.cross_attention_dim
    assert comps.image_encoder.config.projection_dim == comps.unet.config.cross_attention_dim
    sc = comps.scheduler.config
    assert (sc.prediction_type, sc.beta_schedule, sc.rescale_betas_zero_snr, sc.timestep_spacing) == (
        "v_prediction", "squaredcos_cap_v2", True, "leading")
    assert float(comps.scheduler.alphas_cumprod[-1]) == pytest.approx(0.0, abs=1e-6)  # zero terminal SNR
    for frozen in (comps.vae, comps.text_encoder, comps.image_encoder):
        assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.training
    assert comps.tokenizer("a white ball").input_ids[0] == comps.tokenizer.bos_token_id

    # Seeded: a second build is bit-identical.
    again = tmp_path / "again"
    build_tiny_i2vgen(str(again))
    other = I2VGenXLUNet.from_pretrained(str(again), subfolder="unet")
    for (n, a), (_, b) in zip(comps.unet.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), n


def test_missing_model_fails_fast_naming_the_fix(tmp_path):
    from vidcorpus.train.i2vgen_components import load_components

    with pytest.raises(ModelNotAvailable, match="i2vgen"):
        load_components(str(tmp_path / "nope"))
    with pytest.raises(ModelNotAvailable, match="huggingface-cli download"):
        load_components("vidcorpus-test/not-a-cached-model")


# -- data -----------------------------------------------------------------------------------------

def test_frame_indices_keep_spacing_and_never_pad():
    from vidcorpus.train.data import frame_indices

    rng = random.Random(0)
    idx, stride = frame_indices(100, 24.0, 4, 8, rng)
    assert stride == 3.0 and len(idx) == 4 and np.all(np.diff(idx) == 3) and idx[-1] <= 99
    for _ in range(5):
        short = frame_indices(6, 24.0, 4, 8, rng)[0]  # too short: fewer frames, same spacing
        assert len(short) == 2 and short[1] - short[0] == 3 and short[1] <= 5
    assert frame_indices(3, 6.0, 4, 8, rng)[0] == [0, 1, 2]  # slower source: every frame
    assert frame_indices(None, 24.0, 4, 8, rng)[0] == [0, 3, 6, 9]  # length unknown: from the start


def test_stream_decodes_buckets_and_reports_failures(shards):
    from vidcorpus.train.data import BucketBatcher, ClipStream, DecodeFailure

    cfg = _cfg()
    items = list(ClipStream(shards["urls"] + [shards["urls"][0] + ".missing"], cfg))
    failures = [s for s in items if isinstance(s, DecodeFailure)]
    good = {s["key"]: s for s in items if not isinstance(s, DecodeFailure)}
    assert [f.key for f in failures] == [BAD] and isinstance(failures[0].error, DecodeError)
    assert set(good) == {*GOOD_VIDEOS, SHORT, IMAGE}
    frames = {k: s["video"].shape[0] for k, s in good.items()}
    assert frames == {**{k: 4 for k in GOOD_VIDEOS}, SHORT: 2, IMAGE: 1}
    for k, s in good.items():
        v = s["video"]
        assert v.shape[1:] == (3, 64, 64) and v.dtype == torch.float32
        assert -1.0 <= float(v.min()) and float(v.max()) <= 1.0 and float(v.std()) > 0.05
        assert torch.equal(s["first_frame"], v[0])
        assert s["text"] == shards["texts"][k]
        assert s["fps"] == 8
    # Frames really are 3 source frames apart (24 -> 8 fps) and move: consecutive frames differ.
    assert float((good["clip0"]["video"][1] - good["clip0"]["video"][0]).abs().mean()) > 0.0

    errors = []
    batches = list(BucketBatcher(2, on_error=lambda k, e: errors.append(k))(items))
    assert errors == [BAD]
    assert sorted(k for b in batches for k in b["key"]) == sorted(good)
    for b in batches:
        f = b["video"].shape[1]
        assert all(frames[k] == f for k in b["key"])  # one bucket per batch
        assert b["video"].shape[0] == len(b["key"]) == b["fps"].shape[0]


# -- training -------------------------------------------------------------------------------------

def test_train_base_steps_on_shard_samples(tiny_model, shards, tmp_path):
    from diffusers import I2VGenXLUNet

    from vidcorpus.train.loop import train_base

    errors: list[tuple[str, Exception]] = []
    allowed = {*GOOD_VIDEOS, SHORT, IMAGE, BAD} - {"clip1"}  # a catalog selection that excludes clip1
    out = tmp_path / "ckpt"
    res = train_base(_cfg(steps=7), tiny_model, shards["urls"], str(out),
                     on_error=lambda k, e: errors.append((k, e)), progress=False, keys=allowed)
    assert res.steps == 7 and len(res.losses) == 7
    assert all(math.isfinite(x) and x > 0 for x in res.losses)
    assert set(res.sample_keys) == {"clip0", "clip2", SHORT, IMAGE}  # every selected good clip, nothing else
    assert BAD not in res.sample_keys and "clip1" not in res.sample_keys
    assert res.epochs >= 2  # 4 batches an epoch: the stream was started again
    assert [k for k, _ in errors] == [BAD]  # reported once, although two epochs passed it
    assert isinstance(errors[0][1], DecodeError)
    assert [s for s, _ in res.step_keys] == sorted(s for s, _ in res.step_keys)
    assert [k for _, k in res.step_keys] == res.sample_keys

    ckpt = Path(res.checkpoint_dir)
    assert ckpt == out / "checkpoints" / "step-00000007"
    state = json.loads((ckpt / "train_state.json").read_text())
    assert state["step"] == 7 and state["last_loss"] == res.losses[-1]
    # The checkpoint holds the cursor, not the history: the clip ids of every step (and their
    # losses) are in the rank's Parquet sample log beside it, flushed at the checkpoint.
    assert not {"losses", "sample_keys", "step_keys"} & set(state)
    assert state["samples"] == {"dir": "train_samples", "through_step": 7, "rows": [len(res.sample_keys)]}
    [part] = (out / "train_samples" / "rank-00000").glob("*.parquet")
    assert part.name == "steps-00000000-00000007.parquet"
    log = pq.read_table(part)
    assert list(zip(log["step"].to_pylist(), log["clip_id"].to_pylist())) == res.step_keys
    assert [f[0] for f in state["decode_failures"]] == [BAD]
    trained = I2VGenXLUNet.from_pretrained(str(ckpt / "unet"))
    ema = I2VGenXLUNet.from_pretrained(str(ckpt / "unet_ema"))
    initial = I2VGenXLUNet.from_pretrained(tiny_model, subfolder="unet")
    w = "conv_out.weight"
    d_trained = (trained.state_dict()[w] - initial.state_dict()[w]).abs().sum()
    d_ema = (ema.state_dict()[w] - initial.state_dict()[w]).abs().sum()
    assert 0 < d_ema < d_trained  # EMA (decay 0.999) trails the trained weights


@torch.no_grad()
def _eval_loss(comps, batch, cfg, seeds=range(6)) -> float:
    """Loss on fixed noise and timesteps (seeded), so two UNets are compared on the same draws."""
    from vidcorpus.train.objective import TextEncoderCache, diffusion_loss

    comps.unet.eval()
    cache = TextEncoderCache(comps)
    return float(np.mean([diffusion_loss(comps, cache, batch, cfg, torch.Generator().manual_seed(s)).item()
                          for s in seeds]))


def test_overfitting_one_batch_lowers_the_loss(tiny_model, shards, tmp_path):
    from diffusers import I2VGenXLUNet

    from vidcorpus.train.data import iter_batches
    from vidcorpus.train.loop import train_base
    from vidcorpus.train.i2vgen_components import load_components

    cfg = _cfg(steps=30, lr=1e-3, warmup_steps=3, drop_text=0.0, drop_image=0.0, drop_first_frame=0.0,
               ema_decay=0.9)
    one = shards["urls"][:1]  # clip0 + clip1: exactly one batch of two, every epoch
    res = train_base(cfg, tiny_model, one, str(tmp_path / "ckpt"), progress=False)
    assert set(res.sample_keys) == {"clip0", "clip1"}
    # Per-step losses are dominated by which timestep was drawn, so the trend is judged on fixed
    # draws: the same batch, noise and timesteps through the initial and the trained UNet.
    comps = load_components(tiny_model)
    batch = next(iter_batches(one, cfg))
    before = _eval_loss(comps, batch, cfg)
    comps.unet = I2VGenXLUNet.from_pretrained(str(Path(res.checkpoint_dir) / "unet"))
    after = _eval_loss(comps, batch, cfg)
    print(f"fixed-draw loss {before:.4f} -> {after:.4f}; steps {res.losses[:2]} ... {res.losses[-10:]}")
    assert after < 0.75 * before, (before, after)
    # And the trajectory: the first steps (an untrained UNet) sit above the late ones.
    assert np.mean(res.losses[:2]) > np.mean(res.losses[-10:]), res.losses


def test_cached_latents_train_the_same_objective(tiny_model, shards, tmp_path):
    """Sidecar shards of encoder outputs (the latent cache) stand in for decode + VAE + CLIP: the same
    batch gives the same loss for the same draws, and the loop trains on them without a video."""
    from vidcorpus.train.latent_encode import encode_sample
    from vidcorpus.shard_reader import sample_pipeline
    from vidcorpus.shards.writer import stream_tar
    from vidcorpus.train.data import collate, decode_sample, iter_batches
    from vidcorpus.train.loop import train_base
    from vidcorpus.train.i2vgen_components import load_components
    from vidcorpus.train.objective import TextEncoderCache, diffusion_loss

    cfg = _cfg(steps=3, drop_text=0.3, drop_image=0.3, drop_first_frame=0.3)
    comps = load_components(tiny_model)
    cache = TextEncoderCache(comps)
    raw = list(sample_pipeline(shards["urls"][:1], split=False))  # clip0, clip1
    decoded = {s["__key__"]: decode_sample(s, cfg, None) for s in raw}  # the cache's frame window
    sidecar = str(tmp_path / "latents" / "shard-00.tar")
    stream_tar(sidecar, [encode_sample(comps, cache, decoded[k], "testkey") for k in sorted(decoded)])

    cached = next(iter_batches([sidecar], cfg))
    assert "video" not in cached and sorted(cached["key"]) == sorted(decoded)
    assert cached["text"] == [shards["texts"][k] for k in cached["key"]]
    pixels = collate([decoded[k] for k in cached["key"]])
    comps.unet.eval()
    with torch.no_grad():
        for seed in range(3):
            a = diffusion_loss(comps, cache, pixels, cfg, torch.Generator().manual_seed(seed)).item()
            b = diffusion_loss(comps, cache, cached, cfg, torch.Generator().manual_seed(seed)).item()
            assert b == pytest.approx(a, rel=2e-2), (seed, a, b)  # float16 storage of the cache

    res = train_base(cfg, tiny_model, [sidecar], str(tmp_path / "run"), progress=False)
    assert res.steps == 3 and all(math.isfinite(x) for x in res.losses)
    assert set(res.sample_keys) == set(decoded)


def test_a_selection_with_nothing_trainable_fails_clearly_through_the_prefetcher(tiny_model, shards, tmp_path):
    from vidcorpus.train.loop import train_base
    from vidcorpus.train.stream import NoTrainableSamples

    errors = []
    with pytest.raises(NoTrainableSamples, match="1 failed to decode"):
        train_base(_cfg(steps=2, prefetch_batches=2), tiny_model, shards["urls"][2:], str(tmp_path / "run"),
                   progress=False, keys={BAD}, on_error=lambda k, e: errors.append(k))
    assert errors == [BAD]


def test_follow_adds_shards_sealed_after_the_start_at_the_next_epoch(tiny_model, shards, tmp_path):
    from vidcorpus.train.checkpoint import read_state
    from vidcorpus.train.loop import train_base

    answers = [shards["urls"][:1], shards["urls"][:2]]  # the query's answer before and after a new shard
    asked: list[int] = []

    def follow():
        asked.append(1)
        return answers[min(len(asked), 1)], None

    res = train_base(_cfg(steps=5), tiny_model, answers[0], str(tmp_path / "run"), progress=False, follow=follow)
    first_epoch = {k for s, k in res.step_keys if s == 0}
    assert first_epoch == {"clip0", "clip1"}  # one batch: the whole first selection
    later = {k for s, k in res.step_keys if s > 0}
    assert {"clip2", SHORT} <= later  # the new shard's clips joined without a restart
    state = read_state(res.checkpoint_dir)
    assert state["follow"] == {"on": True, "shards_joined": 1}
    assert state["shards"] == shards["urls"][:2] and asked


# -- checkpoints, resume, logs --------------------------------------------------------------------

def test_resume_continues_with_the_next_unseen_samples(tiny_model, shards, tmp_path, monkeypatch):
    import shutil

    import vidcorpus.train.data as data
    from vidcorpus.train.checkpoint import list_checkpoints, resolve_resume
    from vidcorpus.train.loop import train_base
    from vidcorpus.train.resume import ResumeMismatch

    decoded: list[str] = []
    real_decode = data.decode_sample

    def counting_decode(sample, cfg, rng):
        decoded.append(sample["__key__"])
        return real_decode(sample, cfg, rng)

    monkeypatch.setattr(data, "decode_sample", counting_decode)

    # 4 batches an epoch (a full 4-frame batch, then the leftover 4-frame, 2-frame and 1-frame
    # buckets): a checkpoint after step 3 sits mid-epoch, and 6 steps cross into the second epoch.
    cfg = _cfg(steps=6, checkpoint_every=3, keep_checkpoints=2, log_every=1)
    info = {"selection": "test shards", "catalog": {"schema_version": 0, "latest_run_id": None}}
    full = train_base(cfg, tiny_model, shards["urls"], str(tmp_path / "full"), progress=False, run_info=info)
    assert [s for s, _u in list_checkpoints(str(tmp_path / "full"))] == [3, 6]
    assert full.epochs == 2
    decoded_full, decoded[:] = list(decoded), []

    # A new run directory holding only the step-3 checkpoint and the sample log: a run that stopped
    # after the step-6 rows were flushed but before its step-6 checkpoint was written.
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step-00000003", part / "checkpoints" / "step-00000003")
    shutil.copytree(tmp_path / "full" / "train_samples", part / "train_samples")
    assert len(list((part / "train_samples" / "rank-00000").glob("*.parquet"))) == 2  # steps [0, 3) and [3, 6)
    state3 = json.loads((part / "checkpoints" / "step-00000003" / "train_state.json").read_text())
    [cursor] = state3["cursors"]
    assert cursor["epoch"] == 0 and cursor["batches"] == 3
    [[worker, pulled]] = cursor["position"]["pulled"]  # one stream (no DataLoader workers)
    assert worker == 0
    pending = cursor["position"]["pending"]  # pulled but still waiting in a bucket
    assert pulled == 6 and len(pending) == 1  # 5 trained or failed, 1 waiting (the leftover 4-frame clip)
    assert state3["samples"]["rows"] == [sum(s < 3 for s, _k in full.step_keys)]  # rows on disk, not in the state
    assert state3["data"] == info and state3["step"] == 3
    random.seed(123), np.random.seed(123), torch.manual_seed(123)  # resumed RNG state must not depend on these
    resumed = train_base(cfg, tiny_model, shards["urls"], str(part), progress=False, resume="latest", run_info=info)
    assert resumed.resumed_from == str(part / "checkpoints" / "step-00000003")
    assert resumed.step_keys == full.step_keys  # same samples, same order, same steps, none twice
    # Consumed samples were not decoded again: only the pending one and those after the cursor.
    assert len(decoded) == len(decoded_full) - (pulled - len(pending)), (decoded_full, decoded)
    np.testing.assert_allclose(resumed.losses, full.losses, rtol=1e-4, atol=1e-6)
    from diffusers import I2VGenXLUNet

    for sub in ("unet", "unet_ema"):
        a = I2VGenXLUNet.from_pretrained(str(Path(full.checkpoint_dir) / sub)).state_dict()
        b = I2VGenXLUNet.from_pretrained(str(Path(resumed.checkpoint_dir) / sub)).state_dict()
        worst = max(float((a[k] - b[k]).abs().max()) for k in a)
        assert worst < 1e-5, (sub, worst)

    # Resuming against another selection is refused: the cursor would point at other samples.
    assert resolve_resume(str(part)) == str(part / "checkpoints" / "step-00000006")
    with pytest.raises(ResumeMismatch, match="different selection"):
        train_base(_cfg(steps=8), tiny_model, shards["urls"][:2], str(part), progress=False, resume="latest")


def test_checkpoints_are_atomic_and_pruned(tiny_model, shards, tmp_path):
    from vidcorpus.train.checkpoint import CKPT_DIR, list_checkpoints, prune_checkpoints

    run = tmp_path / "run"
    # Leftovers of a crash: a temp folder and a step folder without its train_state.json marker.
    (run / CKPT_DIR / ".tmp-step-00000001-x").mkdir(parents=True)
    (run / CKPT_DIR / "step-00000009" / "unet").mkdir(parents=True)
    assert list_checkpoints(str(run)) == []
    res = train_base_quick(tiny_model, shards, run, steps=4, checkpoint_every=1, keep_checkpoints=2)
    names = sorted(p.name for p in (run / CKPT_DIR).iterdir())
    assert names == ["step-00000003", "step-00000004"]
    assert res.checkpoint_dir == str(run / CKPT_DIR / "step-00000004")
    prune_checkpoints(str(run), 1)
    assert [s for s, _ in list_checkpoints(str(run))] == [4]

    # JSONL + TensorBoard logs: one record per log_every steps with the fields a user plots.
    records = [json.loads(line) for line in (run / "logs" / "train.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    for r in records:
        assert math.isfinite(r["loss"]) and r["lr"] > 0 and r["samples_per_s"] > 0
        assert 0.0 <= r["data_wait_share"] <= 1.0
        assert r["mfu"] is None  # CPU: no peak bf16 FLOP/s to compare with
        assert r["flops_per_step"] > 1e6  # counted with FlopCounterMode, not guessed
    assert list((run / "logs" / "tb").glob("events.out.tfevents.*"))


def train_base_quick(tiny_model, shards, out, **kw):
    from vidcorpus.train.loop import train_base

    return train_base(_cfg(log_every=2, **kw), tiny_model, shards["urls"], str(out), progress=False)


# -- export, probe samples, activation checkpointing, launchers -----------------------------------

def test_export_loads_in_i2vgenxl_pipeline_and_generates(tiny_model, shards, tmp_path):
    import av
    from diffusers import I2VGenXLPipeline, I2VGenXLUNet
    from typer.testing import CliRunner

    from vidcorpus.cli.app import app
    from vidcorpus.train.export import sample_video
    from vidcorpus.train.loop import train_base

    run = tmp_path / "run"
    res = train_base(_cfg(steps=2, sample_every=2, sample_steps=2, ema_decay=0.5), tiny_model, shards["urls"][:1],
                     str(run), progress=False)
    # The probe: the first clip's first frame and caption, sampled by the EMA UNet after step 2.
    [probe] = list((run / "samples").glob("*.mp4"))
    assert probe.name == "step-00000002-probe0.mp4"
    with av.open(str(probe)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 4 and frames[0].shape == (64, 64, 3)

    out = tmp_path / "pipeline"
    r = CliRunner().invoke(app, ["export", str(run), str(out), "--preset", "tiny",
                                 "--set", f"models.i2vgen={tiny_model}"])
    assert r.exit_code == 0, r.output
    pipe = I2VGenXLPipeline.from_pretrained(str(out))
    pipe.set_progress_bar_config(disable=True)
    ema = I2VGenXLUNet.from_pretrained(str(Path(res.checkpoint_dir) / "unet_ema")).state_dict()
    assert all(torch.equal(v, ema[k]) for k, v in pipe.unet.state_dict().items())  # the EMA weights
    image = _frames(str(Path(shards["urls"][0]).parent / "media" / "synth_00.mp4"), 1)[0]
    video = sample_video(pipe, image, "a white ball rolling", 64, 64, 4, 8, steps=2, seed=0)
    assert video.shape == (4, 64, 64, 3) and video.dtype == np.uint8 and video.std() > 0
    again = sample_video(pipe, image, "a white ball rolling", 64, 64, 4, 8, steps=2, seed=0)
    assert np.array_equal(video, again)  # seeded


def test_activation_checkpointing_keeps_loss_and_gradients(tiny_model, shards):
    from vidcorpus.train.data import iter_batches
    from vidcorpus.train.trainer import apply_activation_checkpointing
    from vidcorpus.train.i2vgen_components import load_components
    from vidcorpus.train.objective import TextEncoderCache, diffusion_loss

    cfg = _cfg()
    comps = load_components(tiny_model)
    comps.unet.train()
    batch = next(iter_batches(shards["urls"][:1], cfg))
    cache = TextEncoderCache(comps)

    def step():
        comps.unet.zero_grad(set_to_none=True)
        torch.manual_seed(5)  # the temporal convs' dropout draws from the global RNG: same masks both times
        loss = diffusion_loss(comps, cache, batch, cfg, torch.Generator().manual_seed(3))
        loss.backward()
        return float(loss), {n: p.grad.clone() for n, p in comps.unet.named_parameters() if p.grad is not None}

    keys_before = list(comps.unet.state_dict())
    loss0, grads0 = step()
    n = apply_activation_checkpointing(comps.unet)
    assert n >= 6  # resnets, temporal convs and transformer blocks of both resolutions
    assert sum("CheckpointWrapper" in type(m).__name__ for m in comps.unet.modules()) == n
    assert list(comps.unet.state_dict()) == keys_before  # checkpoints and exports keep their keys
    loss1, grads1 = step()
    assert loss1 == pytest.approx(loss0, rel=1e-5)
    grads1 = {k.replace("._checkpoint_wrapped_module", ""): v for k, v in grads1.items()}
    assert set(grads1) == set(grads0)
    for k, g in grads0.items():
        torch.testing.assert_close(grads1[k], g, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_compile_runs_the_unet_through_dynamo_and_still_counts_flops(tiny_model, shards, tmp_path):
    """``train.compile`` trains through a captured graph (backend ``eager`` here: dynamo's capture
    without codegen, so CPU-cheap and numerically the eager step), and the FLOP count still comes:
    torch 2.11 never compiled a module whose first call ran under FlopCounterMode, so the loop
    counts FLOPs on an eager step and trains every other step compiled."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from vidcorpus.train.loop import train_base

    plain = train_base(_cfg(steps=8, log_every=1), tiny_model, shards["urls"], str(tmp_path / "eager"), progress=False)
    torch._dynamo.reset()
    counters.clear()
    try:
        compiled = train_base(_cfg(steps=8, log_every=1, compile=True, compile_backend="eager"), tiny_model,
                              shards["urls"], str(tmp_path / "compiled"), progress=False)
        frames = dict(counters["frames"])
        graphs = counters["stats"]["unique_graphs"]
    finally:
        torch._dynamo.reset()
    assert frames.get("ok", 0) >= 1 and graphs >= 1  # the UNet's forward was captured, not skipped
    assert compiled.sample_keys == plain.sample_keys
    assert compiled.losses == pytest.approx(plain.losses, rel=1e-4, abs=1e-6)
    logs = [json.loads(x) for x in (tmp_path / "compiled" / "logs" / "train.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == list(range(1, 9))
    assert all(r["flops_per_step"] and r["flops_per_step"] > 0 for r in logs)
    assert [r["loss"] for r in logs] == compiled.losses  # one settle per log step keeps every loss
    state = json.loads((Path(compiled.checkpoint_dir) / "train_state.json").read_text())
    assert state["runtime"]["compiled"] is True


@pytest.mark.slow
def test_ray_train_launcher_runs_two_cpu_workers(tiny_model, shards, tmp_path):
    import ray

    from vidcorpus.train.checkpoint import read_state
    from vidcorpus.train.launch import launch_ray

    ray.shutdown()  # a Ray left up by an earlier test (the session's demo keeps its own until the end)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        res = launch_ray(_cfg(steps=2, workers=2, checkpoint_every=1, keep_checkpoints=1), tiny_model,
                         shards["urls"], str(tmp_path / "run"), run_info={"run_id": "ray-test"},
                         storage_path=str(tmp_path / "ray"))
    finally:
        ray.shutdown()
    assert res.steps == 2 and len(res.losses) == 2 and all(math.isfinite(x) for x in res.losses)
    state = read_state(res.checkpoint_dir)
    assert state["world_size"] == 2 and len(state["cursors"]) == 2 and state["data"] == {"run_id": "ray-test"}
    # Each rank streamed its own split of the three shards. Unsplit, both ranks would read the same
    # seeded stream and train on the same clips at step 0; split, a step holds both ranks' batches
    # and no clip twice.
    for s in (0, 1):
        keys = [k for step, k in res.step_keys if step == s]
        assert len(keys) >= 2 and len(set(keys)) == len(keys), keys
    assert [f[0] for f in res.decode_failures] in ([], [BAD])  # BAD sits late in rank 0's split


def _history(run) -> tuple[list[tuple[int, str]], list[float]]:
    """A run's (step, clip id) rows of every rank and its per-step losses, from its sample log."""
    from vidcorpus.train.sample_log import losses_of, read_samples

    table = read_samples(str(run))
    return list(zip(table["step"].to_pylist(), table["clip_id"].to_pylist())), losses_of(table)


def _torchrun_train(tmp_path, cfg: TrainConfig, model: str, urls: list, run, resume: str | None = None) -> None:
    """``train_base`` on two gloo ranks under torchrun (a real process group, as on a GPU node)."""
    import os
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(
        "import json, sys\n"
        "from vidcorpus.config import TrainConfig\n"
        "from vidcorpus.train.launch import init_torchrun\n"
        "from vidcorpus.train.loop import train_base\n"
        "assert init_torchrun()\n"
        "cfg = TrainConfig(**json.loads(sys.argv[1]))\n"
        "train_base(cfg, sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], progress=False,\n"
        "           resume=sys.argv[5] if len(sys.argv) > 5 else None)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    args = [str(script), json.dumps(cfg.model_dump()), model, json.dumps(urls), str(run), *([resume] if resume else [])]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run([*torchrun, *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_torchrun_runs_the_same_loop_with_ddp_on_gloo(tiny_model, shards, tmp_path):
    from vidcorpus.train.checkpoint import list_checkpoints, read_state

    run = tmp_path / "run"
    _torchrun_train(tmp_path, _cfg(steps=2, log_every=1), tiny_model, shards["urls"], run)
    [(step, ckpt)] = list_checkpoints(str(run))
    state = read_state(ckpt)
    assert step == 2 and state["world_size"] == 2 and state["runtime"]["world_size"] == 2
    step_keys, losses = _history(run)
    assert len(state["cursors"]) == 2 and len(losses) == 2
    assert state["samples"]["rows"] == [len(pq.read_table(p)) for p in sorted(run.glob("train_samples/rank-*/*"))]
    step0 = [k for s, k in step_keys if s == 0]
    assert len(step0) >= 2 and len(set(step0)) == len(step0)  # two ranks, two different splits
    records = [json.loads(x) for x in (run / "logs" / "train.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]  # rank 0 alone writes the log


@pytest.mark.slow
def test_fsdp2_trains_like_ddp_and_resumes_on_gloo(tiny_model, shards, tmp_path):
    """train.parallel=fsdp (FSDP2: sharded weights, gradients, AdamW state and EMA) on two gloo ranks
    takes the same steps as DDP, writes the same full checkpoints, and resumes exactly; all with two
    micro-batches a step (train.grad_accum_steps: DDP all-reduces only on a window's last backward,
    no_sync before it; FSDP2 likewise turns its gradient sync off until then)."""
    import shutil

    from diffusers import I2VGenXLUNet

    from vidcorpus.train.checkpoint import list_checkpoints, read_state

    def torchrun(parallel: str, run, resume: str | None = None, **kw) -> list:
        cfg = _cfg(steps=3, checkpoint_every=2, keep_checkpoints=0, log_every=1, parallel=parallel,
                   grad_accum_steps=2, **kw)
        _torchrun_train(tmp_path, cfg, tiny_model, shards["urls"][:2], run, resume)
        return list_checkpoints(str(run))

    def weights(ckpt: str, sub: str) -> dict:
        return I2VGenXLUNet.from_pretrained(str(Path(ckpt) / sub)).state_dict()

    # DDP with its non-default communication settings (small buckets, gradients as bucket views):
    # the equality below holds them to the same gradients.
    ddp = torchrun("ddp", tmp_path / "ddp", ddp_bucket_mb=1, ddp_bucket_view=True)
    fsdp = torchrun("fsdp", tmp_path / "fsdp")
    assert [s for s, _ in fsdp] == [2, 3] == [s for s, _ in ddp]
    a, b = read_state(ddp[-1][1]), read_state(fsdp[-1][1])
    assert b["runtime"]["parallel"] == "fsdp" and a["runtime"]["parallel"] == "ddp"
    (a_keys, a_losses), (b_keys, b_losses) = _history(tmp_path / "ddp"), _history(tmp_path / "fsdp")
    assert b_keys == a_keys  # same samples on the same ranks
    assert b_losses == pytest.approx(a_losses, rel=1e-4)
    for sub in ("unet", "unet_ema"):
        wa, wb = weights(ddp[-1][1], sub), weights(fsdp[-1][1], sub)
        assert wa.keys() == wb.keys()
        assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa), sub

    resumed_dir = tmp_path / "fsdp-resumed"
    shutil.copytree(fsdp[0][1], resumed_dir / "checkpoints" / Path(fsdp[0][1]).name)
    shutil.copytree(tmp_path / "fsdp" / "train_samples", resumed_dir / "train_samples")  # with the step-3 part: dropped
    resumed = torchrun("fsdp", resumed_dir, resume="latest")
    c = read_state(resumed[-1][1])
    assert c["resumed_from"] == str(resumed_dir / "checkpoints" / Path(fsdp[0][1]).name)
    c_keys, c_losses = _history(resumed_dir)
    assert c_keys == b_keys and c_losses == pytest.approx(b_losses, rel=1e-5)
    wb, wc = weights(fsdp[-1][1], "unet"), weights(resumed[-1][1], "unet")
    assert all(torch.allclose(wb[k], wc[k], atol=1e-6) for k in wb)


def test_resume_is_exact_with_dataloader_workers(tiny_model, shards, tmp_path):
    """With two DataLoader workers the consumed samples still keep their place (as undecoded
    markers), so the workers interleave as before and the resumed stream is the same."""
    import shutil

    from vidcorpus.train.loop import train_base
    from vidcorpus.train.resume import ResumeMismatch

    cfg = _cfg(steps=5, checkpoint_every=2, num_workers=2, tensorboard=False)
    full = train_base(cfg, tiny_model, shards["urls"], str(tmp_path / "full"), progress=False)
    part = tmp_path / "part" / "checkpoints"
    part.mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step-00000002", part / "step-00000002")
    shutil.copytree(tmp_path / "full" / "train_samples", tmp_path / "part" / "train_samples")
    state = json.loads((part / "step-00000002" / "train_state.json").read_text())
    assert {w for w, _n in state["cursors"][0]["position"]["pulled"]} == {0, 1}
    resumed = train_base(cfg, tiny_model, shards["urls"], str(tmp_path / "part"), progress=False, resume="latest")
    assert resumed.step_keys == full.step_keys
    np.testing.assert_allclose(resumed.losses, full.losses, rtol=1e-4, atol=1e-6)
    with pytest.raises(ResumeMismatch, match="num_workers"):
        train_base(_cfg(steps=5, num_workers=0), tiny_model, shards["urls"], str(tmp_path / "part"),
                   progress=False, resume="latest")


def test_checkpoints_logs_and_resume_on_s3(tiny_model, shards, s3):
    """A remote run directory: files uploaded with the marker last, old checkpoints pruned, logs
    uploaded, and resume reads the newest complete checkpoint back."""
    from vidcorpus.train.checkpoint import list_checkpoints
    from vidcorpus.train.loop import train_base

    run = "s3://bucket/runs/r1"
    s3.pipe("bucket/runs/r1/checkpoints/step-00000009/unet/config.json", b"{}")  # no marker: incomplete
    cfg = _cfg(steps=2, checkpoint_every=1, keep_checkpoints=1, log_every=1)
    first = train_base(cfg, tiny_model, shards["urls"], run, progress=False)
    assert [s for s, _u in list_checkpoints(run)] == [2]
    assert not s3.exists("bucket/runs/r1/checkpoints/step-00000009")  # the incomplete leftover was removed
    assert s3.exists("bucket/runs/r1/checkpoints/step-00000002/unet_ema/diffusion_pytorch_model.safetensors")
    assert len(s3.cat("bucket/runs/r1/logs/train.jsonl").decode().splitlines()) == 2
    more = train_base(_cfg(steps=3, checkpoint_every=1, keep_checkpoints=1, log_every=1), tiny_model,
                      shards["urls"], run, progress=False, resume="latest")
    assert more.resumed_from == run + "/checkpoints/step-00000002"
    assert more.step_keys[:len(first.step_keys)] == first.step_keys and more.steps == 3
    assert [s for s, _u in list_checkpoints(run)] == [3]
    log = [json.loads(x) for x in s3.cat("bucket/runs/r1/logs/train.jsonl").decode().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]  # the resumed run appended to the remote log
