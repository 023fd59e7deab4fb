"""The jobs log through `logging`; the CLI is the one place that prints their lines (cli/output.py)."""

import logging

from typer.testing import CliRunner

from vidcorpus.cli.app import app
from vidcorpus.cli.output import console


def test_a_job_log_line_is_printed_once_by_the_command_line(tmp_path):
    runner = CliRunner()
    for _ in range(2):  # every command installs the handler; the second time it is already there
        assert runner.invoke(app, ["config", "show", "--set", f"workdir={tmp_path}"]).exit_code == 0
    with console.capture() as shown:
        logging.getLogger("vidcorpus.jobs.release").info("release r1: 3 clips kept by demo_v1@1 [not markup]")
        logging.getLogger("vidcorpus.jobs.release").debug("not for users")
    lines = [line.strip() for line in shown.get().splitlines() if line.strip()]
    assert lines == ["release r1: 3 clips kept by demo_v1@1 [not markup]"]
