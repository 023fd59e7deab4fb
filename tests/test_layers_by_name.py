"""The core and the stage folders load no vidcorpus module by name (docs/architecture.md, "Layers").

`importlib.import_module("vidcorpus....")`, `__import__` or `pkgutil.resolve_name` is an import that
tests/test_layers.py's walk of import statements cannot see: a core module loading a stage's code
that way depends on the stage all the same, and can close a circle at runtime. The layers and the
modules come from test_layers (pyproject.toml's package-dir), so both tests see the same package.
"""

from __future__ import annotations

import ast

import test_layers
from test_layers import APP, CORE_PACKAGE, layer_of, layer_table, source_modules

# Loading a module by name at runtime is an import that test_layers cannot see: the core and the stage
# folders do not do it (a preset NAMES a stage's builder as "module:function"; the application,
# vidcorpus/jobs/models.py, imports it). A literal third-party name (`import_module("onnxruntime")`)
# is fine; a vidcorpus name, a relative one or one computed at runtime is not.
LOADS_BY_NAME = frozenset({"importlib.import_module", "importlib.__import__", "__import__",
                           "builtins.__import__", "pkgutil.resolve_name"})


def _qualified_names(tree: ast.AST) -> dict[str, str]:
    """Local name -> what it was imported as, from every import of the module (`import importlib as
    il` -> il: importlib; `from importlib import import_module as load` -> load: importlib.import_module)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:  # `import importlib.util` binds `importlib`
                    top = alias.name.partition(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.AST, names: dict[str, str]) -> str | None:
    if isinstance(node, ast.Name):
        return names.get(node.id, node.id)
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value, names)
        return f"{base}.{node.attr}" if base else None
    return None


def _loads_vidcorpus_or_unknown(call: ast.Call) -> bool:
    """Whether a by-name load may reach a vidcorpus module: a vidcorpus or relative literal, or a
    name computed at runtime."""
    arg = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg == "name"), None)
    if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
        return True
    target = arg.value
    return target.startswith(".") or target == CORE_PACKAGE or target.startswith(CORE_PACKAGE + ".")


def modules_loaded_by_name() -> list[str]:
    """One line per call in the core or a stage folder that loads a vidcorpus module (or a module
    whose name is computed) by name: path:line: layer: the statement."""
    table = layer_table()
    found: list[str] = []
    for name, path in source_modules().items():
        layer = layer_of(name, table)
        if layer == APP:
            continue
        source = path.read_text()
        tree = ast.parse(source, str(path))
        names = _qualified_names(tree)
        lines = source.splitlines()
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and _dotted(node.func, names) in LOADS_BY_NAME
                    and _loads_vidcorpus_or_unknown(node)):
                where = f"{path.relative_to(test_layers.ROOT)}:{node.lineno}"
                found.append(f"{where}: {layer}: {lines[node.lineno - 1].strip()}")
    return sorted(found)


def test_the_core_and_the_stages_load_no_module_by_name():
    found = modules_loaded_by_name()
    assert not found, ("the core and the stage folders import by statement, not by name (the layer test cannot "
                       "see a name; a builder a preset names is loaded by vidcorpus/jobs/models.py):\n"
                       + "\n".join(found))


def test_the_by_name_check_sees_every_spelling(tmp_path, monkeypatch):
    """The checker itself: import_module and __import__ however imported, with a vidcorpus, relative or
    computed name, are caught in the core and in a stage; a literal third-party name, find_spec and
    the application's loads are not."""
    pkg = tmp_path / "vidcorpus"
    (pkg / "jobs").mkdir(parents=True)
    (tmp_path / "filters").mkdir()
    (tmp_path / "pyproject.toml").write_text(
        '[tool.setuptools]\npackage-dir = { "vidcorpus" = "vidcorpus", "vidcorpus.filters" = "filters" }\n')
    for path in (pkg / "__init__.py", pkg / "jobs" / "__init__.py", tmp_path / "filters" / "__init__.py"):
        path.write_text("")
    (pkg / "presets.py").write_text(
        "import importlib\n"
        "def named(ref):\n"
        "    return importlib.import_module(ref.partition(':')[0])\n"           # 3 computed
        "def builder():\n"
        "    return __import__('vidcorpus.filters.head')\n"                     # 5 vidcorpus literal
        "def onnx():\n"
        "    return importlib.import_module('onnxruntime')\n"                   # 7 third party: fine
        "def spec():\n"
        "    return importlib.util.find_spec('vidcorpus.filters')\n")           # 9 finds, loads nothing
    (tmp_path / "filters" / "head.py").write_text(
        "from importlib import import_module as load\n"
        "import importlib as il\n"
        "import pkgutil\n"
        "a = load('.score', 'vidcorpus.filters')\n"                             # 4 relative
        "b = il.import_module(name='vidcorpus.ids')\n"                          # 5 keyword
        "c = pkgutil.resolve_name('vidcorpus.ids:f')\n"                         # 6 resolve_name
        "d = load(f'vidcorpus.{a}')\n")                                         # 7 f-string: computed
    (pkg / "jobs" / "models.py").write_text(
        "import importlib\ndef named(ref):\n    return importlib.import_module(ref)\n")  # the app: fine
    monkeypatch.setattr(test_layers, "ROOT", tmp_path)
    assert [line.partition(": ")[0] for line in modules_loaded_by_name()] == [
        "filters/head.py:4", "filters/head.py:5", "filters/head.py:6", "filters/head.py:7",
        "vidcorpus/presets.py:3", "vidcorpus/presets.py:5"]
