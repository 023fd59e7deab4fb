"""Print the project's requirements (dependencies and the test extra) for .ci/latest: the upper
bounds that guard private internals (pyproject's [tool.vidcorpus] internals-bounded) removed, so
pip takes the newest releases; every other bound (a resolver window, a major version) is kept."""

import re
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
unbound = set(project["tool"]["vidcorpus"]["internals-bounded"])
for req in project["project"]["dependencies"] + project["project"]["optional-dependencies"]["test"]:
    name = re.match(r"[A-Za-z0-9_.-]+", req).group(0)
    if name in unbound:
        req = ",".join(part for part in req.split(",") if not part.lstrip().startswith("<"))
    print(req)
