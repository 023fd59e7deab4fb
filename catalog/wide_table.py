"""Keeping the materialised ``clips_wide`` equal to the long tables, write by write.

``clips_wide`` (one row per clip: its source, latest scores, caption, decision, first shard) is
what every reader scans, at millions of clips; recomputing it per write would cost seconds. So each
upsert updates only the rows of the clips it touched, inside the writer's transaction; the full
recomputation (``rebuild``) is for migrations and repairs, and ``catalog verify --deep`` compares
the two. The rows just written are registered on the connection as ``_rows``.
"""

from __future__ import annotations

from typing import Iterable

from vidcorpus.catalog import wide_spec
from vidcorpus.catalog.schema import wide_columns, wide_view_sql
from vidcorpus.catalog.sql_names import ident, placeholders, table as table_name

INLINE_IDS = 1024  # up to this many ids per statement are listed as ? parameters so DuckDB probes the key index


def columns(con, table: str) -> list[str]:
    """A table's column names, in order."""
    return [r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
        [table]).fetchall()]


def sync_columns(con, scorers: Iterable[str] | None = None) -> None:
    """Add clips_wide columns for clip columns added by later migrations and for new scorers."""
    have = set(columns(con, "clips_wide"))
    types = dict(con.execute("SELECT column_name, data_type FROM information_schema.columns "
                             "WHERE table_name = 'clips'").fetchall())
    for name, typ in types.items():
        if name not in have:
            con.execute(f"ALTER TABLE clips_wide ADD COLUMN {ident(name)} {typ}")
            have.add(name)
    if scorers is None:
        scorers = [r[0] for r in con.execute("SELECT DISTINCT scorer FROM scores ORDER BY 1").fetchall()]
    for name in wide_columns(sorted(set(scorers))):
        if name not in have:
            con.execute(f"ALTER TABLE clips_wide ADD COLUMN {ident(name)} DOUBLE")
            have.add(name)


def rebuild(con, clip_ids: Iterable[str] | None = None) -> int:
    """Recompute clips_wide (all of it, or some clips) from the long tables; returns rows written."""
    scorers = [r[0] for r in con.execute("SELECT DISTINCT scorer FROM scores ORDER BY 1").fetchall()]
    sync_columns(con, scorers)
    if clip_ids is None:
        con.execute("DELETE FROM clips_wide")
        con.execute("INSERT INTO clips_wide BY NAME " + wide_view_sql(scorers))
        return con.execute("SELECT count(*) FROM clips_wide").fetchall()[0][0]
    ids = sorted(set(clip_ids))
    if not ids:
        return 0
    con.execute("DELETE FROM clips_wide WHERE clip_id IN (SELECT unnest(?))", [ids])
    if len(ids) <= INLINE_IDS:
        pred, params = f"clip_id IN ({placeholders(len(ids))})", ids
    else:
        pred, params = "clip_id IN (SELECT unnest(?))", [ids]
    con.execute("INSERT INTO clips_wide BY NAME " + wide_view_sql(scorers, pred), params)
    return len(ids)


def id_filter(column: str, ids: list[str]) -> tuple[str, list]:
    """A predicate on clips_wide.column for these ids and its parameters: a ``?`` list (index probe)
    when few, else a semi-join on ``_rows``."""
    col = ident(column)
    if len(ids) <= INLINE_IDS:
        return f"clips_wide.{col} IN ({placeholders(len(ids))})", list(ids)
    return f"clips_wide.{col} IN (SELECT {col} FROM _rows)", []


def changed_keys(con, table: str, key: str, cols: list[str], present: set[str]) -> list[str]:
    """Keys of rows in _rows that already exist in ``table`` with different values in ``cols``."""
    cols = [c for c in cols if c in present]
    if not cols:
        return []
    differs = " OR ".join(f"t.{ident(c)} IS DISTINCT FROM r.{ident(c)}" for c in cols)
    k = ident(key)
    return [r[0] for r in con.execute(
        f"SELECT r.{k} FROM _rows r JOIN {table_name(table)} t ON t.{k} = r.{k} WHERE {differs}").fetchall()]


