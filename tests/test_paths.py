"""Every location the catalog stores is absolute (issue 21, case 3): a release made with a relative
workdir is readable, trainable and encodable from any other directory; verify flags relative paths."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from test_catalog_shards import _clip_rows
from vidcorpus.catalog.store import Catalog
from vidcorpus.cli.app import app
from vidcorpus.paths import is_relative_path
from vidcorpus.storage import absolute

cli = CliRunner()


def _ok(args):
    r = cli.invoke(app, args)
    assert r.exit_code == 0, (args, r.output, r.stderr)
    assert "Traceback" not in r.output
    return r


def test_release_from_a_relative_workdir_works_from_another_directory(tmp_path, monkeypatch, model_cache):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / "media").mkdir(parents=True)
    elsewhere.mkdir()
    rows = _clip_rows(project / "media", n=3, kept=(True, True, True))
    with Catalog(project / "work" / "catalog.duckdb") as cat:
        cat.commit_results("run1", rows)
    small = ["--set", "shards.max_samples=2", "--set", f"models.cache_dir={model_cache}"]

    monkeypatch.chdir(project)
    _ok(["release", "create", "rel", "--recipe", "r", "-w", "work", *small, "--no-progress"])
    with Catalog(project / "work" / "catalog.duckdb", read_only=True) as cat:
        manifest_url = cat.release("rel")["manifest_url"]
        stored = [r["url"] for r in cat.query_dicts("SELECT url FROM shards")]
    assert manifest_url == str(project / "work" / "releases" / "rel" / "manifest.json")
    assert stored and all(not is_relative_path(u) for u in stored)
    manifest = json.loads((project / "work" / "releases" / "rel" / "manifest.json").read_text())
    assert manifest["catalog"]["path"] == str(project / "work" / "catalog.duckdb")
    assert all(not is_relative_path(s["url"]) for s in manifest["shards"])

    monkeypatch.chdir(elsewhere)  # the same release, named by another relative path and by nothing relative
    where = ["-w", "../project/work"]
    shown = _ok(["release", "show", "rel", *where])
    assert "3 clips" in shown.output
    _ok(["release", "show", "rel", "--catalog", str(project / "work" / "catalog.duckdb")])
    encoded = _ok(["shards", "encode", "--release", "rel", *where, *small, "--height", "32", "--width", "32", "--no-progress"])
    assert "shards encoded" in encoded.output
    trained = _ok(["train", "--release", "rel", *where, *small, "--steps", "2", "-o", "run", "--no-progress",
                   "--set", "train.height=32", "--set", "train.width=32"])
    assert "trained 2 steps" in trained.output
    assert (elsewhere / "run").is_dir()  # -o run: relative to where the user typed it, stored absolute
    with Catalog(project / "work" / "catalog.duckdb", read_only=True) as cat:
        checkpoints = [r["checkpoint"] for r in cat.query_dicts("SELECT checkpoint FROM train_runs")]
    assert checkpoints and checkpoints[0].startswith(str(elsewhere / "run"))
    verified = _ok(["catalog", "verify", *where])
    assert "catalog consistent" in verified.output


def test_verify_reports_a_relative_path_in_the_catalog(tmp_path):
    rows = _clip_rows(tmp_path, n=2, kept=(True, True))
    rows[1]["clip_path"] = "media/c1.mp4"  # as an older version wrote from `-w media`
    path = tmp_path / "catalog.duckdb"
    with Catalog(path) as cat:
        cat.commit_results("run1", rows)
    r = cli.invoke(app, ["catalog", "verify", "--catalog", str(path), "-w", str(tmp_path / "work")])
    assert r.exit_code == 1, r.output
    assert "relative_path" in r.output
    with Catalog(path, read_only=True) as cat:
        problems = cat.verify()
    assert [(p["check"], p["item"]) for p in problems] == [("relative_path", rows[1]["clip_id"])]
    assert "clips.clip_path" in problems[0]["detail"] and "media/c1.mp4" in problems[0]["detail"]


def test_absolute_keeps_urls_and_resolves_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute("work") == str(tmp_path / "work")
    assert absolute("s3://bucket/work") == "s3://bucket/work"
    assert absolute("file://work") == f"file://{tmp_path / 'work'}"
    assert absolute(None) is None
    assert is_relative_path("work/x.tar") and not is_relative_path("/abs/x.tar")
    assert not is_relative_path("s3://b/x.tar") and not is_relative_path(None)


def test_config_paths_are_resolved_once_at_the_cli(tmp_path, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_recipe.yaml").write_text("name: mine\n")
    (tmp_path / "models" / "vlm").mkdir(parents=True)
    r = cli.invoke(app, ["config", "show", "--set", "workdir=work", "--set", "catalog=cat.duckdb",
                         "--set", "inputs=[a.jsonl, s3://b/x/]",
                         "--set", "filters.recipe=my_recipe.yaml", "--set", "models.captioner=models/vlm",
                         "--set", "models.i2vgen=ali-vilab/i2vgen-xl", "--set", "train.release=releases/r/manifest.json"])
    assert r.exit_code == 0, r.output
    cfg = yaml.safe_load(r.output)
    assert cfg["workdir"] == str(tmp_path / "work") and cfg["catalog"] == str(tmp_path / "cat.duckdb")
    assert cfg["inputs"] == [str(tmp_path / "a.jsonl"), "s3://b/x/"]
    assert cfg["filters"]["recipe"] == str(tmp_path / "my_recipe.yaml")
    assert cfg["models"]["captioner"] == str(tmp_path / "models" / "vlm")
    assert cfg["models"]["i2vgen"] == "ali-vilab/i2vgen-xl"  # a hub id stays a hub id
    assert cfg["train"]["release"] == str(tmp_path / "releases" / "r" / "manifest.json")
