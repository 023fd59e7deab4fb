"""`vidcorpus demo`: a synthetic corpus through every stage with tiny offline models, then training."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vidcorpus.catalog.store import Catalog
from vidcorpus.config import Config, load_config
from vidcorpus.jobs.curate.pipeline import run_pipeline
from vidcorpus.jobs.models import resolve_models, resolve_refiner
from vidcorpus.jobs.release import create_release
from vidcorpus.jobs.train import run_training
from vidcorpus.stage_stats import print_table
from vidcorpus.synth import make_corpus
from vidcorpus.train.export import export_and_sample
from vidcorpus.train.refiner import export_refiner

DEMO_RELEASE = "demo"
REFINER_STEPS = 4  # enough to export a refiner that `vidcorpus generate` can run; seconds on a CPU
# The refiner at the demo clips' scale (320x192): small crops of 160x96 frames, kept clips of the release.
DEMO_REFINER = {"refiner.select": "kept", "refiner.num_frames": 4, "refiner.height": 96, "refiner.width": 160,
                "refiner.crop_height": 48, "refiner.crop_width": 80, "refiner.degrade_factor": 2.0,
                "refiner.batch_size": 2, "refiner.warmup_steps": 1, "refiner.lr": 1e-4, "refiner.tensorboard": False}
# `vidcorpus generate` sizes that suit the tiny models on a CPU (the defaults are 1280x720, 16 frames, 50 steps:
# many minutes on a CPU); the refiner runs the steps of a 10-step schedule at or below its t_max (600): 6.
DEMO_GENERATE = ["--height", "96", "--width", "160", "--frames", "4", "--set", "generate.base_height=64",
                 "--set", "generate.base_width=96", "--set", "generate.base_steps=4",
                 "--set", "generate.refiner_steps=10"]


def demo_config(directory: Path, steps: int = 20, ray_address: str | None = None,
                refiner_steps: int = REFINER_STEPS) -> Config:
    directory = Path(directory).resolve()
    return load_config(
        None,
        [],
        workdir=str(directory / "work"),
        inputs=[str(directory / "corpus" / "sources.jsonl")],
        **{"models.preset": "tiny", "ray.address": ray_address, "train.steps": steps,
           "train.select": "kept", "filters.recipe": "demo_v1", "refiner.steps": refiner_steps,
           "refiner.release": DEMO_RELEASE, **DEMO_REFINER},
    )


def generate_command(directory: Path, image: str, base: str, refiner: str) -> list[str]:
    """The `vidcorpus generate` arguments that run the demo's two exports (printed at the end of the demo)."""
    return ["generate", "--image", image, "--prompt", "a white ball rolling across a plain background",
            "--short-prompt", "a rolling ball", "--base", base, "--refiner", refiner,
            "-o", str(Path(directory) / "generated.mp4"), *DEMO_GENERATE]


def run_demo(directory: Path, steps: int = 20, ray_address: str | None = None, progress: bool = True,
             console: Console | None = None, refiner_steps: int = REFINER_STEPS) -> dict:
    """Every stage in turn on a fresh synthetic corpus; returns what each made (the tests' demo corpus)."""
    console = console or Console()
    t0 = time.time()
    directory = Path(directory).resolve()
    cfg = demo_config(directory, steps, ray_address, refiner_steps)
    out = {"config": cfg}
    out |= _curate(cfg, directory, progress, console)
    cfg = out["config"] = cfg.model_copy(update={"train": cfg.train.model_copy(update={"release": DEMO_RELEASE})})
    out |= _release_and_train(cfg, directory, steps, out["truth"], progress, console)
    out |= _train_refiner(cfg, directory, refiner_steps, progress, console)
    out["generate_args"] = generate_command(directory, out["truth"]["images"][0], out["export_dir"], out["refiner_dir"])
    out["funnel"] = _print_funnel(cfg, console)
    out["seconds"] = time.time() - t0
    _print_next_steps(out, directory, console)
    return out


