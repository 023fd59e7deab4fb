"""The SQL behind the grid and the clip page: every value a parameter, every name checked.

The grid reads the materialised ``clips_wide`` (one row per clip, a column per scorer): a page is a
top-N over it (``ordered_ids``, linear in the clips: ~20 ms of CPU at 1 M, see docs/benchmarks.md)
and a lookup of the page's rows. The server answers the standard filters from memory instead
(``grid_index``, equal to these queries) and comes here for a free WHERE or an explicit clip set;
the clip page's reads are index probes (migration 15). Column
names (sort keys, score sliders) are accepted only when they are clips_wide's own columns; values
always travel as parameters; a user's WHERE clause has passed ``catalog/safe_sql.check_predicate``
before it gets here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import duckdb

from vidcorpus.catalog.schema import ACTIVE_RECIPE_SQL, CLIP_COLUMNS
from vidcorpus.catalog.sql_names import ident
from vidcorpus.recipe_model import Recipe, recipe_from_text

GRID_COLUMNS = ("clip_id", "source_id", "media_type", "duration_s", "width", "height", "kept", "reason", "recipe",
                "caption", "short_caption", "clip_path", "first_frame_path", "shard_id", "uri")
SORTABLE_CLIP_COLUMNS = ("clip_id", "duration_s", "width", "height", "start_s", "n_frames", "fps")
MAX_PER_PAGE = 200


def tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}


def clips_wide_columns(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The columns clips_wide has now (``catalog/schema.wide_columns`` decides which scorers get one)."""
    return [r[0] for r in con.execute("SELECT column_name FROM information_schema.columns "
                                      "WHERE table_name = 'clips_wide' ORDER BY ordinal_position").fetchall()]


def score_columns(con: duckdb.DuckDBPyConnection) -> list[str]:
    """clips_wide's score columns (one per scorer)."""
    return [c for c in clips_wide_columns(con) if c not in CLIP_COLUMNS]


@dataclass
class GridQuery:
    """What the grid shows: filters, order and page (from the query string, checked by ``from_params``)."""

    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    source: str = ""
    decision: str = ""          # kept | dropped | undecided | "" (all), under each clip's latest decision
    reason: str = ""
    where: str = ""             # a checked predicate, parenthesised
    sort: str = "clip_id"
    descending: bool = False
    page: int = 1
    per_page: int = 48
    clip_ids: list[str] | None = None  # an explicit set (sampling, recipe comparison)

    def sql(self, scores: list[str]) -> tuple[str, list]:
        """The WHERE clause and its parameters."""
        parts, params = ["TRUE"], []
        for name, (lo, hi) in self.ranges.items():
            if name not in scores and name not in SORTABLE_CLIP_COLUMNS:
                raise ValueError(f"no score named {name!r}")
            if lo is not None:
                parts.append(f"{ident(name)} >= ?")
                params.append(lo)
            if hi is not None:
                parts.append(f"{ident(name)} <= ?")
                params.append(hi)
        if self.source:
            parts.append("source_id = ?")
            params.append(self.source)
        if self.decision == "kept":
            parts.append("kept")
        elif self.decision == "dropped":
            parts.append("NOT kept")
        elif self.decision == "undecided":
            parts.append("kept IS NULL")
        elif self.decision:
            raise ValueError(f"decision is kept, dropped or undecided, not {self.decision!r}")
        if self.reason:
            parts.append("reason = ?")
            params.append(self.reason)
        if self.clip_ids is not None:
            parts.append("clip_id IN (SELECT unnest(?::VARCHAR[]))")
            params.append(self.clip_ids)
        if self.where:
            parts.append(self.where)
        return " AND ".join(parts), params

    def order(self, scores: list[str]) -> str:
        if self.sort not in scores and self.sort not in SORTABLE_CLIP_COLUMNS:
            raise ValueError(f"cannot sort by {self.sort!r}")
        return f'{ident(self.sort)} {"DESC" if self.descending else "ASC"} NULLS LAST, clip_id'


COUNT_CAP = 10_000
"""Counting every match is a full scan per page; beyond this many the grid says "10000+"."""


def grid(con: duckdb.DuckDBPyConnection, q: GridQuery, scores: list[str]) -> tuple[list[dict], int]:
    """One page of clips and how many match (at most COUNT_CAP + 1: more means "over COUNT_CAP")."""
    where, params = q.sql(scores)
    limit = max(1, min(MAX_PER_PAGE, q.per_page))
    offset = (max(1, q.page) - 1) * limit
    return rows_by_id(con, ordered_ids(con, q, scores, limit, offset), scores), capped_count(con, where, params)


