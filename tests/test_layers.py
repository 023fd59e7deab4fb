"""The package's layers point one way (docs/architecture.md, "Layers").

CORE (modules directly in `vidcorpus/`) imports no stage and no application module; each STAGE
folder imports only the core and itself; the APPLICATION (`vidcorpus/cli`, `vidcorpus/jobs`,
`vidcorpus/serve`) may import anything. No import circles anywhere, counting the imports inside
functions too (an import that only runs under TYPE_CHECKING never runs, so it closes no circle).
The source is read with `ast`, so every import counts, without importing anything.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CORE, STAGE, APP = "core", "stage", "app"

# The layer table. A module belongs to the first entry whose package it is or lies under;
# a module no entry names that sits directly in `vidcorpus/` is core.
LAYER_OF_PACKAGE: dict[str, str] = {
    "vidcorpus.cli": APP,
    "vidcorpus.jobs": APP,
    "vidcorpus.serve": APP,
    "vidcorpus.ingest": STAGE,
    "vidcorpus.filters": STAGE,
    "vidcorpus.captioning": STAGE,
    "vidcorpus.shards": STAGE,
    "vidcorpus.catalog": STAGE,
    "vidcorpus.train": STAGE,
}
# Which layer may import which (a stage may import its own folder: see `allowed`).
MAY_IMPORT: dict[str, frozenset[str]] = {
    CORE: frozenset({CORE}),
    STAGE: frozenset({CORE}),
    APP: frozenset({CORE, STAGE, APP}),
}


def source_modules() -> dict[str, Path]:
    """Every module of the package, by dotted name, from pyproject's package-dir mapping."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    modules: dict[str, Path] = {}
    for package, folder in mapping.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([package, *parts])
            modules.setdefault(name, path)  # vidcorpus/ is walked once, its mapped subfolders too
    return modules


def package_of(name: str, modules: dict[str, Path]) -> str:
    """The package a module's relative imports start from."""
    is_package = modules[name].name == "__init__.py"
    return name if is_package else name.rpartition(".")[0]


def layer_of(name: str) -> str:
    for package, layer in LAYER_OF_PACKAGE.items():
        if name == package or name.startswith(package + "."):
            return layer
    return CORE


def stage_folder(name: str) -> str:
    return ".".join(name.split(".")[:2])


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    module_level: bool  # runs when the importer is imported (not inside a function, not TYPE_CHECKING)
    type_checking: bool = False  # under `if TYPE_CHECKING:`: for type hints only, never runs


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _targets(node: ast.Import | ast.ImportFrom, importer: str, modules: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = package_of(importer, modules).split(".")
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, base] if base else package)
        # `from pkg import sub` imports the submodule when there is one, else a name of pkg
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    found = []
    for name in names:
        while name and name not in modules:  # `import a.b.c` of a non-module attribute: its module
            name = name.rpartition(".")[0]
        if name.startswith("vidcorpus") and name:
            found.append(name)
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    found: list[Import] = []

    def visit(node: ast.AST, module_level: bool, type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.extend(Import(name, target, child.lineno, module_level, type_checking)
                             for target in _targets(child, name, modules))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False, type_checking)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                visit(child, False, True)
            else:
                visit(child, module_level, type_checking)

    visit(ast.parse(path.read_text(), str(path)), True, False)
    return found


def all_imports() -> list[Import]:
    modules = source_modules()
    return [imp for name, path in modules.items() for imp in imports_of(name, path, modules)]


def allowed(imp: Import) -> bool:
    importer, imported = layer_of(imp.importer), layer_of(imp.imported)
    if importer == STAGE and imported == STAGE:
        return stage_folder(imp.importer) == stage_folder(imp.imported)
    return imported in MAY_IMPORT[importer]


def layer_violations(imports: list[Import]) -> list[str]:
    """One line per offending import statement: importer -> imported (line), the rule it breaks."""
    lines = {
        f"{imp.importer} -> {imp.imported} (line {imp.line}): "
        f"{layer_of(imp.importer)} may not import "
        + ("another stage folder" if layer_of(imp.importer) == layer_of(imp.imported) == STAGE
           else layer_of(imp.imported))
        for imp in imports if not allowed(imp)
    }
    return sorted(lines)


