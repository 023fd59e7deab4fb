"""A user's mistake ends in one line and a documented exit code, and leaves nothing behind (issue 21,
case 8): no traceback, no new catalog file, no run row. Plus the help and listing texts a user reads."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from test_catalog_shards import _clip_rows
from vidcorpus.catalog.store import Catalog
from vidcorpus.cli.app import app
from vidcorpus.cli.user_errors import EXIT_USAGE

cli = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def _one_line_error(args: list[str], code: int = EXIT_USAGE):
    r = cli.invoke(app, args)
    assert r.exit_code == code, (args, r.output, r.stderr, r.exception)
    assert "Traceback" not in r.output + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, (args, r.stderr)
    return lines[0]


# -- without any catalog: nothing may create one -------------------------------------------------------
NO_CATALOG = [
    "config show -c missing.yaml",
    "config show -c .",
    "run /does-not-exist -w W",
    "ingest /does-not-exist -w W",
    "run media --set filters.recipe=no_such_recipe -w W",
    "ingest media --retry-failed --error-class no_such_class -w W",
    "run media --error-class timeout -w W",
    "run media --set stages.split.gpus=1 -w W",  # split tasks could never start beside the GPU model actors
    'sql "SELECT 1" -w W',
    "filter apply demo_v1 -w W",
    "filter apply no_such_recipe -w W",
    "filter dedup -w W",
    "filter sweep aesthetic -w W",
    "shards write -w W",
    "sync -w W",
    "sync --catalog file://W/catalog.duckdb -w W",  # a file:// catalog is local: missing, not "remote"
    "shards list -w W",
    "shards encode --release rel -w W",
    "release create rel --recipe demo_v1 -w W",
    "release list -w W",
    "release show rel -w W",
    "release diff a b -w W",
    "catalog funnel -w W",
    "catalog verify -w W",
    "catalog verify --rebuild-wide -w W",
    "catalog export snap -w W",
    "train --select kept -w W",
    "train --release rel -w W",
    "report -o out -w W",
    "export no_such_checkpoint out",
    "release create",  # usage mistakes: one line too, not usage + hint + error
    "sql --no-such-option x",
    "no-such-command",
    "train --steps many",
    "--bogus",  # before the command name: parsed by the group itself, not by a command
    "--bogus run media -w W",
]


@pytest.mark.parametrize("command", NO_CATALOG)
def test_a_mistake_without_a_catalog_is_one_line_and_creates_nothing(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # an empty model cache (models.cache_dir's default): a command that builds the tiny models before
    # it fails does it here, and its build prints nothing (transformers' "Writing model shards" bars
    # once made such an error five lines)
    monkeypatch.setenv("VIDCORPUS_CACHE", str(tmp_path / "model-cache"))
    (tmp_path / "media").mkdir()
    _one_line_error(shlex.split(command))
    assert not (tmp_path / "W").exists()  # no catalog, no staging, no shard folder
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "model-cache") == ["media"]
    if command.startswith(("shards encode", "train", "export")):  # they check the catalog, the selection or
        assert not (tmp_path / "model-cache").exists()          # the checkpoint before they build a model


def test_sync_without_a_model_ends_in_one_line_and_the_model_exit_code(project, monkeypatch):
    """`vidcorpus sync` once printed a missing model as a wrapped red block and exit code 2, where
    `vidcorpus run` says it in one line with 3 (README, "Exit codes")."""
    from vidcorpus.errors import ModelNotAvailable
    from vidcorpus.jobs.curate import sync as sync_job

    def no_captioner(cfg, **kwargs):
        raise ModelNotAvailable("captioner weights not found under /models/captioner (a long message that "
                                "would wrap at 80 columns if it were printed as a rich block)")

    monkeypatch.chdir(project)
    monkeypatch.setattr(sync_job, "sync", no_captioner)
    line = _one_line_error(["sync", "-w", "W"], code=3)
    assert line.startswith("model not available: captioner weights not found")


# -- with a catalog: unknown names, bad paths, empty selections; no run row ----------------------------
@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("project")
    (root / "media").mkdir()
    rows = _clip_rows(root / "media", n=3, kept=(True, True, False))
    with Catalog(root / "W" / "catalog.duckdb") as cat:
        cat.commit_results("run1", rows)
    return root


WITH_CATALOG = [
    ("release show no_such_release -w W", "no release named 'no_such_release'"),
    ("release show some/dir/manifest.json -w W", "no release manifest at"),
    ("release diff nope1 nope2 -w W", "no release named 'nope1'"),
    ("release create rel --recipe no_such_recipe -w W", "no clip has a decision under recipe"),
    ('release create rel --recipe r --select "FALSE" -w W', "keeps no clip"),
    ('release create rel --recipe r --select "no_such_col > 1" -w W', "not a valid predicate"),
    ('release create "Bad Name" --recipe r -w W', "[a-z0-9][a-z0-9_.-]{0,127}"),  # brackets shown as written
    ('train --select "FALSE" -w W --steps 1', "no sharded clip matches"),
    ('train --select "no_such_col > 1" -w W --steps 1', "no_such_col"),
    ("train --release no_such_release -w W", "no release named"),
    ('shards encode --select "FALSE" -w W', "no shard holds clips"),
    # a selection reads the catalog only: no file, however it is wrapped
    ("train --select \"clip_id IN (SELECT column0 FROM read_csv('/etc/passwd'))\" -w W --steps 1", "refused"),
    ("release create rel --recipe r --select \"EXISTS (SELECT * FROM read_text('/etc/hostname'))\" -w W", "refused"),
    ("shards encode --select \"clip_id IN (SELECT * FROM glob('/etc/*'))\" -w W", "refused"),
    ('train --select "TRUE)); DELETE FROM decisions; SELECT ((1" -w W --steps 1', "one SQL expression"),
    ('release create rel --recipe r --select "TRUE); DELETE FROM decisions; SELECT (1" -w W', "one SQL expression"),
    ("report -o out --run no_such_run -w W", "no run 'no_such_run'"),
    ("report -o out --release no_such_release -w W", "no release 'no_such_release'"),
    ("catalog funnel --run no_such_run -w W", "no run 'no_such_run'"),
    ("filter sweep no_such_score -w W", "no clip has a score named"),
    ("filter apply no_such_recipe.yaml -w W", "neither a file nor a bundled recipe"),
    ("run media --set filters.recipe=no_such_recipe -w W", "neither a file nor a bundled recipe"),
    ("ingest media --retry-failed --error-class no_such_class -w W", "unknown error class"),
    ('sql "SELEC 1" -w W', "SQL error"),
    ('sql --format xml "SELECT 1" -w W', "unknown format"),
    ('sql --catalog W/nope.duckdb "SELECT 1"', "no catalog at"),
    ("catalog export /proc/no/such/dir -w W", "/proc/no"),
]


@pytest.mark.parametrize("command,says", WITH_CATALOG, ids=[c for c, _ in WITH_CATALOG])
def test_a_mistake_on_a_catalog_is_one_line_and_changes_nothing(command, says, project, monkeypatch):
    monkeypatch.chdir(project)

    def state():
        con = duckdb.connect(str(project / "W" / "catalog.duckdb"), read_only=True)
        try:
            return con.execute("SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM decisions), "
                               "(SELECT count(*) FROM shards), (SELECT count(*) FROM releases)").fetchall()[0]
        finally:
            con.close()

    before, files = state(), sorted(str(p) for p in project.rglob("*"))
    line = _one_line_error(shlex.split(command))
    assert says in line, line
    assert state() == before
    assert sorted(str(p) for p in project.rglob("*")) == files


# -- the default workdir, and the hint after the demo --------------------------------------------------
def test_after_the_demo_a_missing_default_catalog_points_at_the_demo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VIDCORPUS_WORKDIR", raising=False)
    no_demo = _one_line_error(["sql", "SELECT 1"])
    assert str(tmp_path / "vidcorpus-work" / "catalog.duckdb") in no_demo and "vidcorpus demo" in no_demo
    with Catalog(tmp_path / "vidcorpus-demo" / "work" / "catalog.duckdb"):  # where `vidcorpus demo` puts it
        pass
    hint = _one_line_error(["sql", "SELECT 1"])
    assert "the demo's catalog is" in hint and "-w vidcorpus-demo/work" in hint
    assert not (tmp_path / "vidcorpus-work").exists()
    monkeypatch.setenv("VIDCORPUS_WORKDIR", str(tmp_path / "vidcorpus-demo" / "work"))  # the documented default
    assert cli.invoke(app, ["sql", "SELECT 1 AS one"]).exit_code == 0


# -- texts a user reads --------------------------------------------------------------------------------
def _commands(group, path=()):
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):  # a group (typer may bring its own click)
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def test_help_shows_brackets_as_written():
    import re

    from typer.main import get_command

    checked = 0
    for path, cmd in _commands(get_command(app)):
        wanted = [frag for p in cmd.params for frag in re.findall(r"\[[^\]\s]+\]", p.help or "")]
        if not wanted:
            continue
        r = cli.invoke(app, [*path, "--help"])
        assert r.exit_code == 0, r.output
        for frag in wanted:
            assert frag in r.output, (path, frag)
            checked += 1
    assert checked  # release create's name pattern at least
    assert "Release name ([a-z0-9_.-])" in " ".join(cli.invoke(app, ["release", "create", "--help"]).output.split())


def _raised_error_classes() -> set[str]:
    """Every error class literal the code can record: FooError("...", "class"), error_class="class",
    and the strings returned by the classifiers."""
    found: set[str] = set()
    for folder in ("ingest", "filters", "captioning", "shards", "vidcorpus", "catalog", "train"):
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Call):
                    name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                    if name in ("DownloadError", "NotMediaError", "DecodeError", "VidcorpusError") and len(node.args) > 1:
                        if isinstance(node.args[1], ast.Constant):
                            found.add(node.args[1].value)
                    for kw in node.keywords:
                        if kw.arg == "error_class" and isinstance(kw.value, ast.Constant) and kw.value.value:
                            found.add(kw.value.value)
                if isinstance(node, ast.FunctionDef) and node.name in ("classify_error", "_requests_error_class"):
                    found |= {r.value.value for r in ast.walk(node) if isinstance(r, ast.Return)
                              and isinstance(r.value, ast.Constant) and isinstance(r.value.value, str)}
    return found


def test_ingest_help_lists_every_error_class_the_code_records():
    from vidcorpus.errors import ERROR_CLASSES

    raised = _raised_error_classes()
    assert {"empty_file", "not_found", "timeout", "http_4xx", "bad_input_row"} <= raised  # the scan works
    assert raised <= set(ERROR_CLASSES), raised - set(ERROR_CLASSES)
    text = " ".join(cli.invoke(app, ["ingest", "--help"]).output.split())
    for cls in ERROR_CLASSES:
        assert cls in text, cls


def test_release_list_fits_80_columns(tmp_path):
    from vidcorpus.config import load_config
    from vidcorpus.jobs.release import create_release

    rows = _clip_rows(tmp_path, n=2, kept=(True, True))
    cfg = load_config(None, [], workdir=str(tmp_path / "work"))
    with Catalog(cfg.catalog_path) as cat:
        cat.commit_results("run1", rows)
    names = ["pretrain-2026-12-a", "finetune_hq.v2"]
    for name in names:
        create_release(cfg, name, "r", progress=False)
    r = cli.invoke(app, ["release", "list", "-w", cfg.workdir], terminal_width=80, env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert max(len(ln) for ln in lines) <= 80, r.output
    for name in names:  # each release on one row, its name unbroken, with its clip count
        row = next(ln for ln in lines if name in ln)
        assert "r@1" in row and " 2 " in row


@pytest.mark.parametrize("args", [["config", "show", "-c", "missing.yaml"], ["run", "/does-not-exist", "-w", "W"],
                                  ["--bogus"]])
def test_the_installed_command_ends_a_mistake_in_one_line(args, tmp_path):
    """The same through the real entry point (a new process, no test runner in between)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "vidcorpus.cli", *args], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == EXIT_USAGE, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert list(tmp_path.iterdir()) == []
