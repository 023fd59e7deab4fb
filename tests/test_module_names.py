"""No two modules a newcomer could confuse (issue 24): a module's file name is unique in the package.

`errors.py` in three folders, `models.py` in captioning/ and train/, `queries.py` in serve/ and the
report: a reader who meets `from ... import queries` or a traceback through `models.py` cannot tell
which one it is. A name may repeat only where the CLI layout fixes it (tests/test_cli_layout.py: the
code of `vidcorpus X` is in cli/X.py), beside the code that command runs, or where this file says why.
Likewise a public top-level function name is defined in one module only, unless this file says why.
"""

from __future__ import annotations

import ast
from collections import defaultdict

import test_layers

# A name shared for a reason the name itself cannot avoid, with that reason.
EXPLAINED = {
    "app": {"vidcorpus.cli.app", "vidcorpus.serve.app"},  # the CLI's typer app (pyproject's script
    # entry point) and the web app's Starlette application: each package's conventional entry
}


# Public top-level functions that two modules define under one name, each with why it is no confusion.
SHARED_FUNCTIONS = {
    # a command's function (cli/X.py) and the job or stage function it calls
    "generate": {"vidcorpus.cli.generate", "vidcorpus.train.cascade"},
    "serve": {"vidcorpus.cli.serve", "vidcorpus.serve.server"},
    "sync": {"vidcorpus.cli.sync", "vidcorpus.jobs.curate.sync"},
    "train_refiner": {"vidcorpus.cli.train", "vidcorpus.train.refiner"},
    # each stage's answer to the same question about its own config section
    "wants_gpu": {"vidcorpus.ingest.transnet", "vidcorpus.filters.frame_models"},
    # an HTML table of the report's pages and a checked SQL table name: never in one module together
    "table": {"vidcorpus.jobs.report.html_pages", "vidcorpus.catalog.sql_names"},
}


def shared_functions(modules: dict[str, object]) -> dict[str, list[str]]:
    """Public top-level function names several modules define, with the modules, beyond the above."""
    by_name: dict[str, list[str]] = defaultdict(list)
    for dotted, path in modules.items():
        for node in ast.parse(open(path).read()).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                by_name[node.name].append(dotted)
    return {name: sorted(owners) for name, owners in by_name.items()
            if len(owners) > 1 and set(owners) != SHARED_FUNCTIONS.get(name)}


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


def test_no_two_modules_define_a_public_function_of_one_name_without_a_reason():
    """``active_recipe`` in serve's SQL and in the catalog's state, ``wide_columns`` in serve and the
    schema, ``bucket_of`` in shards and train: one name, two meanings, and the wrong import runs."""
    found = shared_functions(test_layers.source_modules())
    assert not found, f"one function name in several modules (name each for its job): {found}"


def test_the_function_check_flags_a_repeated_name(tmp_path):
    (tmp_path / "a.py").write_text("def active_recipe(cat):\n    pass\n\n\ndef _private():\n    pass\n")
    (tmp_path / "b.py").write_text("def active_recipe(con):\n    pass\n\n\ndef _private():\n    pass\n")
    (tmp_path / "c.py").write_text("def wants_gpu(cfg):\n    pass\n")
    modules = {"vidcorpus.serve.a": tmp_path / "a.py", "vidcorpus.catalog.b": tmp_path / "b.py",
               "vidcorpus.ingest.transnet": tmp_path / "c.py", "vidcorpus.filters.frame_models": tmp_path / "c.py"}
    assert shared_functions(modules) == {"active_recipe": ["vidcorpus.catalog.b", "vidcorpus.serve.a"]}


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
