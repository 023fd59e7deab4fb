"""Every number the report draws, computed inside DuckDB over the report's scoped views.

Histograms bucket in SQL (the bins numpy's ``histogram`` would use), retention curves count per
threshold in one scan, galleries are ORDER BY ... LIMIT k (deterministic, as before), box plots get
their quartiles, whiskers and means from SQL with at most ``FLIERS_MAX`` outliers per box (a sample
by hash when there are more), the scatter plot at most ``SCATTER_MAX`` points (likewise). So memory
stays flat however many clips the catalog holds. ``data`` is a ``report_scope.ReportData``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

N_BINS = 30
CURVE_POINTS = 80
SCATTER_MAX = 20_000
FLIERS_MAX = 2_000
TILE_COLUMNS = ("clip_id, source_id, uri, source_text, media_type, width, height, duration_s, kept, reason, recipe, "
                "clip_path, first_frame_path, caption_version, domain")
_OPS = {">=", ">", "<=", "<", "==", "!="}


def _missing(col: str) -> str:
    return f"({col} IS NULL OR isnan({col}))"


def _finite(col: str) -> str:
    return f"({col} IS NOT NULL AND isfinite({col}))"


def predicate_sql(data, pred) -> str:
    """SQL that holds when a clip passes ``pred`` (its missing-score policy applied), as the recipe decides."""
    assert pred.op in _OPS, pred.op
    keeps = "TRUE" if (pred.missing or data.recipe.missing) == "keep" else "FALSE"
    col = data.scores.get(pred.score)
    if col is None:  # no clip of the scope has this score
        return keeps
    op = "=" if pred.op == "==" else pred.op
    return f"(CASE WHEN {_missing(col)} THEN {keeps} ELSE {col} {op} {float(pred.value)!r} END)"


def tile_columns(data) -> str:
    """Columns a gallery tile and a clip page need (the nsfw score blurs a thumbnail)."""
    nsfw = data.scores.get("nsfw")
    return TILE_COLUMNS + (f", {nsfw} AS nsfw" if nsfw else ", NULL::DOUBLE AS nsfw")


def reasons(data) -> list[tuple[str, int]]:
    """Dropped clips per reason, in the order the clips first show them (by clip id)."""
    rows = data.rows("SELECT coalesce(reason, '(none)') AS reason, count(*) AS n, min(clip_id) AS first "
                     "FROM report_clips WHERE kept = FALSE GROUP BY 1 ORDER BY first")
    return [(r["reason"], int(r["n"])) for r in rows]


def kept_count(data) -> int:
    return int(data.one("SELECT count(*) FROM report_clips WHERE kept"))


def domains(data) -> list[str]:
    rows = data.rows("SELECT DISTINCT domain FROM report_clips UNION SELECT DISTINCT "
                     f"{_domain('uri')} FROM report_sources")
    return sorted(r["domain"] for r in rows)


def _domain(col: str) -> str:
    from vidcorpus.report_scope import domain_sql

    return domain_sql(col)


def score_ranges(data) -> dict[str, tuple[int, float | None, float | None]]:
    """(finite values, min, max) per scorer, in one scan."""
    if not data.scores:
        return {}
    parts = []
    for i, (name, col) in enumerate(sorted(data.scores.items())):
        f = _finite(col)
        parts += [f"count(*) FILTER (WHERE {f}) AS n{i}", f"min({col}) FILTER (WHERE {f}) AS lo{i}",
                  f"max({col}) FILTER (WHERE {f}) AS hi{i}"]
    row = data.rows("SELECT " + ", ".join(parts) + " FROM report_clips")[0]
    return {name: (int(row[f"n{i}"]), row[f"lo{i}"], row[f"hi{i}"]) for i, name in enumerate(sorted(data.scores))}


def bin_edges(lo: float | None, hi: float | None, n: int = N_BINS) -> np.ndarray:
    """The histogram's edges: the values' range in ``n`` equal bins (padded when it is one value)."""
    lo, hi = (0.0, 1.0) if lo is None else (float(lo), float(hi))
    if hi <= lo:
        pad = abs(lo) * 0.05 or 0.5
        lo, hi = lo - pad, hi + pad
    return np.linspace(lo, hi, n + 1)


def histogram(data, name: str, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(kept, dropped) counts per bin of ``edges``, bucketed in SQL as ``numpy.histogram`` buckets."""
    col, n = data.scores[name], len(edges) - 1
    lo, hi = float(edges[0]), float(edges[-1])
    step = (hi - lo) / n

    def edge(i: str) -> str:  # np.linspace: lo + i * step, the last edge exactly hi
        return f"(CASE WHEN ({i}) >= {n} THEN {hi!r} ELSE {lo!r} + ({i}) * {step!r} END)"

    raw = f"least(greatest(floor(({col} - {lo!r}) * {n / (hi - lo)!r})::BIGINT, 0), {n - 1})"
    sql = f"""
        SELECT b - (x < {edge('b')})::INT + (x >= {edge('b + 1')} AND b < {n - 1})::INT AS bin,
               count(*) FILTER (WHERE kept) AS k, count(*) FILTER (WHERE kept IS NOT TRUE) AS d
        FROM (SELECT {col} AS x, kept, {raw} AS b FROM report_clips
              WHERE {_finite(col)} AND {col} BETWEEN {lo!r} AND {hi!r})
        GROUP BY 1"""
    kept, dropped = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    for r in data.rows(sql):
        kept[r["bin"]], dropped[r["bin"]] = r["k"], r["d"]
    return kept, dropped