def ordered_ids(con: duckdb.DuckDBPyConnection, q: GridQuery, scores: list[str], limit: int, offset: int) -> list[str]:
    """Ids of the matching clips in the grid's order, ``offset`` to ``offset + limit``.

    Two passes: the sort key of the last wanted row (a top-N over the key alone), then the ids of
    the rows at or before it (same order, ties broken by id). Carrying the id through a top-N over
    every row is what costs (35 ms of CPU at 1 M clips against 11 for the key alone); past the
    bound, the second pass reads the id of only the rows it keeps."""
    where, params = q.sql(scores)
    order = q.order(scores)  # checks the sort key
    key = ident(q.sort)
    bound = [] if q.sort == "clip_id" else con.execute(  # (sorted by id: one pass)
        f"SELECT {key} FROM clips_wide WHERE {where} ORDER BY {key} {'DESC' if q.descending else 'ASC'} "
        "NULLS LAST LIMIT 1 OFFSET ?", [*params, offset + limit - 1]).fetchall()
    if bound and bound[0][0] is not None:  # else fewer rows match, or the bound row has no key: no bound
        where, params = f"{where} AND {key} {'>=' if q.descending else '<='} ?", [*params, bound[0][0]]
    return [r[0] for r in con.execute(
        f"SELECT clip_id FROM clips_wide WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?",
        [*params, limit, offset]).fetchall()]


def rows_by_id(con: duckdb.DuckDBPyConnection, ids: list[str], scores: list[str]) -> list[dict]:
    """The grid's columns of these clips, in this order."""
    if not ids:
        return []
    cols = ", ".join(ident(c) for c in (*GRID_COLUMNS, *scores))
    rel = con.execute(f"SELECT {cols} FROM clips_wide WHERE clip_id IN (SELECT unnest(?::VARCHAR[]))", [ids])
    names = [d[0] for d in rel.description]
    by_id = {r[0]: dict(zip(names, r)) for r in rel.fetchall()}
    return [by_id[i] for i in ids if i in by_id]


def capped_count(con: duckdb.DuckDBPyConnection, where: str, params: list) -> int:
    """How many clips match, counted up to COUNT_CAP + 1."""
    return con.execute(f"SELECT count(*) FROM (SELECT 1 FROM clips_wide WHERE {where} LIMIT ?)",
                       [*params, COUNT_CAP + 1]).fetchall()[0][0]


def facets(con: duckdb.DuckDBPyConnection, scores: list[str]) -> dict:
    """Choices for the filter bar: sources, drop reasons, recipes, each score's range."""
    out = {"sources": [r[0] for r in con.execute(
        "SELECT source_id FROM clips_wide GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 200").fetchall()],
        "reasons": [r[0] for r in con.execute(
            "SELECT reason FROM clips_wide WHERE reason IS NOT NULL GROUP BY 1 ORDER BY count(*) DESC LIMIT 100"
        ).fetchall()],
        "recipes": [r[0] for r in con.execute(
            "SELECT recipe FROM decisions GROUP BY 1 ORDER BY max(decided_at) DESC").fetchall()]}
    if scores:
        agg = ", ".join(f"min({ident(s)}), max({ident(s)})" for s in scores)
        row = con.execute(f"SELECT {agg} FROM clips_wide").fetchall()[0]
        out["ranges"] = {s: (row[2 * i], row[2 * i + 1]) for i, s in enumerate(scores)}
    else:
        out["ranges"] = {}
    return out


def recorded_recipe(con: duckdb.DuckDBPyConnection) -> Recipe | None:
    """The recipe in force, from the catalog's own record of it (None before any decision), read on
    the server's connection; a job with a ``Catalog`` asks ``catalog/corpus_state.active_recipe``."""
    have = tables(con)
    if "recipes" not in have:
        return None
    active = ACTIVE_RECIPE_SQL if "recipe_history" in have else "(SELECT arg_max(recipe, decided_at) FROM decisions)"
    rows = con.execute(f"SELECT yaml FROM recipes WHERE recipe = {active}").fetchall()
    return recipe_from_text(rows[0][0]) if rows else None