def _curate(cfg: Config, directory: Path, progress: bool, console: Console) -> dict:
    """Steps 1 and 2: the synthetic corpus and the curation pipeline over it."""
    console.rule("[bold]1/4 making a synthetic corpus")
    truth = make_corpus(directory / "corpus")
    console.print(f"{len(truth['videos'])} videos with known shot boundaries, {len(truth['images'])} images, "
                  f"{'real footage (bikes.mp4), ' if truth.get('real') else ''}{len(truth['broken'])} broken file(s) "
                  f"-> {truth['list']}")
    console.rule("[bold]2/4 curation pipeline (tiny models)")
    summary = run_pipeline(cfg, progress=progress)
    print_table(summary.stages, console)
    return {"truth": truth, "summary": summary}


def _release_and_train(cfg: Config, directory: Path, steps: int, truth: dict, progress: bool,
                       console: Console) -> dict:
    """Step 3: a release of the kept clips, the base stage trained on it, exported and sampled once."""
    console.rule(f"[bold]3/4 a release of the kept clips, then {steps} training steps on it")
    release = create_release(cfg, DEMO_RELEASE, cfg.filters.recipe, progress=progress)
    console.print(f"release {release.name}: {release.n_clips} clips in {release.n_shards} shards -> {release.manifest_url}")
    training = run_training(cfg, progress=progress)
    export_dir, sample_mp4 = directory / "export" / "i2vgen-base", directory / "export" / "sample.mp4"
    t = cfg.train
    export_and_sample(resolve_models(cfg.models).i2vgen, training.checkpoint_dir, str(export_dir), truth["images"][0],
                      "a white ball rolling across a plain background", str(sample_mp4), t.height, t.width,
                      t.num_frames, t.fps, steps=t.sample_steps, seed=t.seed)
    console.print(f"exported the EMA UNet as an I2VGenXLPipeline -> {export_dir}; one sampled video -> {sample_mp4}")
    return {"release": release, "training": training, "export_dir": str(export_dir), "sample_mp4": str(sample_mp4)}


def _train_refiner(cfg: Config, directory: Path, refiner_steps: int, progress: bool, console: Console) -> dict:
    """Step 4: the refiner trained on the release and exported for `vidcorpus generate`."""
    console.rule(f"[bold]4/4 {refiner_steps} refiner steps on the release, exported for `vidcorpus generate`")
    refiner = run_training(cfg, progress=progress, stage="refiner")
    refiner_dir = directory / "export" / "refiner"
    export_refiner(resolve_refiner(cfg.models).refiner, refiner.checkpoint_dir, str(refiner_dir))
    console.print(f"exported the refiner's EMA UNet as a VideoToVideoSDPipeline -> {refiner_dir}")
    return {"refiner_training": refiner, "refiner_dir": str(refiner_dir)}


def _print_funnel(cfg: Config, console: Console) -> list[dict]:
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        funnel = cat.funnel()
        failures = cat.query_dicts("SELECT stage, error_class, n FROM failures_by_class")
    table = Table(title="vidcorpus demo funnel")
    for col in ("stage", "items", "hours"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for r in funnel:
        table.add_row(r["stage"], str(r["n"]), "" if r["hours"] is None else f"{r['hours']:.4f}")
    console.print(table)
    for f in failures:
        console.print(f"  failed at {f['stage']}: {f['n']} x {f['error_class']}")
    return funnel


def _print_next_steps(out: dict, directory: Path, console: Console) -> None:
    cfg, training = out["config"], out["training"]
    console.print(
        f"\n[bold]done in {out['seconds']:.0f} s[/bold]; loss {training.losses[0]:.4f} -> {training.losses[-1]:.4f}\n"
        f"  corpus:      {directory / 'corpus'}\n"
        f"  catalog:     {cfg.catalog_path}\n"
        f"  shards:      {cfg.url('shards')}\n"
        f"  release:     {out['release'].manifest_url}\n"
        f"  checkpoint:  {training.checkpoint_dir}\n"
        f"  pipeline:    {out['export_dir']} (I2VGenXLPipeline.from_pretrained)\n"
        f"  sample:      {out['sample_mp4']}\n"
        f"  refiner:     {out['refiner_dir']} (VideoToVideoSDPipeline.from_pretrained)\n"
        f"try:  vidcorpus {shlex.join(out['generate_args'])}\n"
        f"next: vidcorpus sql --catalog {cfg.catalog_path} \"SELECT clip_id, duration_s, aesthetic, motion, kept, "
        f"reason FROM clips_wide\"",
        soft_wrap=True,
    )
