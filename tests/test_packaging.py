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


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()
    blocks = [i for i, line in enumerate(readme) if line.strip() == "```bash"]
    install, test = readme[blocks[0] + 1].strip(), readme[blocks[1] + 1].strip()
    assert "vidcorpus demo" in install and "pip install" in install
    ci = (ROOT / ".ci" / "run").read_text()
    assert test in ci.splitlines()
