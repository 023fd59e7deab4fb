"""The command line's layout: a command's code is in the module named for it, and `--help` loads
none of the jobs or their heavy libraries (they are imported inside the commands)."""

import subprocess
import sys

import typer

from vidcorpus.cli.app import app


def _commands(typer_app: typer.Typer, prefix: tuple[str, ...] = ()):
    for info in typer_app.registered_commands:
        yield (*prefix, info.name or info.callback.__name__), info.callback
    for group in typer_app.registered_groups:
        yield from _commands(group.typer_instance, (*prefix, group.name))


def test_every_command_lives_in_the_cli_module_named_for_it():
    seen = dict(_commands(app))
    assert {("run",), ("release", "create"), ("filter", "suggest"), ("train-refiner",), ("shards", "encode")} <= set(seen)
    for path, callback in seen.items():
        # `vidcorpus release create` -> cli/release.py; `train-refiner` -> cli/train.py
        assert callback.__module__ == f"vidcorpus.cli.{path[0].split('-')[0]}", (path, callback.__module__)


def test_help_loads_no_job_and_no_heavy_library():
    probe = ("import sys\nfrom typer.testing import CliRunner\nfrom vidcorpus.cli.app import app\n"
             "assert CliRunner().invoke(app, ['--help']).exit_code == 0\n"
             "heavy = ('torch', 'ray', 'duckdb', 'pyarrow', 'transformers', 'open_clip', 'diffusers', 'vidcorpus.jobs')\n"
             "print(sorted(m for m in sys.modules if m.startswith(heavy)))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_every_user_error_is_named_by_the_module_that_defines_it():
    """The handler looks each class up in ``sys.modules[module]``: naming a module that merely
    re-exports the class (or that a move left behind) would turn a user's mistake into a traceback
    whenever the defining module is imported without it."""
    import importlib

    from vidcorpus.cli.user_errors import USER_ERRORS

    for module, name, _code in USER_ERRORS:
        cls = getattr(importlib.import_module(module), name)
        assert isinstance(cls, type) and issubclass(cls, BaseException), (module, name)
        defined_in = "duckdb" if cls.__module__.split(".")[0] in ("duckdb", "_duckdb") else cls.__module__
        assert defined_in == module, f"{module}.{name} is defined in {cls.__module__}"