def import_cycles(imports: list[Import], inside_functions: bool = False) -> list[list[str]]:
    """Strongly connected components of the import graph that hold more than one module (or a
    module importing itself), by Tarjan's algorithm. The graph holds the module-level imports, and
    with ``inside_functions`` those inside functions too (never the TYPE_CHECKING ones)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if imp.module_level or (inside_functions and not imp.type_checking):
            graph.setdefault(imp.importer, set()).add(imp.imported)
            graph.setdefault(imp.imported, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return cycles


def test_every_import_points_down_the_layers():
    violations = layer_violations(all_imports())
    assert not violations, "imports against the layers:\n" + "\n".join(violations)


def test_no_module_level_import_cycles():
    cycles = import_cycles(all_imports())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_import_cycles_counting_imports_inside_functions():
    """An import inside a function that closes a circle only hides it: the two modules still need
    each other. The shared piece belongs in a third module, or the dependent code where it is used."""
    cycles = import_cycles(all_imports(), inside_functions=True)
    assert not cycles, "import cycles (imports inside functions counted):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_presets_name_builders_that_exist():
    """A preset names a model's builder or check as "module:function" instead of importing it (the
    core imports no stage): each name must be a function its module defines."""
    from vidcorpus import presets

    modules = source_modules()
    refs = [b.builder for b in (*presets.TINY_BUILDS, presets.TINY_REFINER)] + [presets.CLIP_WEIGHTS_CHECK]
    for ref in refs:
        module, _, function = ref.partition(":")
        assert module in modules, f"{ref}: no module {module}"
        tree = ast.parse(modules[module].read_text())
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        assert function in defined, f"{ref}: {module} defines no function {function}"


def test_the_walk_sees_every_kind_of_import(tmp_path, monkeypatch):
    """The checker itself: relative, `from pkg import sub`, in-function and TYPE_CHECKING imports
    are all seen; a core module importing a stage and two stages importing each other are caught."""
    pkg = tmp_path / "vidcorpus"
    (pkg / "sub").mkdir(parents=True)
    (tmp_path / "ingest").mkdir()
    (tmp_path / "filters").mkdir()
    (tmp_path / "pyproject.toml").write_text(
        '[tool.setuptools]\npackage-dir = { "vidcorpus" = "vidcorpus", '
        '"vidcorpus.ingest" = "ingest", "vidcorpus.filters" = "filters" }\n')
    for path in (pkg / "__init__.py", tmp_path / "ingest" / "__init__.py",
                 tmp_path / "filters" / "__init__.py", pkg / "sub" / "__init__.py"):
        path.write_text("")
    (pkg / "ids.py").write_text("def f():\n    from vidcorpus.ingest import probe\n")
    (tmp_path / "ingest" / "probe.py").write_text(
        "from typing import TYPE_CHECKING\nfrom .. import ids\nif TYPE_CHECKING:\n"
        "    from vidcorpus.filters import score\n")
    (tmp_path / "filters" / "score.py").write_text("from vidcorpus.ingest.probe import x\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    imports = all_imports()
    assert sorted(layer_violations(imports)) == [
        "vidcorpus.filters.score -> vidcorpus.ingest.probe (line 1): stage may not import another stage folder",
        "vidcorpus.ids -> vidcorpus.ingest.probe (line 2): core may not import stage",
        "vidcorpus.ingest.probe -> vidcorpus.filters.score (line 4): stage may not import another stage folder",
    ]
    assert import_cycles(imports) == []  # the in-function and TYPE_CHECKING edges close no circle
    # counting imports inside functions, ids -> probe (in f) and probe -> ids close one; the
    # TYPE_CHECKING edge probe -> score never runs, so score <-> probe is none
    assert import_cycles(imports, inside_functions=True) == [["vidcorpus.ids", "vidcorpus.ingest.probe"]]
    (pkg / "ids.py").write_text("from vidcorpus.ingest import probe\n")
    assert import_cycles(all_imports()) == [["vidcorpus.ids", "vidcorpus.ingest.probe"]]


@pytest.mark.parametrize("name", ["vidcorpus.cli.main", "vidcorpus.jobs.curate", "vidcorpus.serve.app"])
def test_application_packages_are_app_by_rule(name):
    assert layer_of(name) == APP