def recipe_by_id(con: duckdb.DuckDBPyConnection, recipe_id: str) -> Recipe | None:
    """The recipe stored under exactly this id (``corpus_state.stored_recipe`` also takes a name)."""
    rows = con.execute("SELECT yaml FROM recipes WHERE recipe = ?", [recipe_id]).fetchall()
    return recipe_from_text(rows[0][0]) if rows else None


def _dicts(rel) -> list[dict]:
    names = [d[0] for d in rel.description]
    return [dict(zip(names, r)) for r in rel.fetchall()]


def clip_detail(con: duckdb.DuckDBPyConnection, clip_id: str, have: set[str] | None = None,
                recipe: Recipe | None | bool = False, scores: list[str] | None = None,
                timeline_of: Callable[[str], dict] | None = None, labels_of: Callable[[str], list] | None = None,
                shard_of: Callable[[str | None], list] | None = None,
                decisions_of: Callable[[str], list] | None = None) -> dict | None:
    """Everything the clip page shows; None when the catalog has no such clip. ``have`` (table
    names), ``recipe`` (the one in force) and ``scores`` (score columns) are read when not given;
    ``timeline_of(source_id)``, ``labels_of(clip_id)``, ``shard_of(shard_id)`` and ``decisions_of(clip_id)``
    may answer from memory (``timeline``, ``clip_labels``, ``clip_shard``, ``clip_decisions`` else)."""
    rows = _dicts(con.execute("SELECT * FROM clips_wide WHERE clip_id = ?", [clip_id]))
    if not rows:
        return None
    clip = rows[0]
    have = tables(con) if have is None else have
    recipe = recorded_recipe(con) if recipe is False else recipe
    thresholds: dict[str, list[str]] = {}
    for p in recipe.predicates if recipe else []:
        thresholds.setdefault(p.score, []).append(str(p))
    # the latest value of every score is in the clip's clips_wide row (a primary-key lookup); the
    # long scores table would be a scan of every score row at millions of clips
    scores = [{"scorer": name, "value": clip[name]} for name in (score_columns(con) if scores is None else scores)
              if clip.get(name) is not None]
    for s in scores:
        s["thresholds"] = thresholds.get(s["scorer"], [])
        preds = [p for p in recipe.predicates if p.score == s["scorer"]] if recipe else []
        s["passes"] = all(p.holds(float(s["value"])) for p in preds) if preds else None
    # the latest long and short caption are in the wide row too (the captions table: a scan)
    captions = [{"version": clip.get("caption_version"), "kind": kind, "text": clip.get(col)}
                for kind, col in (("long", "caption"), ("short", "short_caption")) if clip.get(col)]
    decisions = decisions_of(clip_id) if decisions_of else clip_decisions(con, clip_id)
    labels = labels_of(clip_id) if labels_of else clip_labels(con, clip_id, have)
    shards = shard_of(clip["shard_id"]) if shard_of else clip_shard(con, clip["shard_id"])
    embedded = clip_embeddings(con, clip_id, have)
    return {"clip": clip, "scores": scores, "captions": captions, "decisions": decisions, "labels": labels,
            "shards": shards, "recipe": recipe.id if recipe else None,
            "duplicates": duplicates(con, clip_id, have, embedded),
            "embedding_model": embedded[0][0] if embedded else None,  # (the neighbours' model: Neighbours.index_of)
            "timeline": (timeline_of or (lambda source: timeline(con, source, have)))(clip["source_id"])}


def clip_decisions(con: duckdb.DuckDBPyConnection, clip_id: str) -> list[dict]:
    """The clip's decision under each recipe version, oldest first (``serve/decision_history.py``
    keeps them in memory)."""
    return _dicts(con.execute("SELECT recipe, kept, reason, decided_at FROM decisions WHERE clip_id = ? "
                              "ORDER BY decided_at, recipe", [clip_id]))


def clip_labels(con: duckdb.DuckDBPyConnection, clip_id: str, have: set[str]) -> list[dict]:
    """The clip's labels, newest first (``serve/clip_rows.py`` keeps them in memory while few)."""
    return _dicts(con.execute("SELECT label, reason, who, labeled_at, origin FROM labels WHERE clip_id = ? "
                              "ORDER BY labeled_at DESC, label_id DESC", [clip_id])) if "labels" in have else []