def retention_curve(data, index: int, lo: float | None, hi: float | None,
                    points: int = CURVE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Clips the whole recipe keeps as predicate ``index``'s threshold sweeps its score's range.

    The sweep covers the values clips have (a threshold far outside them would flatten the curve).
    """
    preds = data.recipe.predicates
    pred = preds[index]
    if lo is None:
        lo, hi = pred.value - 1, pred.value + 1
    pad = (hi - lo) * 0.05 or 0.5
    xs = np.linspace(lo - pad, hi + pad, points)
    others = " AND ".join(predicate_sql(data, p) for j, p in enumerate(preds) if j != index) or "TRUE"
    col = data.scores.get(pred.score)
    if col is None:  # every clip misses the score: the missing policy decides at every threshold
        n = int(data.one(f"SELECT count(*) FROM report_clips WHERE {others}"))
        return xs, np.full(points, n if predicate_sql(data, pred) == "TRUE" else 0, dtype=float)
    keeps = "TRUE" if (pred.missing or data.recipe.missing) == "keep" else "FALSE"
    op = "=" if pred.op == "==" else pred.op
    counts = ", ".join(f"count(*) FILTER (WHERE CASE WHEN miss THEN {keeps} ELSE x {op} ? END) AS c{i}"
                       for i in range(points))
    row = data.con.execute(f"SELECT {counts} FROM (SELECT {col} AS x, {_missing(col)} AS miss FROM report_clips "
                           f"WHERE {others})", [float(t) for t in xs]).fetchall()[0]
    return xs, np.array(row, dtype=float)


def near_threshold(data, pred, kept: bool, k: int) -> list[dict]:
    """The ``k`` clips nearest ``pred``'s threshold that were kept (or dropped by it), nearest first."""
    col = data.scores.get(pred.score)
    if col is None:
        return []
    cond = "kept" if kept else "reason = ?"
    return data.rows(f"SELECT {tile_columns(data)}, {col} AS x FROM report_clips WHERE {cond} AND {_finite(col)} "
                     f"ORDER BY abs({col} - ?), clip_id LIMIT {int(k)}",
                     ([] if kept else [pred.failure()]) + [float(pred.value)])


def decile_clips(data, name: str, n: int) -> list[tuple[int, dict]]:
    """The median clip of each of (up to) ten equal parts of the clips ordered by score (``np.array_split``)."""
    col = data.scores[name]
    parts = min(10, n)
    if parts == 0:
        return []
    size, extra = divmod(n, parts)
    starts = [d * size + min(d, extra) for d in range(parts)]
    picks = {s + (size + (d < extra)) // 2: d + 1 for d, s in enumerate(starts)}
    rows = data.rows(f"SELECT * FROM (SELECT {tile_columns(data)}, {col} AS x, "
                     f"row_number() OVER (ORDER BY {col}, clip_id) - 1 AS rank FROM report_clips "
                     f"WHERE {_finite(col)}) WHERE rank IN (SELECT unnest(?)) ORDER BY rank", [sorted(picks)])
    return [(picks[r["rank"]], r) for r in rows]


def scatter_points(data, a: str, b: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(a, b, kept, clips with both): every clip with both scores, or ``SCATTER_MAX`` of them by hash."""
    ca, cb = data.scores[a], data.scores[b]
    where = f"{_finite(ca)} AND {_finite(cb)}"
    n = int(data.one(f"SELECT count(*) FROM report_clips WHERE {where}"))
    order = "clip_id" if n <= SCATTER_MAX else f"hash(clip_id), clip_id LIMIT {SCATTER_MAX}"
    rows = data.con.execute(f"SELECT {ca}, {cb}, coalesce(kept, FALSE) FROM report_clips WHERE {where} "
                            f"ORDER BY {order}").fetchall()
    arr = np.array(rows, dtype=float).reshape(-1, 3)
    return arr[:, 0], arr[:, 1], arr[:, 2].astype(bool), n


def box_stats(data, source: str) -> dict[str, dict]:
    """matplotlib box statistics (``cbook.boxplot_stats``) per group of ``source``, computed in SQL.

    ``source`` is a relation with columns ``grp`` and ``v``; fliers are capped at ``FLIERS_MAX`` a box.
    """
    stats = data.rows(f"""
        WITH q AS (SELECT grp, count(*) AS n, avg(v) AS mean, quantile_cont(v, [0.25, 0.5, 0.75]) AS qs,
                          min(v) AS lo, max(v) AS hi FROM ({source}) GROUP BY grp),
        w AS (SELECT grp, n, mean, qs[1] AS q1, qs[2] AS med, qs[3] AS q3, lo, hi,
                     qs[1] - 1.5 * (qs[3] - qs[1]) AS lim_lo, qs[3] + 1.5 * (qs[3] - qs[1]) AS lim_hi FROM q)
        SELECT w.grp, any_value(n) AS n, any_value(mean) AS mean, any_value(q1) AS q1, any_value(med) AS med,
               any_value(q3) AS q3, any_value(lo) AS lo, any_value(hi) AS hi,
               min(s.v) FILTER (WHERE s.v >= lim_lo) AS whislo, max(s.v) FILTER (WHERE s.v <= lim_hi) AS whishi
        FROM w JOIN ({source}) s USING (grp) GROUP BY w.grp ORDER BY w.grp""")
    for st in stats:
        st["whislo"] = st["q1"] if st["whislo"] is None else min(st["whislo"], st["q1"])
        st["whishi"] = st["q3"] if st["whishi"] is None else max(st["whishi"], st["q3"])
        st["fliers"] = np.array([r[0] for r in data.con.execute(
            f"SELECT v FROM ({source}) WHERE grp = ? AND (v < ? OR v > ?) ORDER BY hash(v), v LIMIT {FLIERS_MAX}",
            [st["grp"], st["whislo"], st["whishi"]]).fetchall()], dtype=float)
        st["fliers"].sort()  # drawn in value order (the catalog's row order before)
    return {st["grp"]: st for st in stats}


def caption_words_sql(has_decode: bool) -> str:
    """One row per caption of the scope: version, kind, words, degenerate flag (NULL: not recorded), decode."""
    meta = "meta_json"
    flag = (f"CASE WHEN json_valid({meta}) AND json_type({meta}) = 'OBJECT' AND json_exists({meta}, '$.degenerate') "
            f"THEN CASE json_type({meta}, '$.degenerate') WHEN 'BOOLEAN' THEN json_extract({meta}, '$.degenerate')::BOOLEAN "
            f"WHEN 'NULL' THEN FALSE WHEN 'VARCHAR' THEN json_extract_string({meta}, '$.degenerate') <> '' "
            f"WHEN 'ARRAY' THEN json_array_length({meta}, '$.degenerate') > 0 "
            f"WHEN 'OBJECT' THEN json_extract({meta}, '$.degenerate')::VARCHAR <> '{{}}' "
            f"ELSE json_extract({meta}, '$.degenerate')::DOUBLE <> 0 END END")
    decode = "decode" if has_decode else "NULL::VARCHAR"
    return (f"SELECT version, kind, len(regexp_extract_all(coalesce(text, ''), '\\S+')) AS words, {flag} AS degenerate, "
            f"{decode} AS decode FROM captions WHERE clip_id IN (SELECT clip_id FROM report_clips)")


def caption_stats(data) -> tuple[list[dict], dict[str, dict]]:
    """(per caption version and kind: count, words mean/median/max, degenerate flags, decode paths; box stats)."""
    has_decode = bool(data.one("SELECT count(*) FROM information_schema.columns WHERE table_name = 'captions' "
                               "AND column_name = 'decode'"))
    src = caption_words_sql(has_decode)
    data.con.execute(f"CREATE OR REPLACE TEMP VIEW report_caption_words AS {src}")
    rows = data.rows("""
        SELECT version, kind, count(*) AS n, avg(words) AS mean_words, median(words) AS median_words,
               max(words) AS max_words, count(degenerate) AS flagged,
               count(*) FILTER (WHERE degenerate) AS degenerate
        FROM report_caption_words GROUP BY version, kind ORDER BY version, kind""")
    decodes = data.rows("SELECT version, kind, coalesce(decode, 'not generated') AS d, count(*) AS n "
                        "FROM report_caption_words GROUP BY ALL ORDER BY d")
    for r in rows:
        r["decode"] = ", ".join(f"{d['d']} {d['n']}" for d in decodes if (d["version"], d["kind"]) == (r["version"], r["kind"]))
        r["degenerate"] = r["degenerate"] if r["flagged"] else None
    boxes = box_stats(data, "SELECT version || '/' || kind AS grp, words::DOUBLE AS v FROM report_caption_words")
    return rows, boxes


def caption_qa(data) -> dict[str, dict]:
    """Box statistics of caption-QA scores (latest per clip, score and version) per score and version."""
    src = ("SELECT scorer || ' ' || version AS grp, v FROM (SELECT clip_id, scorer, version, "
           "arg_max(value, written_at) AS v FROM scores WHERE starts_with(scorer, 'caption_') "
           "AND clip_id IN (SELECT clip_id FROM report_clips) GROUP BY ALL) WHERE v IS NOT NULL")
    return box_stats(data, src)


def failure_groups(data) -> list[dict]:
    """Failures per stage and error class, most first: count, max attempts, the first three examples."""
    return data.rows("""
        SELECT stage, error_class, count(*) AS n, max(coalesce(nullif(attempts, 0), 1)) AS max_attempts,
               list({'uri': uri, 'item_id': item_id, 'error': error} ORDER BY item_id)[1:3] AS examples
        FROM report_failures GROUP BY stage, error_class ORDER BY n DESC, stage, error_class""")


def clip_rows(data) -> list[dict[str, Any]]:
    """Every clip of the scope with all its caption versions (the report lists them only when there are few)."""
    return data.rows(f"""
        SELECT * REPLACE (coalesce(v.versions, '') AS caption_version) FROM (SELECT {tile_columns(data)} FROM report_clips)
        LEFT JOIN (SELECT clip_id, string_agg(DISTINCT version, ', ' ORDER BY version) AS versions FROM captions
                   WHERE clip_id IN (SELECT clip_id FROM report_clips) GROUP BY clip_id) v USING (clip_id)
        ORDER BY clip_id""")
