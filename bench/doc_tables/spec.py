"""What a generated table of docs/benchmarks.md is made of: its sources, rows and columns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


class RenderError(Exception):
    """A doc or registry mistake: reported in one line, the doc left as it was."""


Getter = str | Callable[[dict], Any]
Formatter = str | Callable[[Any], str]


@dataclass(frozen=True)
class Col:
    """One column: its header, where its value comes from in a row, and how it is written.

    ``key`` is a dotted path into the row (``"rss.peak_mb"``, ``"runs.0.wall_s"``) or a function of
    the row; ``fmt`` a ``str.format`` pattern (``"{:,.0f}"``, ``"{:.0%}"``) or a function of the
    value. A missing or None value is written as ``missing``; a row whose ``_bold`` lists this
    header has the cell in bold (a headline figure).
    """

    header: str
    key: Getter
    fmt: Formatter = "{}"
    missing: str = ""


@dataclass(frozen=True)
class Table:
    """A table of the doc and the raw results it is rendered from.

    ``sources``: JSON files under bench/results/ (``.jsonl``: one object a line, read as a list).
    ``rows``: a dotted path into the first source giving a list of row dicts, or a function of the
    loaded sources (in order) returning the row dicts.
    ``compact`` writes the separator as ``|---|`` (the style some sections were written in).
    """

    name: str
    sources: Sequence[str]
    columns: Sequence[Col]
    rows: str | Callable[..., list[dict]]
    compact: bool = False
