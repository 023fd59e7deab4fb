"""The refiner stage and the cascade with the tiny builds (CPU, seconds): crop training that overfits,
exact resume through the shared loop, the VideoToVideoSDPipeline export, and `vidcorpus generate`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from typer.testing import CliRunner

from vidcorpus.config import RefinerTrainConfig
from vidcorpus.synth import FPS, make_video


def _frames(path: str) -> np.ndarray:
    import av

    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type, s.thread_count = "NONE", 1
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(s)])


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """The tiny base and refiner, built the way `generate` builds them (the preset's builders, only
    the models its checkpoints need)."""
    from vidcorpus.config import ModelsConfig
    from vidcorpus.jobs.models import resolve_refiner

    root = tmp_path_factory.mktemp("models")
    built = resolve_refiner(ModelsConfig(cache_dir=str(root)), only={"i2vgen"})
    return {"i2vgen": built.i2vgen, "refiner": built.refiner, "cache_dir": str(root)}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict:
    """Two shards of synthetic 320x192 clips with long and short captions: [clip0, clip1], [clip2]."""
    root = tmp_path_factory.mktemp("hr")
    samples = []
    for i in range(3):
        v = make_video(i, root)
        meta = {"clip_id": f"clip{i}", "media_type": "video", "fps": FPS, "n_frames": v.shots[-1][1] + 1,
                "captions": [{"version": "v1", "kind": "long", "text": v.text},
                             {"version": "v1", "kind": "short", "text": "shapes"}]}
        samples.append({"__key__": f"clip{i}", "mp4": Path(v.path).read_bytes(), "json": json.dumps(meta).encode(),
                        "txt": v.text.encode()})
    urls = []
    for s, members in enumerate([[0, 1], [2]]):
        url = str(root / f"shard-{s}.tar")
        with wds.TarWriter(url) as sink:
            for m in members:
                sink.write(samples[m])
        urls.append(url)
    return {"urls": urls, "image": str(root / "first.png"), "first": _frames(str(root / "synth_00.mp4"))[0]}


def _cfg(**kw) -> RefinerTrainConfig:
    base = dict(steps=4, batch_size=2, num_frames=4, height=64, width=96, crop_height=32, crop_width=48,
                degrade_factor=2.0, fps=8, shuffle_buffer=8, seed=0, warmup_steps=2, lr=1e-4,
                caption_version="v1", log_every=1, tensorboard=False)
    base.update(kw)
    return RefinerTrainConfig(**base)


def test_tiny_refiner_is_a_unet3d_pipeline_beside_the_base_components(models):
    from diffusers import UNet3DConditionModel, VideoToVideoSDPipeline

    from vidcorpus.train.refiner import load_refiner

    # the preset's paths, and only the two models generate needs (no CLIP, no captioner)
    assert sorted(p.name for p in (Path(models["cache_dir"]) / "tiny-v1").iterdir()) == ["i2vgen", "refiner"]
    assert Path(models["refiner"]).parent.name == "tiny-v1"

    comps = load_refiner(models["refiner"])
    assert isinstance(comps.unet, UNet3DConditionModel)
    assert comps.text_encoder.config.hidden_size == comps.unet.config.cross_attention_dim
    base_vae = Path(models["i2vgen"], "vae", "diffusion_pytorch_model.safetensors").read_bytes()
    assert Path(models["refiner"], "vae", "diffusion_pytorch_model.safetensors").read_bytes() == base_vae
    assert not any(p.requires_grad for p in comps.vae.parameters())
    pipe = VideoToVideoSDPipeline.from_pretrained(models["refiner"])  # the hub layout a user loads
    assert isinstance(pipe.unet, UNet3DConditionModel)


@torch.no_grad()
def _eval_loss(comps, batch, cfg, seeds=range(6)) -> float:
    """Loss on fixed crops, noise and timesteps (seeded): two UNets compared on the same draws."""
    from vidcorpus.train.objective import TextEncoderCache
    from vidcorpus.train.refiner import refiner_loss

    comps.unet.eval()
    cache = TextEncoderCache(comps)
    return float(np.mean([refiner_loss(comps, cache, batch, cfg, torch.Generator().manual_seed(s)).item()
                          for s in seeds]))


def test_refiner_training_overfits_a_few_clips(models, shards, tmp_path):
    from diffusers import UNet3DConditionModel

    from vidcorpus.train.data import iter_batches
    from vidcorpus.train.refiner import load_refiner, train_refiner

    cfg = _cfg(steps=30, lr=1e-3, warmup_steps=3, drop_text=0.0, ema_decay=0.9)
    one = shards["urls"][:1]  # clip0 + clip1: one batch of two, every epoch
    res = train_refiner(cfg, models["refiner"], one, str(tmp_path / "run"), progress=False)
    assert res.steps == 30 and set(res.sample_keys) == {"clip0", "clip1"}
    state = json.loads((Path(res.checkpoint_dir) / "train_state.json").read_text())
    assert state["stage"] == "refiner" and state["config"]["t_max"] == cfg.t_max
    comps = load_refiner(models["refiner"])
    batch = next(iter_batches(one, cfg))
    assert batch["video"].shape == (2, 4, 3, 64, 96) and batch["text"] == ["shapes", "shapes"]  # short captions
    before = _eval_loss(comps, batch, cfg)
    comps.unet = UNet3DConditionModel.from_pretrained(str(Path(res.checkpoint_dir) / "unet"))
    after = _eval_loss(comps, batch, cfg)
    print(f"fixed-draw refiner loss {before:.4f} -> {after:.4f}")
    assert after < 0.75 * before, (before, after)


def test_refiner_resumes_exactly_like_the_base_stage(models, shards, tmp_path):
    from diffusers import UNet3DConditionModel

    from vidcorpus.config import TrainConfig
    from vidcorpus.train.loop import train_base
    from vidcorpus.train.resume import ResumeMismatch
    from vidcorpus.train.refiner import train_refiner

    cfg = _cfg(steps=4, checkpoint_every=2, keep_checkpoints=2)
    full = train_refiner(cfg, models["refiner"], shards["urls"], str(tmp_path / "full"), progress=False)
    part = tmp_path / "part" / "checkpoints"
    part.mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step-00000002", part / "step-00000002")
    shutil.copytree(tmp_path / "full" / "train_samples", tmp_path / "part" / "train_samples")  # the run's sample log
    torch.manual_seed(123)  # the resumed RNG state must not depend on this
    resumed = train_refiner(cfg, models["refiner"], shards["urls"], str(tmp_path / "part"), progress=False,
                            resume="latest")
    assert resumed.resumed_from == str(part / "step-00000002")
    assert resumed.step_keys == full.step_keys  # same clips, same steps (crops and noise from the saved RNG)
    np.testing.assert_allclose(resumed.losses, full.losses, rtol=1e-4, atol=1e-6)
    for sub in ("unet", "unet_ema"):
        a = UNet3DConditionModel.from_pretrained(str(Path(full.checkpoint_dir) / sub)).state_dict()
        b = UNet3DConditionModel.from_pretrained(str(Path(resumed.checkpoint_dir) / sub)).state_dict()
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5, sub
    with pytest.raises(ResumeMismatch, match="different selection"):
        train_refiner(_cfg(steps=6), models["refiner"], shards["urls"][:1], str(tmp_path / "part"),
                      progress=False, resume="latest")
    with pytest.raises(ResumeMismatch, match="refiner stage"):  # a refiner checkpoint never resumes the base
        train_base(TrainConfig(steps=6, height=64, width=96, num_frames=4), models["i2vgen"], shards["urls"],
                   str(tmp_path / "part"), progress=False, resume="latest")


def test_cascade_writes_the_requested_video_from_exports_and_checkpoints(models, shards, tmp_path):
    from diffusers import UNet3DConditionModel, VideoToVideoSDPipeline
    from PIL import Image

    from vidcorpus.cli.app import app
    from vidcorpus.config import TrainConfig
    from vidcorpus.train.loop import train_base
    from vidcorpus.train.refiner import train_refiner

    run = tmp_path / "refiner-run"
    res = train_refiner(_cfg(steps=2, ema_decay=0.5, t_max=700), models["refiner"], shards["urls"], str(run),
                        progress=False)
    cli = CliRunner()
    export = tmp_path / "refiner-export"
    r = cli.invoke(app, ["export-refiner", str(run), str(export), "--set", f"models.refiner={models['refiner']}"])
    assert r.exit_code == 0, r.output
    pipe = VideoToVideoSDPipeline.from_pretrained(str(export))
    ema = UNet3DConditionModel.from_pretrained(str(Path(res.checkpoint_dir) / "unet_ema")).state_dict()
    assert all(torch.equal(v, ema[k]) for k, v in pipe.unet.state_dict().items())
    assert json.loads((export / "vidcorpus_refiner.json").read_text())["t_max"] == 700

    # A base-stage checkpoint whose EMA weights equal the tiny build's (lr 0), so both routes must agree.
    base_run = tmp_path / "base-run"
    train_base(TrainConfig(steps=1, lr=0.0, batch_size=2, num_frames=4, height=64, width=64, fps=8, seed=0),
               models["i2vgen"], shards["urls"][:1], str(base_run), progress=False)

    Image.fromarray(shards["first"]).save(shards["image"])
    common = ["--image", shards["image"], "--prompt", "colourful shapes drifting", "--short-prompt", "shapes",
              "--height", "96", "--width", "160", "--frames", "4", "--seed", "3",
              "--set", "generate.base_height=64", "--set", "generate.base_width=64", "--set", "generate.base_steps=2",
              "--set", "generate.refiner_steps=5", "--no-progress"]
    videos = {}
    for name, stages, extra in [
            ("export", ["--base", models["i2vgen"], "--refiner", str(export)], []),
            ("export again", ["--base", models["i2vgen"], "--refiner", str(export)], []),
            ("base checkpoint", ["--base", str(base_run), "--refiner", str(export)],
             ["--set", f"models.i2vgen={models['i2vgen']}"]),
            ("checkpoint", ["--base", str(base_run), "--refiner", str(run)],
             ["--set", f"models.refiner={models['refiner']}", "--set", f"models.i2vgen={models['i2vgen']}"])]:
        out = tmp_path / f"{name.replace(' ', '-')}.mp4"
        r = cli.invoke(app, ["generate", *common, *stages, "-o", str(out), *extra])
        assert r.exit_code == 0, r.output
        assert "refined from t=" in r.output
        videos[name] = _frames(str(out))
    v = videos["export"]
    assert v.shape == (4, 96, 160, 3) and v.std() > 0
    # The same seed gives the same video, whether the stages come as exports or as checkpoints.
    # (Bit for bit, mp4 included: x264's macroblock tree once made this flaky; media.encode_video.)
    for name in ("export again", "base checkpoint", "checkpoint"):
        assert np.array_equal(videos["export"], videos[name]), name
    # And the two routes load exactly the same weights.
    from vidcorpus.train.cascade import load_base_stage, load_refiner_stage

    cpu, f32 = torch.device("cpu"), torch.float32
    pairs = [(load_refiner_stage(str(run), models["refiner"], cpu, f32, False),
              load_refiner_stage(str(export), None, cpu, f32, False), ("unet", "vae", "text_encoder")),
             (load_base_stage(str(base_run), models["i2vgen"], cpu, f32),
              load_base_stage(models["i2vgen"], None, cpu, f32), ("unet", "vae", "text_encoder", "image_encoder"))]
    for from_ckpt, from_export, parts in pairs:
        for part in parts:
            a, b = getattr(from_ckpt, part).state_dict(), getattr(from_export, part).state_dict()
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part


    r = cli.invoke(app, ["generate", *common[:-1], "--seed", "4", "--base", models["i2vgen"], "--refiner", str(export),
                         "-o", str(tmp_path / "other.mp4")])
    assert r.exit_code == 0, r.output
    assert not np.array_equal(_frames(str(tmp_path / "other.mp4")), v)  # another seed, another video


@pytest.mark.parametrize("cmd", ["train-refiner", "export-refiner", "generate"])
def test_refiner_commands_explain_themselves(cmd):
    from vidcorpus.cli.app import app

    r = CliRunner().invoke(app, [cmd, "--help"])
    assert r.exit_code == 0 and "Usage" in r.output, r.output


@pytest.mark.slow
def test_train_refiner_selects_from_the_catalog_and_records_the_run(demo, tmp_path):
    from vidcorpus.catalog.store import Catalog
    from vidcorpus.jobs.train import run_training
    from vidcorpus.train.checkpoint import read_state

    cfg = demo["config"]
    catalog = tmp_path / "catalog.duckdb"  # a copy: the session's demo catalog stays as other tests expect it
    shutil.copy(cfg.catalog_path, catalog)
    cfg = cfg.model_copy(update={"catalog": str(catalog), "refiner": _cfg(steps=2, select="kept")})
    summary = run_training(cfg, output=str(tmp_path / "run"), progress=False, stage="refiner")
    assert summary.steps == 2 and len(summary.losses) == 2
    state = read_state(summary.checkpoint_dir)
    assert state["stage"] == "refiner" and state["data"]["stage"] == "refiner" and state["data"]["select"] == "kept"
    with Catalog(str(catalog), read_only=True) as cat:
        [run] = cat.query_dicts("SELECT stage, steps FROM train_runs WHERE run_id = ?", [summary.run_id])
        kept = {r["clip_id"] for r in cat.query_dicts("SELECT clip_id FROM clips_wide WHERE kept")}
        trained = {r["clip_id"] for r in cat.query_dicts("SELECT clip_id FROM train_samples WHERE run_id = ?",
                                                         [summary.run_id])}
    assert run == {"stage": "refiner", "steps": 2}
    assert trained and trained <= kept
