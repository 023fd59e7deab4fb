"""Render the tables of docs/benchmarks.md from the raw JSON in bench/results/.

A generated table sits between markers; everything outside them (headings, commands, notes) is
prose the script never touches:

    <!-- table: ingest_throughput -->

    | ... rendered from bench/results/ingest_cpu.json ... |

    <!-- /table -->

Which JSON file, which rows and which fields (with their formats) make each table is the registry,
``bench/doc_tables/``. Adding a section: write the JSON to bench/results/, add a ``Table`` there,
put the markers in the doc and run this script.

    python bench/render_benchmarks.py            # rewrite the tables in place
    python bench/render_benchmarks.py --check    # exit 1 if any table differs from its JSON
    python bench/render_benchmarks.py --unbacked # list tables written by hand (outside markers)
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_tables.spec import Col, RenderError, Table  # noqa: E402  (bench/ is not a package)

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
DOC = ROOT / "docs" / "benchmarks.md"
RESULTS = BENCH / "results"

START = re.compile(r"^<!-- table: ([A-Za-z0-9_.-]+) -->[ \t]*$", re.M)
END = "<!-- /table -->"

def lookup(obj: Any, path: str) -> Any:
    """Follow a dotted path through dicts and lists; None where any step is absent."""
    for part in path.split("."):
        if isinstance(obj, dict):
            obj = obj.get(part)
        elif isinstance(obj, list) and part.lstrip("-").isdigit() and -len(obj) <= int(part) < len(obj):
            obj = obj[int(part)]
        else:
            return None
        if obj is None:
            return None
    return obj


def load_source(name: str, results: Path = RESULTS) -> Any:
    path = results / name
    if not path.exists():
        raise RenderError(f"{path}: no such result file")
    text = path.read_text()
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RenderError(f"{path}: not JSON ({e})") from None


def cell(row: dict, col: Col) -> str:
    value = col.key(row) if callable(col.key) else lookup(row, col.key)
    if value is None or value == "":
        return col.missing
    text = col.fmt(value) if callable(col.fmt) else col.fmt.format(value)
    if col.header in row.get("_bold", ()):
        text = f"**{text}**"
    return text.replace("|", "\\|").replace("\n", " ")


def render_table(table: Table, results: Path = RESULTS) -> str:
    """The markdown of one table (no markers), from its sources."""
    data = [load_source(s, results) for s in table.sources]
    rows = lookup(data[0], table.rows) if isinstance(table.rows, str) else table.rows(*data)
    if not isinstance(rows, list):
        raise RenderError(f"table {table.name}: rows {table.rows!r} is not a list in {table.sources[0]}")
    sep = "|" + "---|" * len(table.columns) if table.compact else \
        "| " + " | ".join("---" for _ in table.columns) + " |"
    lines = [_row([c.header for c in table.columns]), sep]
    lines += [_row([cell(r, c) for c in table.columns]) for r in rows]
    return "\n".join(lines)


def _row(cells: list[str]) -> str:
    """'| a | b |', an empty cell as '| |'."""
    return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"


def render_doc(text: str, tables: dict[str, Table], results: Path = RESULTS) -> tuple[str, list[str]]:
    """The doc with every marked table re-rendered, and the names of the tables found.

    Only the lines between a start marker and its end marker change; a marker the registry does
    not know, a start without an end, or one table marked twice is an error.
    """
    out, pos, seen = [], 0, []
    for m in START.finditer(text):
        if m.start() < pos:
            raise RenderError(f"table {seen[-1]}: no '{END}' before the next table marker")
        name = m.group(1)
        if name not in tables:
            raise RenderError(f"docs: table marker '{name}' is not in the registry (bench/doc_tables/)")
        if name in seen:
            raise RenderError(f"docs: table '{name}' is marked twice")
        end = text.find(END, m.end())
        nxt = START.search(text, m.end())
        if end < 0 or (nxt and nxt.start() < end):
            raise RenderError(f"docs: table '{name}' has no '{END}' marker after it")
        out += [text[pos:m.end()], "\n\n", render_table(tables[name], results), "\n\n"]
        pos = end
        seen.append(name)
    out.append(text[pos:])
    return "".join(out), seen


def unbacked_tables(text: str) -> list[tuple[int, str]]:
    """(line number, header) of each markdown table outside the markers: written by hand."""
    found, inside, in_table = [], False, False
    for i, line in enumerate(text.splitlines(), 1):
        if START.match(line):
            inside = True
        elif line.strip() == END:
            inside = False
        is_row = line.startswith("|")
        if is_row and not in_table and not inside:
            found.append((i, line[:100]))
        in_table = is_row
    return found


def main(argv: list[str] | None = None, tables: dict[str, Table] | None = None) -> int:
    """The CLI; ``tables`` replaces the registry (tests render a doc of their own)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table differs from its JSON")
    ap.add_argument("--unbacked", action="store_true", help="list the tables outside markers (not generated)")
    ap.add_argument("--doc", type=Path, default=DOC)
    ap.add_argument("--results", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    if tables is None:
        from doc_tables import TABLES as tables

    try:
        text = a.doc.read_text()
        new, seen = render_doc(text, tables, a.results)
    except (OSError, RenderError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    unmarked = sorted(set(tables) - set(seen))
    if unmarked:
        print(f"error: registry tables without markers in {a.doc}: {', '.join(unmarked)}", file=sys.stderr)
        return 2
    if a.unbacked:
        for line, head in unbacked_tables(new):
            print(f"{a.doc}:{line}: {head}")
    if a.check:
        if new != text:
            diff = difflib.unified_diff(text.splitlines(), new.splitlines(), "doc", "from JSON", lineterm="", n=0)
            print("\n".join(diff))
            print(f"error: {a.doc} differs from bench/results/: run python bench/render_benchmarks.py",
                  file=sys.stderr)
            return 1
        print(f"{a.doc}: {len(seen)} tables match their JSON")
        return 0
    if new != text:
        a.doc.write_text(new)
    print(f"{a.doc}: {len(seen)} tables rendered" + (" (changed)" if new != text else " (unchanged)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
