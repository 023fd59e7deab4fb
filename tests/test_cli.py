"""The command line as a new user meets it: help everywhere, config, SQL over the demo catalog."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from vidcorpus.cli.app import app

runner = CliRunner()

COMMANDS = [[], ["demo"], ["run"], ["ingest"], ["sql"], ["train"], ["config"], ["config", "show"], ["catalog"],
            ["catalog", "funnel"], ["catalog", "failures"], ["catalog", "info"], ["catalog", "export"],
            ["catalog", "verify"], ["shards"], ["shards", "write"],
            ["shards", "list"], ["report"], ["serve"], ["filter", "suggest"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_every_command_explains_itself(cmd):
    result = runner.invoke(app, [*cmd, "--help"])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "Usage" in text
    # the command's own docstring is shown, not just the option list
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(("Usage", "╭", "│", "╰"))]
    assert lines and len(lines[0].split()) >= 4, text


def test_python_dash_m_runs_the_cli_as_torchrun_does():
    """`torchrun -m vidcorpus.cli train ...` runs the module as __main__ (it once died on a circular import)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "vidcorpus.cli", "train", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--follow" in out.stdout and "--select" in out.stdout


def test_config_show_applies_file_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  steps: 7\n")
    result = runner.invoke(app, ["config", "show", "--config", str(f), "--set", "filters.recipe=pretrain_v1",
                                 "--preset", "production"])
    assert result.exit_code == 0, result.output
    cfg = yaml.safe_load(result.output)
    assert cfg["train"]["steps"] == 7 and cfg["filters"]["recipe"] == "pretrain_v1"
    assert cfg["models"]["preset"] == "production"


def test_bad_config_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["config", "show", "--set", "train.steps=lots"])
    assert result.exit_code == 2
    assert "train.steps" in result.output


def test_sql_reads_the_demo_catalog(demo):
    catalog = demo["config"].catalog_path
    result = runner.invoke(app, ["sql", "--catalog", catalog, "--format", "json", "SELECT stage, n FROM funnel ORDER BY step"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["stage"] for r in rows][:3] == ["sources", "failed", "shots"]
    table = runner.invoke(app, ["sql", "--catalog", catalog, "SELECT count(*) AS clips FROM clips"])
    assert table.exit_code == 0 and "clips" in table.output
    bad = runner.invoke(app, ["sql", "--catalog", catalog, "SELECT * FROM no_such_table"])
    assert bad.exit_code == 2 and "SQL error" in bad.output
    missing = runner.invoke(app, ["sql", "--catalog", str(demo["config"].catalog_path) + ".nope", "SELECT 1"])
    assert missing.exit_code == 2 and "no catalog" in missing.output


def test_catalog_commands_read_the_demo(demo):
    catalog = demo["config"].catalog_path
    for cmd in (["catalog", "funnel"], ["catalog", "failures"], ["catalog", "info"], ["shards", "list"]):
        result = runner.invoke(app, [*cmd, "--catalog", catalog])
        assert result.exit_code == 0, (cmd, result.output)
    assert "not_media" in runner.invoke(app, ["catalog", "failures", "--catalog", catalog]).output


def test_production_preset_offline_fails_fast_naming_the_fix(tmp_path, monkeypatch, corpus):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    start = time.time()
    result = runner.invoke(app, ["run", corpus["list"], "--workdir", str(tmp_path / "w"), "--preset", "production",
                                 "--no-progress"])
    assert result.exit_code == 3, result.output
    assert time.time() - start < 20
    assert "Fix:" in result.output and "--preset tiny" in result.output
    assert not (tmp_path / "w" / "catalog.duckdb").exists()  # nothing half-started


def test_gpu_stages_share_each_gpu_so_a_one_gpu_machine_cannot_deadlock():
    from vidcorpus.config import Config
    from vidcorpus.jobs.curate.pipeline import pipeline_stages
    from vidcorpus.stage_settings import resolve

    stages = pipeline_stages()
    gpu = [s for s in stages if s.resources.actor and s.resources.gpus > 0]
    assert len(gpu) >= 2  # CLIP scoring and captioning both want a GPU
    for n in (1, 4):
        plan = resolve(stages, Config(), float(n))
        assert all(plan[s].replicas == n for s in gpu)
        assert sum(plan[s].gpus for s in gpu) <= 1.0 + 1e-9  # all GPU pools fit on one GPU at once
        assert all(plan[s].replicas == 1 and plan[s].gpus == 0 for s in plan if s not in gpu and plan[s].actor)
    assert all(p.gpus == 0.0 for p in resolve(stages, Config(), 0.0).values())
