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

from vidcorpus.jobs.report.scope import domain_sql

N_BINS = 30
CURVE_POINTS = 80
SCATTER_MAX = 20_000
FLIERS_MAX = 2_000
TILE_COLUMNS = ("clip_id, source_id, uri, source_text, media_type, width, height, duration_s, kept, reason, recipe, "
                "clip_path, first_frame_path, caption_version")
_OPS = {">=", ">", "<=", "<", "==", "!="}


def _missing(col: str) -> str:
    return f"({col} IS NULL OR isnan({col}))"


def _finite(col: str) -> str:
    return f"({col} IS NOT NULL AND isfinite({col}))"


def predicate_sql(data, pred) -> tuple[str, list]:
    """(SQL that holds when a clip passes ``pred`` (its missing-score policy applied), as the recipe
    decides; its parameters)."""
    assert pred.op in _OPS, pred.op
    keeps = "TRUE" if (pred.missing or data.recipe.missing) == "keep" else "FALSE"
    col = data.scores.get(pred.score)
    if col is None:  # no clip of the scope has this score
        return keeps, []
    op = "=" if pred.op == "==" else pred.op
    return f"(CASE WHEN {_missing(col)} THEN {keeps} ELSE {col} {op} ? END)", [float(pred.value)]


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


def score_ranges(data) -> dict[str, tuple[int, float | None, float | None]]:
    """(finite values, min, max) per scorer, in one scan (a second one for scores holding NaN or inf)."""
    if not data.scores:
        return {}
    names = sorted(data.scores)
    parts = [f"count({data.scores[n]}), min({data.scores[n]}), max({data.scores[n]})" for n in names]
    row = data.con.execute("SELECT " + ", ".join(parts) + " FROM report_clips").fetchall()[0]
    out = {n: (int(row[3 * i]), row[3 * i + 1], row[3 * i + 2]) for i, n in enumerate(names)}
    odd = [n for n, (_c, lo, hi) in out.items() if lo is not None and not (np.isfinite(lo) and np.isfinite(hi))]
    if odd:  # NaN sorts above every number in DuckDB and inf is not drawn: the finite values' range
        parts = [f"count(*) FILTER (WHERE {f}), min({c}) FILTER (WHERE {f}), max({c}) FILTER (WHERE {f})"
                 for c, f in ((data.scores[n], _finite(data.scores[n])) for n in odd)]
        row = data.con.execute("SELECT " + ", ".join(parts) + " FROM report_clips").fetchall()[0]
        out.update({n: (int(row[3 * i]), row[3 * i + 1], row[3 * i + 2]) for i, n in enumerate(odd)})
    return out


def bin_edges(lo: float | None, hi: float | None, n: int = N_BINS) -> np.ndarray:
    """The histogram's edges: the values' range in ``n`` equal bins (padded when it is one value)."""
    lo, hi = (0.0, 1.0) if lo is None else (float(lo), float(hi))
    if hi <= lo:
        pad = abs(lo) * 0.05 or 0.5
        lo, hi = lo - pad, hi + pad
    return np.linspace(lo, hi, n + 1)


