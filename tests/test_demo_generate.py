"""Right after the demo, `vidcorpus generate` runs (issue 21, item 3): the demo trains and exports a tiny
refiner beside the base export and prints the command; generate shows one bar per stage and step."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from vidcorpus.catalog.store import Catalog

pytestmark = pytest.mark.slow


def _frames(path: str) -> np.ndarray:
    with av.open(path) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_demo_exports_a_refiner_and_the_printed_generate_command_writes_a_video(demo, tmp_path):
    from vidcorpus.cli.app import app

    refiner_dir = Path(demo["refiner_dir"])
    assert json.loads((refiner_dir / "model_index.json").read_text())["_class_name"] == "VideoToVideoSDPipeline"
    assert json.loads((refiner_dir / "vidcorpus_refiner.json").read_text())["t_max"] == demo["config"].refiner.t_max
    args = list(demo["generate_args"])
    assert args[0] == "generate" and args[args.index("--base") + 1] == demo["export_dir"]
    assert args[args.index("--refiner") + 1] == str(refiner_dir)
    out = tmp_path / "generated.mp4"
    args[args.index("-o") + 1] = str(out)  # the command as the demo prints it, writing here
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "refined from t=" in r.output and "━" not in r.output  # not a terminal: a summary, no bars
    assert _frames(str(out)).shape == (4, 96, 160, 3)
    with Catalog(demo["config"].catalog_path, read_only=True) as cat:
        [run] = cat.query_dicts("SELECT steps, checkpoint FROM train_runs WHERE stage = 'refiner'")
    assert run["steps"] == demo["refiner_training"].steps == 4


def test_generate_shows_progress_per_stage_and_step(demo, tmp_path):
    from rich.console import Console

    from vidcorpus.config import load_config
    from vidcorpus.jobs.generate import generate_video

    cfg = load_config(None, ["generate.height=96", "generate.width=160", "generate.num_frames=2",
                             "generate.base_height=64", "generate.base_width=96", "generate.base_steps=3",
                             "generate.refiner_steps=5"])
    image = demo["truth"]["images"][0]

    def run(progress: bool, terminal: bool) -> str:
        buf = io.StringIO()
        console = Console(file=buf, force_terminal=terminal, width=120, color_system=None)
        generate_video(cfg, image, "a ball", None, demo["export_dir"], demo["refiner_dir"],
                       str(tmp_path / "v.mp4"), progress=progress, console=console)
        return buf.getvalue()

    text = run(progress=True, terminal=True)
    assert re.search(r"base 96x64 \(steps\).*\b3/3\b", text), text
    assert re.search(r"upsample to 160x96 \(frames\).*\b2/2\b", text), text
    done = re.findall(r"refiner 160x96 \(steps\).*?\b(\d+)/(\d+)\b", text)
    assert done and done[-1][0] == done[-1][1] and int(done[-1][1]) >= 2, text  # every refiner step counted
    assert run(progress=False, terminal=True) == ""  # --no-progress
    assert run(progress=True, terminal=False) == ""  # a pipe or a log file gets no bars
