"""The package's layers point one way (docs/architecture.md, "Layers").

CORE (modules directly in `vidcorpus/`) imports no stage and no application module; each STAGE
folder (every folder pyproject.toml's package-dir maps into the package) imports only the core and
itself; the APPLICATION (`vidcorpus/cli`, `vidcorpus/jobs`, `vidcorpus/serve`) may import anything.
No import circles anywhere, counting the imports inside functions too (an import that only runs
under TYPE_CHECKING never runs, so it closes no circle). The source is read with `ast`, so every
import counts, without importing anything. Why an import sits inside a function is
tests/test_inner_imports.py's check (`# inside: <reason>`). The core and the stages load no module by name
(`importlib.import_module`, `__import__`): only the application may, and that is what it is for.
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

UNKNOWN = "no layer"  # a package under vidcorpus/ that is neither an application package nor mapped in

CORE_PACKAGE = "vidcorpus"
# The application packages, by rule. The stage folders are every other package pyproject.toml's
# package-dir maps into `vidcorpus` (see `layer_table`), so a new stage folder is a stage at once.
APP_PACKAGES = ("vidcorpus.cli", "vidcorpus.jobs", "vidcorpus.serve")
# Which layer may import which (a stage may import its own folder: see `allowed`).
MAY_IMPORT: dict[str, frozenset[str]] = {
    CORE: frozenset({CORE}),
    STAGE: frozenset({CORE}),
    APP: frozenset({CORE, STAGE, APP}),
}


def package_dirs() -> dict[str, str]:
    """pyproject.toml's `[tool.setuptools] package-dir`: package -> folder."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]


def layer_table() -> dict[str, str]:
    """Package -> layer: the application packages, and as stage folders every package mapped in by
    package-dir but the core's own (`vidcorpus` -> `vidcorpus/`)."""
    table = {package: STAGE for package in package_dirs() if package != CORE_PACKAGE}
    table.update({package: APP for package in APP_PACKAGES})
    return table


def source_modules() -> dict[str, Path]:
    """Every module of the package, by dotted name, from pyproject's package-dir mapping."""
    modules: dict[str, Path] = {}
    for package, folder in package_dirs().items():
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


def layer_of(name: str, table: dict[str, str] | None = None) -> str:
    """The layer of a module: its package's in the layer table; core for `vidcorpus` and a name
    directly under it (`vidcorpus.ids`); UNKNOWN for anything deeper that no entry names."""
    for package, layer in (layer_table() if table is None else table).items():
        if name == package or name.startswith(package + "."):
            return layer
    return CORE if name.count(".") <= 1 else UNKNOWN


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


def allowed(imp: Import, table: dict[str, str] | None = None) -> bool:
    importer, imported = layer_of(imp.importer, table), layer_of(imp.imported, table)
    if importer == STAGE and imported == STAGE:
        return stage_folder(imp.importer) == stage_folder(imp.imported)
    return imported in MAY_IMPORT.get(importer, frozenset())


def layer_violations(imports: list[Import]) -> list[str]:
    """One line per offending import statement: importer -> imported (line), the rule it breaks."""
    table = layer_table()
    lines = {
        f"{imp.importer} -> {imp.imported} (line {imp.line}): "
        f"{layer_of(imp.importer, table)} may not import "
        + ("another stage folder" if layer_of(imp.importer, table) == layer_of(imp.imported, table) == STAGE
           else layer_of(imp.imported, table))
        for imp in imports if not allowed(imp, table)
    }
    return sorted(lines)


def modules_without_a_layer() -> list[str]:
    """Modules the layer table does not place: a package under `vidcorpus/` that is neither an
    application package nor mapped in by package-dir (core is only what sits directly in `vidcorpus/`)."""
    table = layer_table()
    core_folder = ROOT / package_dirs()[CORE_PACKAGE]
    found = []
    for name, path in source_modules().items():
        layer = layer_of(name, table)
        directly_in_core = path.parent == core_folder and (path.name != "__init__.py" or name == CORE_PACKAGE)
        if layer == UNKNOWN or (layer == CORE and not directly_in_core):
            found.append(f"{name} ({path.relative_to(ROOT)})")
    return found


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


def test_every_folder_mapped_into_the_package_is_a_stage_folder_at_the_root():
    """The stage folders are read from pyproject.toml's package-dir, not listed by hand here: each is
    a folder at the repository root (an application package is never mapped in as one)."""
    dirs = package_dirs()
    stages = {package for package, layer in layer_table().items() if layer == STAGE}
    assert stages == set(dirs) - {CORE_PACKAGE} and {"vidcorpus.ingest", "vidcorpus.train"} <= stages
    for package in stages:
        assert "/" not in dirs[package] and (ROOT / dirs[package] / "__init__.py").is_file(), package


def test_every_module_has_a_layer():
    """Core is only what sits directly in `vidcorpus/`: a new package there, or a stage folder this
    test does not know, is not silently core."""
    found = modules_without_a_layer()
    assert not found, ("modules in no layer (map a stage folder in pyproject.toml's package-dir, or add an "
                       "application package to APP_PACKAGES):\n" + "\n".join(found))


def test_the_layer_table_follows_pyproject(tmp_path, monkeypatch):
    """The checker itself: a folder newly mapped in package-dir is a stage folder (its import of
    another stage is caught, not waved through as core's), and a package under vidcorpus/ that is
    neither mapped nor an application package has no layer."""
    pkg = tmp_path / "vidcorpus"
    (pkg / "newpkg").mkdir(parents=True)
    for folder in ("ingest", "newstage"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "pyproject.toml").write_text(
        '[tool.setuptools]\npackage-dir = { "vidcorpus" = "vidcorpus", '
        '"vidcorpus.ingest" = "ingest", "vidcorpus.newstage" = "newstage" }\n')
    for path in (pkg / "__init__.py", pkg / "newpkg" / "__init__.py"):
        path.write_text("")
    (pkg / "ids.py").write_text("")
    (pkg / "newpkg" / "thing.py").write_text("")
    (tmp_path / "newstage" / "work.py").write_text("from vidcorpus.ingest import probe\nfrom vidcorpus import ids\n")
    (tmp_path / "ingest" / "probe.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert layer_of("vidcorpus.newstage.work") == STAGE
    assert layer_violations(all_imports()) == [
        "vidcorpus.newstage.work -> vidcorpus.ingest.probe (line 1): stage may not import another stage folder"]
    assert modules_without_a_layer() == ["vidcorpus.newpkg (vidcorpus/newpkg/__init__.py)",
                                         "vidcorpus.newpkg.thing (vidcorpus/newpkg/thing.py)"]