def histograms(data, edges: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(kept, dropped) counts per bin for every score, in one scan: DuckDB's ``histogram`` of each
    value's bin index, computed as ``numpy.histogram`` computes it for equal bins (the index
    ``floor((x - lo) * n / (hi - lo))``, the top edge in the last bin; numpy's last-ulp correction
    at an edge is not repeated)."""
    names = sorted(edges)
    if not names:
        return {}
    parts, params = [], []
    for name in names:
        col, e = data.scores[name], edges[name]
        n, lo, hi = len(e) - 1, float(e[0]), float(e[-1])
        parts.append(f"histogram(CASE WHEN {_finite(col)} AND {col} BETWEEN ? AND ? THEN "
                     f"least(floor(({col} - ?) * ?)::BIGINT, {n - 1}) END)")
        params += [lo, hi, lo, n / (hi - lo)]
    rows = data.con.execute(f"SELECT coalesce(kept, FALSE), {', '.join(parts)} FROM report_clips GROUP BY 1",
                            params).fetchall()
    out = {name: (np.zeros(len(edges[name]) - 1, dtype=np.int64), np.zeros(len(edges[name]) - 1, dtype=np.int64))
           for name in names}
    for row in rows:
        for name, hist in zip(names, row[1:]):
            target = out[name][0 if row[0] else 1]
            for b, c in (hist or {}).items():
                target[b] += c
    return out


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
    parts = [predicate_sql(data, p) for j, p in enumerate(preds) if j != index]
    others = " AND ".join(sql for sql, _params in parts) or "TRUE"
    others_params = [v for _sql, params in parts for v in params]
    col = data.scores.get(pred.score)
    if col is None:  # every clip misses the score: the missing policy decides at every threshold
        n = int(data.one(f"SELECT count(*) FROM report_clips WHERE {others}", others_params))
        return xs, np.full(points, n if predicate_sql(data, pred)[0] == "TRUE" else 0, dtype=float)
    keeps = (pred.missing or data.recipe.missing) == "keep"
    up = [float(t) for t in xs]
    down = [-float(t) for t in xs[::-1]]
    # DuckDB's histogram over bin boundaries counts x <= t (and -x <= -t: x >= t) at every threshold in one scan
    miss, at_most, at_least = data.con.execute(
        f"SELECT count(*) FILTER (WHERE x IS NULL), histogram(x, ?::DOUBLE[]), histogram(-x, ?::DOUBLE[]) FROM "
        f"(SELECT CASE WHEN NOT {_missing(col)} THEN {col} END AS x FROM report_clips WHERE {others})",
        [up, down, *others_params]).fetchall()[0]
    le = np.cumsum([at_most.get(float(t), 0) for t in xs]) if at_most else np.zeros(points)
    ge = np.cumsum([at_least.get(-float(t), 0) for t in xs[::-1]])[::-1] if at_least else np.zeros(points)
    n = sum(at_most.values()) if at_most else 0  # every value present (the overflow bin too)
    passes = {">=": ge, ">": n - le, "<=": le, "<": n - ge, "==": le + ge - n, "!=": n - (le + ge - n)}[pred.op]
    return xs, np.asarray(passes, dtype=float) + (miss if keeps else 0)


def _tiles(data, ids: list[str], col: str) -> dict[str, dict]:
    """Tile rows (``tile_columns`` and the score as ``x``) of a few clips, by clip id."""
    rows = data.rows(f"SELECT {tile_columns(data)}, {col} AS x FROM report_clips WHERE clip_id IN (SELECT unnest(?))",
                     [ids])
    return {r["clip_id"]: r for r in rows}


def near_threshold(data, pred, kept: bool, k: int) -> list[dict]:
    """The ``k`` clips nearest ``pred``'s threshold that were kept (or dropped by it), nearest first."""
    col = data.scores.get(pred.score)
    if col is None:
        return []
    cond = "kept" if kept else "reason = ?"
    ids = [r[0] for r in data.con.execute(
        f"SELECT clip_id FROM report_clips WHERE {cond} AND {_finite(col)} ORDER BY abs({col} - ?), clip_id "
        "LIMIT ?", ([] if kept else [pred.failure()]) + [float(pred.value), int(k)]).fetchall()]
    tiles = _tiles(data, ids, col)
    return [tiles[i] for i in ids]


DECILE_BINS = 4096


