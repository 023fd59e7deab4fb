"""How pytest-xdist splits the suite between its workers (pyproject's addopts: `-n 2 --dist loadfile`).

A test file is the unit of work, so a module-scoped fixture (a demo corpus, a built model) is built
once. On top of xdist's loadfile, the files that use one of the session's expensive fixtures (the
demo: a whole Ray run plus training, minutes on 2 cores; the served catalog) go to one worker
together, so each of those is built once per run instead of once per worker. Work units with the
most tests marked `slow` start first (then the largest), so that no long file is left for the end
while the other worker idles.

Only the workers collect, and xdist's own `@group` suffix (loadgroup) is lost under pytest 9 (node ids
are no longer written through `_nodeid`), so each worker writes which file needs which fixture into
a JSON file that the controller's scheduler reads once every worker has collected. Without that file
(or without xdist: `-n 0`, `-p no:xdist`) the split is plain loadfile.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# session fixture -> the work unit of every test file that requests it (directly or through a fixture)
SHARED_SESSION_FIXTURES = {"demo": "demo", "serve_built": "serve-catalog"}
GROUPS_FILE_ENV = "VIDCORPUS_TEST_GROUPS_FILE"  # set by the controller, inherited by the workers
_groups_folder = pytest.StashKey[str]()
# xdist's workers start with COLUMNS=80 in their environment; a module-level rich Console (the CLI's)
# then keeps that width for good, so CliRunner(env={"COLUMNS": ...}) no longer widens its tables.
# The workers get the controller's values back, so a test sees the environment it sees without -n.
TERMINAL_ENV = ("COLUMNS", "LINES")
_terminal_env = pytest.StashKey[dict]()


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_configure(config: pytest.Config) -> None:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:  # a worker: the controller's terminal variables
        for name, value in workerinput.get("vidcorpus_terminal_env", {}).items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        return
    config.stash[_terminal_env] = {name: os.environ.get(name) for name in TERMINAL_ENV}
    if config.getoption("dist", "no") == "loadfile" and config.getoption("numprocesses", None):
        folder = tempfile.mkdtemp(prefix="vidcorpus-xdist-groups-")
        config.stash[_groups_folder] = folder
        os.environ[GROUPS_FILE_ENV] = str(Path(folder) / "groups.json")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """On the controller, for each worker it starts: the terminal variables as the controller had them."""
    node.workerinput["vidcorpus_terminal_env"] = node.config.stash.get(_terminal_env, {})


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = config.stash.get(_groups_folder, None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop(GROUPS_FILE_ENV, None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a worker: record, per test file, its group (when it needs a shared session fixture) and how
    many of its tests are marked slow."""
    target = os.environ.get(GROUPS_FILE_ENV)
    if getattr(config, "workerinput", None) is None or not target:
        return
    files: dict[str, dict] = {}
    for item in items:
        entry = files.setdefault(_file_of(item.nodeid), {"group": None, "slow": 0})
        entry["slow"] += item.get_closest_marker("slow") is not None
        for fixture, group in SHARED_SESSION_FIXTURES.items():
            if fixture in getattr(item, "fixturenames", ()):
                entry["group"] = entry["group"] or group
    part = Path(f"{target}.{config.workerinput['workerid']}")
    part.write_text(json.dumps(files))
    os.replace(part, target)  # every worker collects the same tests: the last one's copy is as good


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """loadfile, with the files of one shared session fixture in one work unit, slow units first."""
    if config.getoption("dist", "no") != "loadfile":
        return None
    from collections import OrderedDict

    from xdist.scheduler import LoadFileScheduling

    class FileOrGroupScheduling(LoadFileScheduling):
        files: dict[str, dict] | None = None
        ordered = False

        def _file_info(self) -> dict[str, dict]:
            if self.files is None:  # read once, when the controller splits the collection
                path = os.environ.get(GROUPS_FILE_ENV)
                self.files = json.loads(Path(path).read_text()) if path and Path(path).exists() else {}
            return self.files

        def _split_scope(self, nodeid: str) -> str:
            file = _file_of(nodeid)
            return self._file_info().get(file, {}).get("group") or file

        def _assign_work_unit(self, node) -> None:
            if not self.ordered:  # the queue is complete before the first unit goes out
                slow: dict[str, int] = {}
                for file, info in self._file_info().items():
                    scope = info.get("group") or file
                    slow[scope] = slow.get(scope, 0) + info.get("slow", 0)
                self.workqueue = OrderedDict(  # stable: ties keep xdist's order (largest unit first)
                    sorted(self.workqueue.items(), key=lambda unit: -slow.get(unit[0], 0)))
                self.ordered = True
            super()._assign_work_unit(node)

    return FileOrGroupScheduling(config, log)
