"""What each column of ``clips_wide`` is, written once: the rebuild and the incremental update are
both generated from this table.

``clips_wide`` is the clip's own columns plus columns derived from other tables. A derived column
is either a *lookup* (a column of the clip's source or shard row, joined by key) or an *aggregate*
over the clip's rows of a long clip-keyed table (its latest caption, its latest decision, its
first shard, its latest score per scorer...). Each aggregate carries three things:

- ``agg``: the expression over the clip's rows of the table (``GROUP BY clip_id``). The full
  rebuild (``rebuild_sql``) evaluates it over every row; the incremental update
  (``catalog/wide_table.py``) evaluates it over the rows just written.
- ``merge``: how the update combines that batch's value ``{new}`` with the stored ``{old}``, so
  that the result is what the rebuild would give: the latest batch wins, keeps the older long
  caption when the batch has none, the smaller shard id, a flag that stays set.
- ``empty``: the value for a clip with no rows in the table (a flag is FALSE, not NULL).

A *derived flag* (``of``) is computed from the input's other columns (captioned = has a long caption).
``catalog verify --deep`` compares the stored table with the rebuild; both come from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from vidcorpus.catalog.sql_names import ident, name_literal

LATEST_SCORE = "arg_max(value, written_at)"
"""A scorer's value for a clip: the latest written (a re-run scorer overwrites)."""


def latest_score(scorer: str) -> str:
    """The aggregate of one scorer's latest value over a clip's ``scores`` rows (the pivot's column)."""
    return f"{LATEST_SCORE} FILTER (WHERE scorer = {name_literal(scorer)})"


@dataclass(frozen=True)
class Aggregate:
    """One clips_wide column computed from a long table's rows of the clip (see the module doc)."""
    name: str
    agg: str | None = None       # aggregate over the clip's rows; None for a flag derived from ``of``
    merge: str = "{new}"         # incremental: this batch's value {new} combined with the stored {old}
    empty: str = "NULL"          # the value when the clip has no rows in the table
    of: str | None = None        # a derived flag: SQL over the input's other columns, as {name}

    @property
    def sql_name(self) -> str:
        """The column as SQL text: fixed names bare, a scorer's (code-checked) name quoted."""
        return self.name if self.name in FIXED_NAMES else ident(self.name)


@dataclass(frozen=True)
class Input:
    """A long clip-keyed table that clips_wide aggregates, with the columns it feeds."""
    table: str
    alias: str                   # its per-clip relation in the rebuild
    columns: tuple[Aggregate, ...]


@dataclass(frozen=True)
class Lookup:
    """Columns copied from the row of another table that a clips_wide column names by key."""
    table: str
    alias: str
    key: str                            # the clips_wide column holding the key (the table's key has the same name)
    columns: tuple[tuple[str, str], ...]  # (clips_wide column, the table's column)


CAPTIONS = Input("captions", "cap", (
    Aggregate("caption", "arg_max(text, written_at) FILTER (WHERE kind = 'long')", merge="coalesce({new}, {old})"),
    Aggregate("short_caption", "arg_max(text, written_at) FILTER (WHERE kind = 'short')",
              merge="coalesce({new}, {old})"),
    Aggregate("caption_version", "arg_max(version, written_at)"),
    Aggregate("captioned", of="{caption} IS NOT NULL", empty="FALSE"),
))
DECISIONS = Input("decisions", "d", (
    Aggregate("recipe", "arg_max(recipe, decided_at)"),
    Aggregate("kept", "arg_max(kept, decided_at)"),
    Aggregate("reason", "arg_max_null(reason, decided_at)"),  # a kept clip's NULL reason wins too
))
SHARD_MEMBERS = Input("shard_members", "m", (
    Aggregate("shard_id", "min(shard_id)", merge="least(coalesce({old}, {new}), {new})"),
))
TRAIN_SAMPLES = Input("train_samples", "t", (
    Aggregate("trained", "TRUE", merge="TRUE", empty="FALSE"),
))
SCORED = Aggregate("scored", "TRUE", merge="TRUE", empty="FALSE")

SOURCE = Lookup("sources", "src", "source_id", (("uri", "uri"), ("source_text", "text"), ("source_sha256", "sha256")))
SHARD = Lookup("shards", "sh", "shard_id", (("shard_url", "url"),))
LOOKUPS = (SOURCE, SHARD)

FIXED_NAMES = frozenset(
    [a.name for i in (CAPTIONS, DECISIONS, SHARD_MEMBERS, TRAIN_SAMPLES) for a in i.columns] + [SCORED.name]
    + [w for lk in LOOKUPS for w, _ in lk.columns])
"""The derived clips_wide columns that are not scores (``schema.CLIP_COLUMNS`` lists them too)."""


def scores_input(scorers: list[str]) -> Input:
    """The scores pivot: ``scored`` and one column per scorer, its latest value (a batch that
    leaves a scorer out keeps its stored value). ``scorers`` are checked names (``schema.wide_columns``)."""
    return Input("scores", "s", (SCORED, *(Aggregate(n, latest_score(n), merge="coalesce({new}, {old})")
                                          for n in scorers)))