def decile_clips(data, name: str, n: int, lo: float, hi: float) -> list[tuple[int, dict]]:
    """The median clip of each of (up to) ten equal parts of the clips ordered by (score, clip id), as
    ``np.array_split`` parts them: ranks found in a fine histogram, then sorted only inside its bins."""
    col = data.scores[name]
    parts = min(10, n)
    if parts == 0:
        return []
    size, extra = divmod(n, parts)
    starts = [d * size + min(d, extra) for d in range(parts)]
    picks = {s + (size + (d < extra)) // 2: d + 1 for d, s in enumerate(starts)}
    scale = DECILE_BINS / (hi - lo) if hi > lo else 0.0
    fine = f"least(floor(({col} - ?) * ?)::BIGINT, {DECILE_BINS - 1})"  # monotone in the score
    fine_params = [float(lo), float(scale)]
    hist = data.con.execute(f"SELECT histogram({fine}) FROM report_clips WHERE {_finite(col)}",
                            fine_params).fetchall()[0][0]
    bins = sorted(hist)
    cum = np.cumsum([hist[b] for b in bins])
    where: dict[int, list[tuple[int, int]]] = {}  # bin -> (rank inside the bin, pick's rank)
    for rank in picks:
        j = int(np.searchsorted(cum, rank, side="right"))
        where.setdefault(bins[j], []).append((rank - (int(cum[j - 1]) if j else 0), rank))
    ranked = data.con.execute(
        f"SELECT b, clip_id, row_number() OVER (PARTITION BY b ORDER BY {col}, clip_id) - 1 AS r FROM "
        f"(SELECT {fine} AS b, clip_id, {col} FROM report_clips WHERE {_finite(col)}) WHERE b IN (SELECT unnest(?)) "
        "QUALIFY list_contains(?, b * 1000000000 + r)",
        [*fine_params, sorted(where), [b * 1_000_000_000 + r for b, rs in where.items() for r, _ in rs]]).fetchall()
    rank_of = {row[1]: next(g for r, g in where[row[0]] if r == row[2]) for row in ranked}
    tiles = _tiles(data, sorted(rank_of), col)
    return sorted(((picks[rank_of[cid]], tiles[cid]) for cid in rank_of), key=lambda p: p[0])


def scatter_points(data, a: str, b: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(a, b, kept, clips with both): every clip with both scores, or ``SCATTER_MAX`` of them by hash."""
    ca, cb = data.scores[a], data.scores[b]
    where = f"{_finite(ca)} AND {_finite(cb)}"
    n = int(data.one(f"SELECT count(*) FROM report_clips WHERE {where}"))
    if n > SCATTER_MAX:  # the clips of lowest clip-id hash: a filter keeps about 1.2x, a sort of those the first
        where += f" AND hash(clip_id) < {int(min(1.0, 1.2 * SCATTER_MAX / n) * 2**64)}::UBIGINT"
    order = "hash(clip_id), clip_id" if n > SCATTER_MAX else "clip_id"  # every clip: drawn in clip order
    rows = data.con.execute(f"SELECT {ca}, {cb}, coalesce(kept, FALSE) FROM report_clips WHERE {where} "
                            f"ORDER BY {order} LIMIT {SCATTER_MAX}").fetchall()
    arr = np.array(rows, dtype=float).reshape(-1, 3)
    return arr[:, 0], arr[:, 1], arr[:, 2].astype(bool), n


def box_stats(data, source: str) -> dict[str, dict]:
    """matplotlib box statistics (``cbook.boxplot_stats``) per group of ``source``, computed in SQL.

    ``source`` is a relation with columns ``grp`` and ``v`` (read once into a temp table); fliers
    are capped at ``FLIERS_MAX`` a box (a sample by hash when there are more).
    """
    data.con.execute(f"CREATE OR REPLACE TEMP TABLE report_box AS {source}")
    stats = data.rows("""
        WITH q AS (SELECT grp, count(*) AS n, avg(v) AS mean, quantile_cont(v, [0.25, 0.5, 0.75]) AS qs,
                          min(v) AS lo, max(v) AS hi FROM report_box GROUP BY grp),
        w AS (SELECT grp, n, mean, qs[1] AS q1, qs[2] AS med, qs[3] AS q3, lo, hi,
                     qs[1] - 1.5 * (qs[3] - qs[1]) AS lim_lo, qs[3] + 1.5 * (qs[3] - qs[1]) AS lim_hi FROM q)
        SELECT w.grp, any_value(n) AS n, any_value(mean) AS mean, any_value(q1) AS q1, any_value(med) AS med,
               any_value(q3) AS q3, any_value(lo) AS lo, any_value(hi) AS hi,
               min(s.v) FILTER (WHERE s.v >= lim_lo) AS whislo, max(s.v) FILTER (WHERE s.v <= lim_hi) AS whishi
        FROM w JOIN report_box s USING (grp) GROUP BY w.grp ORDER BY w.grp""")
    for st in stats:
        st["whislo"] = st["q1"] if st["whislo"] is None else min(st["whislo"], st["q1"])
        st["whishi"] = st["q3"] if st["whishi"] is None else max(st["whishi"], st["q3"])
    fliers = data.rows(f"""
        SELECT grp, list(v ORDER BY v) AS v FROM (
            SELECT grp, v, row_number() OVER (PARTITION BY grp ORDER BY hash(v), v) AS k
            FROM report_box JOIN (SELECT unnest(?) AS grp, unnest(?) AS lo, unnest(?) AS hi) USING (grp)
            WHERE v < lo OR v > hi) WHERE k <= {FLIERS_MAX} GROUP BY grp""",
        [[s["grp"] for s in stats], [s["whislo"] for s in stats], [s["whishi"] for s in stats]])
    by_grp = {r["grp"]: r["v"] for r in fliers}
    for st in stats:  # drawn in value order (the catalog's row order before)
        st["fliers"] = np.array(by_grp.get(st["grp"], []), dtype=float)
    data.con.execute("DROP TABLE report_box")
    return {st["grp"]: st for st in stats}


def weighted_box(values: np.ndarray, counts: np.ndarray) -> dict:
    """``cbook.boxplot_stats`` of ``values`` repeated ``counts`` times (sorted values), without repeating them."""
    cum = np.cumsum(counts)
    n = int(cum[-1])

    def at(i: int) -> float:
        return float(values[np.searchsorted(cum, i, side="right")])

    def pct(p: float) -> float:  # numpy's linear percentile
        h = (n - 1) * p
        lo = int(np.floor(h))
        return at(lo) + (h - lo) * (at(min(lo + 1, n - 1)) - at(lo))

    q1, med, q3 = pct(0.25), pct(0.5), pct(0.75)
    iqr = q3 - q1
    inside_lo = values[values >= q1 - 1.5 * iqr]
    inside_hi = values[values <= q3 + 1.5 * iqr]
    whislo = q1 if inside_lo.size == 0 or inside_lo.min() > q1 else float(inside_lo.min())
    whishi = q3 if inside_hi.size == 0 or inside_hi.max() < q3 else float(inside_hi.max())
    out = (values < whislo) | (values > whishi)
    fliers = np.repeat(values[out], np.minimum(counts[out], FLIERS_MAX))[:FLIERS_MAX]
    return {"n": n, "mean": float((values * counts).sum() / n), "med": med, "q1": q1, "q3": q3,
            "lo": float(values[0]), "hi": float(values[-1]), "whislo": whislo, "whishi": whishi,
            "fliers": fliers.astype(float)}


_SPACE = "\\t\\n\\x{0b}\\f\\r\\x{1c}-\\x{1f} \\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}"
"""What Python's ``str.split()`` splits on, as an RE2 character class body."""
_PLAIN = ("strlen(text) = length(text) AND NOT (" + " OR ".join(
    [f"contains(text, chr({c}))" for c in (9, 10, 11, 12, 13, 28, 29, 30, 31)]
    + ["contains(text, '  ')", "starts_with(text, ' ')", "ends_with(text, ' ')", "text = ''"]) + ")")
WORDS = (f"CASE WHEN text IS NULL THEN 0 WHEN {_PLAIN} THEN length(text) - length(replace(text, ' ', '')) + 1 "
         f"ELSE len(regexp_extract_all(text, '[^{_SPACE}]+')) END")
"""Words of a caption as Python's ``len(text.split())`` counts them: spaces counted in ASCII text
whose only whitespace is single inner spaces (most captions), a regex otherwise."""


DEGENERATE_JSON = ("CASE WHEN contains(meta_json, 'degenerate') AND json_valid(meta_json) "
                   "THEN json_extract(meta_json, '$.degenerate') END")
"""A caption's ``degenerate`` value as JSON (SQL NULL when meta_json has no such key): parsed once."""
DEGENERATE_FLAG = ("CASE json_type(j) WHEN 'BOOLEAN' THEN j::BOOLEAN WHEN 'NULL' THEN FALSE "
                   "WHEN 'VARCHAR' THEN j->>'$' <> '' WHEN 'ARRAY' THEN json_array_length(j) > 0 "
                   "WHEN 'OBJECT' THEN j::VARCHAR <> '{}' ELSE j::DOUBLE <> 0 END")
"""Python's ``bool()`` of that value (``j``)."""


def caption_words_sql(has_decode: bool, scope: str = "TRUE") -> str:
    """Captions of the scope counted per version, kind, words, degenerate flag (NULL: not recorded) and
    decode path: one pass over ``captions``, a small table (word counts take few values)."""
    decode = "decode" if has_decode else "NULL::VARCHAR"
    return (f"SELECT version, kind, words, {DEGENERATE_FLAG} AS degenerate, decode, count(*) AS n FROM ("
            f"SELECT version, kind, {WORDS} AS words, {DEGENERATE_JSON} AS j, coalesce({decode}, 'not generated') AS decode "
            f"FROM captions WHERE {scope}) GROUP BY ALL")


def caption_stats(data) -> tuple[list[dict], dict[str, dict]]:
    """(per caption version and kind: count, words mean/median/max, degenerate flags, decode paths; box stats)."""
    has_decode = bool(data.one("SELECT count(*) FROM information_schema.columns WHERE table_name = 'captions' "
                               "AND column_name = 'decode'"))
    counted = data.rows(caption_words_sql(has_decode, data.rows_filter()))
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in counted:
        groups.setdefault((r["version"], r["kind"]), []).append(r)
    rows, boxes = [], {}
    for (version, kind), rs in sorted(groups.items()):
        words: dict[int, int] = {}
        decodes: dict[str, int] = {}
        for r in rs:
            words[r["words"]] = words.get(r["words"], 0) + r["n"]
            decodes[r["decode"]] = decodes.get(r["decode"], 0) + r["n"]
        values = np.array(sorted(words), dtype=float)
        box = weighted_box(values, np.array([words[int(v)] for v in values], dtype=np.int64))
        flagged = sum(r["n"] for r in rs if r["degenerate"] is not None)
        rows.append({"version": version, "kind": kind, "n": box["n"], "mean_words": box["mean"],
                     "median_words": box["med"], "max_words": int(box["hi"]), "flagged": flagged,
                     "degenerate": sum(r["n"] for r in rs if r["degenerate"]) if flagged else None,
                     "decode": ", ".join(f"{k} {n}" for k, n in sorted(decodes.items()))})
        boxes[f"{version}/{kind}"] = box
    return rows, boxes


def caption_qa(data) -> dict[str, dict]:
    """Box statistics of caption-QA scores (latest per clip, score and version) per score and version.

    Scores are keyed (clip, scorer, model, version): where each QA score and version has one model,
    every row is already the latest, and the grouping that picks it is skipped."""
    qa = f"starts_with(scorer, 'caption_') AND {data.rows_filter()}"
    models = data.one(f"SELECT max(n) FROM (SELECT count(DISTINCT model) AS n FROM scores WHERE {qa} GROUP BY scorer, version)")
    if models is None:
        return {}
    if models == 1:
        src = f"SELECT scorer || ' ' || version AS grp, value AS v FROM scores WHERE {qa} AND value IS NOT NULL"
    else:
        src = ("SELECT scorer || ' ' || version AS grp, v FROM (SELECT clip_id, scorer, version, "
               f"arg_max(value, written_at) AS v FROM scores WHERE {qa} GROUP BY ALL) WHERE v IS NOT NULL")
    return box_stats(data, src)


def failure_groups(data) -> list[dict]:
    """Failures per stage and error class, most first: count, max attempts, the first three examples."""
    return data.rows("""
        SELECT stage, error_class, count(*) AS n, max(coalesce(nullif(attempts, 0), 1)) AS max_attempts,
               list({'uri': uri, 'item_id': item_id, 'error': error} ORDER BY item_id)[1:3] AS examples
        FROM report_failures GROUP BY stage, error_class ORDER BY n DESC, stage, error_class""")


def clip_rows(data) -> list[dict[str, Any]]:
    """Every clip of the scope with its domain and all its caption versions (listed only when there are few)."""
    return data.rows(f"""
        SELECT * REPLACE (coalesce(v.versions, '') AS caption_version)
        FROM (SELECT {tile_columns(data)}, {domain_sql('uri')} AS domain FROM report_clips)
        LEFT JOIN (SELECT clip_id, string_agg(DISTINCT version, ', ' ORDER BY version) AS versions FROM captions
                   WHERE clip_id IN (SELECT clip_id FROM report_clips) AND {data.rows_filter()} GROUP BY clip_id) v
        USING (clip_id) ORDER BY clip_id""")
