"""Keeping the materialised ``clips_wide`` equal to the long tables, write by write.

``clips_wide`` (one row per clip: its source, latest scores, caption, decision, first shard) is
what every reader scans, at millions of clips; recomputing it per write would cost seconds. So each
upsert updates only the rows of the clips it touched, inside the writer's transaction; the full
recomputation (``rebuild``) is for migrations and repairs, and ``catalog verify --deep`` compares
the two. The rows just written are registered on the connection as ``_rows``.
"""

from __future__ import annotations

from typing import Callable, Iterable

from vidcorpus.catalog.schema import wide_columns, wide_view_sql
from vidcorpus.catalog.sql_names import ident, name_literal, placeholders, table as table_name

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

    Every change is an update of the touched clips' rows: the latest score per scorer, the latest
    caption and decision, the first shard. Runs inside the caller's transaction.
    """
    if table == "sources":
        if changed:
            con.execute(
                "UPDATE clips_wide SET uri = s.uri, source_text = s.text, source_sha256 = s.sha256 FROM sources s "
                "WHERE clips_wide.source_id = s.source_id AND s.source_id IN (SELECT unnest(?))", [changed])
        return
    if table == "shards":
        if changed:
            con.execute("UPDATE clips_wide SET shard_url = s.url FROM shards s WHERE clips_wide.shard_id = s.shard_id "
                        "AND s.shard_id IN (SELECT unnest(?))", [changed])
        return
    update = _CLIP_UPDATES.get(table)
    if update is None:
        return
    ids = [r[0] for r in con.execute("SELECT DISTINCT clip_id FROM _rows WHERE clip_id IS NOT NULL").fetchall()]
    if ids:
        update(con, ids, present)


def _clips(con, ids: list[str], present: set[str]) -> None:
    """New clips get a row (with their source's columns); known clips get their columns updated."""
    clip_cols = [c for c in columns(con, "clips") if c in present]
    where, params = id_filter("clip_id", ids)
    existing = {r[0] for r in con.execute(f"SELECT clip_id FROM clips_wide WHERE {where}", params).fetchall()}
    src = ("SELECT r.*, s.uri AS _uri, s.text AS _text, s.sha256 AS _sha FROM _rows r "
           "LEFT JOIN sources s ON s.source_id = r.source_id")
    cols = ", ".join(f"b.{ident(c)}" for c in clip_cols)
    if len(existing) < len(ids):
        con.execute(f"INSERT INTO clips_wide BY NAME SELECT {cols}, b._uri AS uri, b._text AS source_text, "
                    f"b._sha AS source_sha256, FALSE AS scored, FALSE AS captioned, FALSE AS trained FROM ({src}) b "
                    f"WHERE b.clip_id NOT IN (SELECT unnest(?))", [sorted(existing)])
    if existing:
        sets = ", ".join(f"{ident(c)} = b.{ident(c)}" for c in clip_cols if c != "clip_id")
        ex, ex_params = id_filter("clip_id", sorted(existing))
        con.execute(f"UPDATE clips_wide SET {sets}, uri = b._uri, source_text = b._text, source_sha256 = b._sha "
                    f"FROM ({src}) b WHERE clips_wide.clip_id = b.clip_id AND {ex}", ex_params)


def _scores(con, ids: list[str], present: set[str]) -> None:
    """The latest value of each scorer written, in its own column (added first if new)."""
    names = [r[0] for r in con.execute("SELECT DISTINCT scorer FROM _rows ORDER BY 1").fetchall()]
    sync_columns(con, names)
    cols = wide_columns(names)
    pivot = "".join(f", arg_max(value, written_at) FILTER (WHERE scorer = {name_literal(n)}) AS {ident(n)}"
                    for n in cols)
    sets = "".join(f", {ident(n)} = coalesce(b.{ident(n)}, clips_wide.{ident(n)})" for n in cols)
    _update_from_rows(con, ids, f"scored = TRUE{sets}", f"clip_id{pivot}")


def _captions(con, ids: list[str], present: set[str]) -> None:
    """The latest long and short caption (a batch with only a short one keeps the long one)."""
    _update_from_rows(
        con, ids,
        "caption = coalesce(b.caption, clips_wide.caption), "
        "short_caption = coalesce(b.short_caption, clips_wide.short_caption), caption_version = b.caption_version, "
        "captioned = coalesce(b.caption, clips_wide.caption) IS NOT NULL",
        "clip_id, arg_max(text, written_at) FILTER (WHERE kind = 'long') AS caption, "
        "arg_max(text, written_at) FILTER (WHERE kind = 'short') AS short_caption, "
        "arg_max(version, written_at) AS caption_version")


def _decisions(con, ids: list[str], present: set[str]) -> None:
    _update_from_rows(
        con, ids, "kept = b.kept, reason = b.reason, recipe = b.recipe",
        "clip_id, arg_max(kept, decided_at) AS kept, arg_max_null(reason, decided_at) AS reason, "
        "arg_max(recipe, decided_at) AS recipe")


def _train_samples(con, ids: list[str], present: set[str]) -> None:
    where, params = id_filter("clip_id", ids)
    con.execute(f"UPDATE clips_wide SET trained = TRUE WHERE {where} AND trained IS DISTINCT FROM TRUE", params)


def _shard_members(con, ids: list[str], present: set[str]) -> None:
    _update_from_rows(con, ids, "shard_id = least(coalesce(clips_wide.shard_id, b.shard_id), b.shard_id)",
                      "clip_id, min(shard_id) AS shard_id")
    where, params = id_filter("clip_id", ids)
    con.execute(f"UPDATE clips_wide SET shard_url = s.url FROM shards s WHERE clips_wide.shard_id = s.shard_id "
                f"AND {where} AND clips_wide.shard_url IS DISTINCT FROM s.url", params)


def _update_from_rows(con, ids: list[str], sets: str, per_clip: str) -> None:
    """``UPDATE clips_wide SET sets`` for the touched clips, from ``SELECT per_clip FROM _rows GROUP
    BY clip_id`` (as ``b``: one row per clip of what was just written)."""
    where, params = id_filter("clip_id", ids)
    con.execute(f"UPDATE clips_wide SET {sets} FROM (SELECT {per_clip} FROM _rows GROUP BY clip_id) b "
                f"WHERE clips_wide.clip_id = b.clip_id AND {where}", params)


_CLIP_UPDATES: dict[str, Callable[..., None]] = {
    "clips": _clips, "scores": _scores, "captions": _captions, "decisions": _decisions,
    "train_samples": _train_samples, "shard_members": _shard_members,
}
"""The clip-keyed tables that clips_wide mirrors, and how a write to each updates it."""
