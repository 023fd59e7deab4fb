"""Where a command looks when the user names no workdir, and what it says when nothing is there.

The default workdir is ``$VIDCORPUS_WORKDIR`` if set, else ``./vidcorpus-work`` (README,
"Where things go"). ``vidcorpus demo [DIR]`` keeps its own workdir at ``DIR/work`` (default
``./vidcorpus-demo/work``), so a user who runs the demo and then ``vidcorpus sql`` from the same
directory is told where the demo's catalog is instead of being asked to run the demo again.
"""

from __future__ import annotations

import os
from pathlib import Path

WORKDIR_ENV = "VIDCORPUS_WORKDIR"
DEFAULT_WORKDIR = "./vidcorpus-work"
DEMO_DIR = "vidcorpus-demo"  # `vidcorpus demo`'s default DIR; its workdir is DIR/work
CATALOG_FILE = "catalog.duckdb"


def default_workdir() -> str:
    return os.environ.get(WORKDIR_ENV) or DEFAULT_WORKDIR


def demo_catalogs(where: str | os.PathLike = ".") -> list[Path]:
    """Demo catalogs under ``where``: the default demo folder's, then any ``*/work/catalog.duckdb``
    of a folder holding the demo's ``corpus/sources.jsonl``."""
    base = Path(where)
    found = [base / DEMO_DIR / "work" / CATALOG_FILE]
    try:
        found += sorted(p / "work" / CATALOG_FILE for p in base.iterdir()
                        if p.is_dir() and p.name != DEMO_DIR and (p / "corpus" / "sources.jsonl").is_file())
    except OSError:
        pass
    return [p.resolve() for p in found if p.is_file()]


def missing_catalog_hint(path: str | os.PathLike) -> str:
    """What to do about a catalog that is not at ``path``: point at a demo catalog nearby, if any."""
    missing = Path(path).resolve()
    demos = [d for d in demo_catalogs() if d != missing]
    if demos:
        work = demos[0].parent
        shown = os.path.relpath(work) if not os.path.relpath(work).startswith("..") else str(work)
        return f"the demo's catalog is {demos[0]}: add `-w {shown}` or set {WORKDIR_ENV}={work}"
    return "run `vidcorpus demo` or `vidcorpus run` first, or point -w/--catalog at an existing catalog"