def inputs(scorers: list[str]) -> tuple[Input, ...]:
    """Every aggregated input, in the rebuild's join order."""
    return (scores_input(scorers), CAPTIONS, DECISIONS, SHARD_MEMBERS, TRAIN_SAMPLES)


def input_for(table: str, scorers: Iterable[str] = ()) -> Input | None:
    """The input a write to ``table`` updates (None: the table feeds no aggregate)."""
    return next((i for i in inputs(list(scorers)) if i.table == table), None)


def lookup_for(table: str) -> Lookup | None:
    """The lookup whose columns a write to ``table`` may change (sources, shards)."""
    return next((lk for lk in LOOKUPS if lk.table == table), None)


def per_clip_sql(inp: Input, source: str, where: str = "") -> str:
    """``SELECT clip_id, <aggregates> FROM source [WHERE ...] GROUP BY clip_id``: one row per clip."""
    aggs = "".join(f", {a.agg} AS {a.sql_name}" for a in inp.columns if a.agg is not None)
    return f"SELECT clip_id{aggs} FROM {source}{f' WHERE {where}' if where else ''} GROUP BY clip_id"


def _final(inp: Input, column: Aggregate) -> str:
    """A column of the rebuild's SELECT: the aggregate, or its empty value for a clip without rows."""
    if column.of is not None:
        return column.of.format(**{a.name: f"{inp.alias}.{a.sql_name}" for a in inp.columns if a.agg})
    ref = f"{inp.alias}.{column.sql_name}"
    return ref if column.empty == "NULL" else f"coalesce({ref}, {column.empty})"


def rebuild_sql(scorers: list[str], where: str | None = None) -> str:
    """The SELECT that computes clips_wide rows from the long tables (all clips, or ``where`` on clips)."""
    ins = inputs(scorers)
    only = f" WHERE {where}" if where else ""
    ctes = ",\n        ".join(
        f"{i.alias} AS ({per_clip_sql(i, i.table, 'clip_id IN (SELECT clip_id FROM c)')})" for i in ins)
    key_ref = {a.name: f"{i.alias}.{a.sql_name}" for i in ins for a in i.columns if a.agg}
    cols = [f"{lk.alias}.{ident(col)} AS {w}" for lk in LOOKUPS for w, col in lk.columns]
    cols += [f"{_final(i, a)} AS {a.sql_name}" for i in ins for a in i.columns]
    joins = [f"LEFT JOIN {lk.table} {lk.alias} ON {lk.alias}.{lk.key} = {key_ref.get(lk.key, f'c.{lk.key}')}"
             for lk in LOOKUPS]
    joins[1:1] = [f"LEFT JOIN {i.alias} USING (clip_id)" for i in ins]  # the source's join first, as before
    sep = "\n        "
    return f"""
        WITH c AS (SELECT * FROM clips{only}),
        {ctes}
        SELECT c.*, {', '.join(cols)}
        FROM c
        {sep.join(joins)}
    """


def merged_columns(inp: Input) -> dict[str, str]:
    """Column (as SQL) -> the expression an incremental update sets it to: each aggregate of the
    batch (relation ``b``) merged with the stored value, then the flags derived from them."""
    merged: dict[str, str] = {}
    for a in inp.columns:
        if a.agg is not None:
            merged[a.name] = a.merge.format(new=f"b.{a.sql_name}", old=f"clips_wide.{a.sql_name}")
    for a in inp.columns:
        if a.of is not None:
            merged[a.name] = a.of.format(**merged)
    by_name = {a.name: a for a in inp.columns}
    return {by_name[n].sql_name: expr for n, expr in merged.items()}


def reads_batch(inp: Input) -> bool:
    """Whether the update needs the batch's aggregates (a flag that only becomes TRUE does not)."""
    return any("{new}" in a.merge for a in inp.columns if a.agg is not None)


def new_row_defaults() -> str:
    """``FALSE AS scored, ...``: the non-NULL empty values a new clip's row starts with."""
    return ", ".join(f"{a.empty} AS {a.sql_name}" for i in inputs([]) for a in i.columns if a.empty != "NULL")


def lookup_columns(lk: Lookup, prefix: str) -> str:
    """``src.text AS <prefix>source_text, ...``: the lookup's columns read from its table (as its alias)."""
    return ", ".join(f"{lk.alias}.{ident(col)} AS {prefix}{w}" for w, col in lk.columns)


def lookup_sets(lk: Lookup, source: str | None = None, prefix: str = "") -> str:
    """``uri = src.uri, ...``: the lookup's clips_wide columns set from its table (as its alias), or
    from ``source`` where ``lookup_columns`` named them ``prefix`` + column."""
    if source is None:
        return ", ".join(f"{w} = {lk.alias}.{ident(col)}" for w, col in lk.columns)
    return ", ".join(f"{w} = {source}.{prefix}{w}" for w, _col in lk.columns)


def lookup_differs(lk: Lookup) -> str:
    """True where a clips_wide row's lookup columns differ from its table's row (as its alias)."""
    return " OR ".join(f"clips_wide.{w} IS DISTINCT FROM {lk.alias}.{ident(col)}" for w, col in lk.columns)
