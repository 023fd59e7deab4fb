"""No two modules a newcomer could confuse (issue 24): a module's file name is unique in the package.

`errors.py` in three folders, `models.py` in captioning/ and train/, `queries.py` in serve/ and the
report: a reader who meets `from ... import queries` or a traceback through `models.py` cannot tell
which one it is. A name may repeat only where the CLI layout fixes it (tests/test_cli_layout.py: the
code of `vidcorpus X` is in cli/X.py), beside the code that command runs, or where this file says why.
"""

from __future__ import annotations

from collections import defaultdict

import test_layers

# A name shared for a reason the name itself cannot avoid, with that reason.
EXPLAINED = {
    "app": {"vidcorpus.cli.app", "vidcorpus.serve.app"},  # the CLI's typer app (pyproject's script
    # entry point) and the web app's Starlette application: each package's conventional entry
}


def command_modules() -> set[str]:
    """The CLI modules that hold a command (`vidcorpus release create` -> vidcorpus.cli.release)."""
    from vidcorpus.cli.app import app

    def walk(typer_app):
        for info in typer_app.registered_commands:
            yield info.callback.__module__
        for group in typer_app.registered_groups:
            yield from walk(group.typer_instance)

    return set(walk(app))


def confusable(modules: dict[str, object], commands: set[str]) -> dict[str, list[str]]:
    """File names (packages' __init__ aside) that several modules share without a reason above."""
    by_name: dict[str, list[str]] = defaultdict(list)
    for dotted, path in modules.items():
        if str(path).endswith("__init__.py"):
            continue
        by_name[dotted.rpartition(".")[2]].append(dotted)
    out = {}
    for name, owners in by_name.items():
        if len(owners) < 2 or set(owners) == EXPLAINED.get(name):
            continue
        command = f"vidcorpus.cli.{name}"
        if len(owners) == 2 and command in owners and command in commands:
            continue  # cli/X.py (named by the layout rule) and the job or stage code it runs
        out[name] = sorted(owners)
    return out


def test_no_two_modules_share_a_file_name_without_a_reason():
    found = confusable(test_layers.source_modules(), command_modules())
    assert not found, f"modules a newcomer could confuse (rename one for its job): {found}"


def test_the_check_flags_a_repeated_name_and_keeps_the_command_mirrors():
    commands = {"vidcorpus.cli.release"}
    modules = {
        "vidcorpus.errors": "vidcorpus/errors.py",
        "vidcorpus.catalog.errors": "catalog/errors.py",
        "vidcorpus.cli.release": "vidcorpus/cli/release.py",  # a command's module
        "vidcorpus.jobs.release": "vidcorpus/jobs/release.py",  # the job it runs
        "vidcorpus.cli.output": "vidcorpus/cli/output.py",  # not a command: no excuse
        "vidcorpus.serve.output": "vidcorpus/serve/output.py",
        "vidcorpus.serve": "vidcorpus/serve/__init__.py",
        "vidcorpus.cli.serve": "vidcorpus/cli/serve.py",
        "vidcorpus.cli.app": "vidcorpus/cli/app.py",
        "vidcorpus.serve.app": "vidcorpus/serve/app.py",
    }
    assert confusable(modules, commands) == {
        "errors": ["vidcorpus.catalog.errors", "vidcorpus.errors"],
        "output": ["vidcorpus.cli.output", "vidcorpus.serve.output"],
    }
    # a third module of a command's name is a confusion again
    modules["vidcorpus.shards.release"] = "shards/release.py"
    assert "release" in confusable(modules, commands)