def clip_shard(con: duckdb.DuckDBPyConnection, shard_id: str | None) -> list[dict]:
    """The shard holding the clip (clips_wide names the first one), by its key."""
    if not shard_id:
        return []
    return _dicts(con.execute("SELECT shard_id, url, sha256 FROM shards WHERE shard_id = ?", [shard_id]))


def clip_embeddings(con: duckdb.DuckDBPyConnection, clip_id: str, have: set[str]) -> list[tuple[str, bool]]:
    """(model, has a content hash) of each of the clip's embeddings: one index probe answers both the
    duplicates' question and the neighbours' (which model to rank in)."""
    if "embeddings" not in have:
        return []
    return [(r[0], bool(r[1])) for r in con.execute(
        "SELECT model, content_sha256 IS NOT NULL FROM embeddings WHERE clip_id = ?", [clip_id]).fetchall()]


def duplicates(con: duckdb.DuckDBPyConnection, clip_id: str, have: set[str],
               embedded: list[tuple[str, bool]] | None = None) -> list[dict]:
    """Clips with the same content (sha256 of the clip file), and the clip's near-duplicate score.
    ``embedded``: the clip's ``clip_embeddings`` when already probed."""
    if "embeddings" not in have:
        return []
    # most clips have no embedding, or none shared: an index probe answers that (the join below
    # costs ~2 ms of CPU at 1 M clips even when it finds nothing)
    if not any(has_hash for _, has_hash in (clip_embeddings(con, clip_id, have) if embedded is None else embedded)):
        return []
    return _dicts(con.execute(
        "SELECT DISTINCT e2.clip_id, w.kept, w.reason FROM embeddings e1 JOIN embeddings e2 "
        "ON e1.content_sha256 = e2.content_sha256 AND e2.clip_id <> e1.clip_id "
        "LEFT JOIN clips_wide w ON w.clip_id = e2.clip_id WHERE e1.clip_id = ? ORDER BY 1 LIMIT 50", [clip_id]))


TIMELINE_CLIPS_SQL = ("SELECT clip_id, first_frame, last_frame, kept, reason FROM clips_wide WHERE source_id = ? "
                      "ORDER BY first_frame, clip_id")
TIMELINE_SEGMENTS_SQL = ("SELECT first_frame, last_frame, reason, detector FROM dropped_segments WHERE source_id = ? "
                         "ORDER BY first_frame, last_frame, reason, detector")
TIMELINE_SOURCE_SQL = "SELECT source_id, uri, n_frames, fps, duration_s FROM sources WHERE source_id = ?"


def timeline(con: duckdb.DuckDBPyConnection, source_id: str, have: set[str]) -> dict:
    """Where every frame of the source went: clips (kept or dropped, and why) and dropped segments."""
    src = _dicts(con.execute(TIMELINE_SOURCE_SQL, [source_id]))
    clips = _dicts(con.execute(TIMELINE_CLIPS_SQL, [source_id]))
    segments = _dicts(con.execute(TIMELINE_SEGMENTS_SQL, [source_id])) if "dropped_segments" in have else []
    return timeline_of_rows(source_id, src[0] if src else None, clips, segments)


def timeline_of_rows(source_id: str, src: dict | None, clips: list[dict], segments: list[dict]) -> dict:
    """The timeline from its rows: the source's (or None), its clips and its dropped segments, each in
    ``TIMELINE_*_SQL``'s order (``serve/timelines.py`` gives the same rows from memory)."""
    total = (src["n_frames"] if src and src["n_frames"] else None) or max(
        [c["last_frame"] + 1 for c in clips if c["last_frame"] is not None] +
        [s["last_frame"] + 1 for s in segments] + [1])
    spans = []
    for c in clips:
        if c["first_frame"] is None:
            continue
        kind = "kept" if c["kept"] else ("dropped" if c["kept"] is False else "undecided")
        spans.append({"kind": kind, "first": c["first_frame"], "last": c["last_frame"], "clip_id": c["clip_id"],
                      "label": c["reason"] or kind})
    for s in segments:
        spans.append({"kind": "segment", "first": s["first_frame"], "last": s["last_frame"], "clip_id": None,
                      "label": f"{s['reason']} ({s['detector']})"})
    for s in spans:
        s["left"] = 100.0 * s["first"] / total
        s["width"] = max(0.3, 100.0 * (s["last"] - s["first"] + 1) / total)
    return {"source": src if src else {"source_id": source_id}, "frames": total,
            "spans": sorted(spans, key=lambda s: s["first"])}