def maintain(con, table: str, present: set[str], changed: list[str]) -> None:
    """Bring clips_wide up to date with the rows just upserted into ``table`` (registered as _rows).

    Every change is an update of the touched clips' rows, merged as ``catalog/wide_spec.py``
    defines each column. Runs inside the caller's transaction.
    """
    lookup = wide_spec.lookup_for(table)
    if lookup is not None:
        if changed:
            k, alias = lookup.key, lookup.alias
            con.execute(f"UPDATE clips_wide SET {wide_spec.lookup_sets(lookup)} FROM {lookup.table} {alias} "
                        f"WHERE clips_wide.{k} = {alias}.{k} AND {alias}.{k} IN (SELECT unnest(?))", [changed])
        return
    if table != "clips" and wide_spec.input_for(table) is None:
        return
    ids = [r[0] for r in con.execute("SELECT DISTINCT clip_id FROM _rows WHERE clip_id IS NOT NULL").fetchall()]
    if not ids:
        return
    if table == "clips":
        _clips(con, ids, present)
        return
    scorers: list[str] = []
    if table == "scores":
        names = [r[0] for r in con.execute("SELECT DISTINCT scorer FROM _rows ORDER BY 1").fetchall()]
        sync_columns(con, names)
        scorers = wide_columns(names)
    inp = wide_spec.input_for(table, scorers)
    _update_aggregates(con, ids, inp)
    for lookup in wide_spec.LOOKUPS:  # a key the update may have changed (the first shard): its columns follow
        if any(a.name == lookup.key for a in inp.columns):
            _refresh_lookup(con, ids, lookup)


def _clips(con, ids: list[str], present: set[str]) -> None:
    """New clips get a row (with their source's columns); known clips get their columns updated."""
    clip_cols = [c for c in columns(con, "clips") if c in present]
    where, params = id_filter("clip_id", ids)
    existing = {r[0] for r in con.execute(f"SELECT clip_id FROM clips_wide WHERE {where}", params).fetchall()}
    lookup = wide_spec.SOURCE
    src = (f"SELECT r.*, {wide_spec.lookup_columns(lookup, prefix='_')} FROM _rows r "
           f"LEFT JOIN {lookup.table} {lookup.alias} ON {lookup.alias}.{lookup.key} = r.{lookup.key}")
    cols = ", ".join(f"b.{ident(c)}" for c in clip_cols)
    if len(existing) < len(ids):
        from_src = ", ".join(f"b._{w} AS {w}" for w, _col in lookup.columns)
        con.execute(f"INSERT INTO clips_wide BY NAME SELECT {cols}, {from_src}, {wide_spec.new_row_defaults()} "
                    f"FROM ({src}) b WHERE b.clip_id NOT IN (SELECT unnest(?))", [sorted(existing)])
    if existing:
        sets = ", ".join(f"{ident(c)} = b.{ident(c)}" for c in clip_cols if c != "clip_id")
        ex, ex_params = id_filter("clip_id", sorted(existing))
        con.execute(f"UPDATE clips_wide SET {sets}, {wide_spec.lookup_sets(lookup, 'b', prefix='_')} "
                    f"FROM ({src}) b WHERE clips_wide.clip_id = b.clip_id AND {ex}", ex_params)


def _update_aggregates(con, ids: list[str], inp: wide_spec.Input) -> None:
    """``UPDATE clips_wide SET <merged columns>`` for the touched clips, from the input's per-clip
    aggregates over ``_rows`` (as ``b``: one row per clip of what was just written). An update that
    does not read ``b`` (a flag that only becomes TRUE) skips the aggregation and the rows already set."""
    merged = wide_spec.merged_columns(inp)
    sets = ", ".join(f"{col} = {expr}" for col, expr in merged.items())
    where, params = id_filter("clip_id", ids)
    if not wide_spec.reads_batch(inp):
        differs = " OR ".join(f"{col} IS DISTINCT FROM {expr}" for col, expr in merged.items())
        con.execute(f"UPDATE clips_wide SET {sets} WHERE {where} AND ({differs})", params)
        return
    con.execute(f"UPDATE clips_wide SET {sets} FROM ({wide_spec.per_clip_sql(inp, '_rows')}) b "
                f"WHERE clips_wide.clip_id = b.clip_id AND {where}", params)


def _refresh_lookup(con, ids: list[str], lookup: wide_spec.Lookup) -> None:
    """The lookup's columns of the touched clips, read again by their (possibly new) key."""
    where, params = id_filter("clip_id", ids)
    k, alias = lookup.key, lookup.alias
    con.execute(f"UPDATE clips_wide SET {wide_spec.lookup_sets(lookup)} FROM {lookup.table} {alias} "
                f"WHERE clips_wide.{k} = {alias}.{k} AND {where} AND ({wide_spec.lookup_differs(lookup)})", params)
