"""One import package, `vidcorpus`, with the stage folders mapped in; CI runs the README's command."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_only_the_vidcorpus_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    [wheel] = tmp_path.glob("vidcorpus-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert top == {"vidcorpus", next(t for t in top if t.endswith(".dist-info"))}
    for sub in ("ingest", "filters", "captioning", "shards", "catalog", "train"):
        assert f"vidcorpus/{sub}/__init__.py" in names
    assert any(n.startswith("vidcorpus/filters/recipes/") and n.endswith(".yaml") for n in names)
    assert "vidcorpus/model_configs/vidcorpus-tiny-clip.json" in names  # the tiny preset's CLIP config
    for asset in ("templates/grid.html", "templates/clip.html", "static/app.js", "static/app.css"):
        assert f"vidcorpus/serve/{asset}" in names  # `vidcorpus serve` needs no CDN: its assets ship


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()
    blocks = [i for i, line in enumerate(readme) if line.strip() == "```bash"]
    install, test = readme[blocks[0] + 1].strip(), readme[blocks[1] + 1].strip()
    assert "vidcorpus demo" in install and "pip install" in install
    ci = (ROOT / ".ci" / "run").read_text()
    assert test in ci.splitlines()
    # both install through the tested versions
    pip = next(part.strip() for part in install.split("&&") if "-e " in part)
    assert "-c constraints.txt" in pip
    assert any(line.strip().startswith(pip) for line in ci.splitlines())


def test_tested_versions_lie_inside_the_declared_ranges():
    """constraints.txt (what the suite passed with) satisfies every range pyproject declares, so the
    ranges are at least true for the tested set; every direct dependency is pinned there."""
    import re
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = re.split(r"==", line.strip(), maxsplit=1)
            pins[canonicalize_name(name)] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for text in project["dependencies"] + project["optional-dependencies"]["test"]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} is outside {req.specifier}"


def test_every_subpackage_ships_and_the_console_script_runs(tmp_path):
    """Every folder of ``vidcorpus/`` with an ``__init__.py`` (cli/, jobs/, ...) is a package the wheel
    lists, and the console script's target is the app: `vidcorpus --help` answers."""
    import importlib
    import tomllib

    from typer.testing import CliRunner

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(project["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "vidcorpus").rglob("__init__.py")}
    assert on_disk <= listed, f"packages missing from pyproject: {sorted(on_disk - listed)}"
    module, _, attr = project["project"]["scripts"]["vidcorpus"].partition(":")
    app = getattr(importlib.import_module(module), attr)
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0 and "release" in result.output and "train-refiner" in result.output
