"""The report's sections from the catalog's own numbers: funnel, decisions, scores, galleries,
failures, captions, clips. Each takes the scope (``report_scope.ReportData``) and the writer and
returns its HTML; the numbers come from ``report_queries`` (SQL), the figures from ``report_plots``.
"""

from __future__ import annotations

from collections import defaultdict

from vidcorpus.jobs.report import plots as rp
from vidcorpus.jobs.report import figure_queries as rq
from vidcorpus.jobs.report.html_pages import Writer, esc, table

SCATTER = ("aesthetic", "clip_text")


def funnel_cells(data) -> tuple[list[dict], list[str], dict[str, list[dict]]]:
    """(overall funnel, domains, funnel per domain): the catalog's funnel definition over the scope."""
    overall = data.funnel()
    per: dict[str, list[dict]] = defaultdict(list)
    for r in data.funnel(by_domain=True):
        per[r["domain"]].append(r)
    # the domains of sources and clips (a domain only failures name gets no column, as before)
    doms = sorted(d for d, rows in per.items() if rows[0]["n"] or rows[2]["n"])
    return overall, doms, {d: per[d] for d in doms}


def cell(r: dict) -> str:
    return f"{r['n']}" + ("" if r["hours"] is None else f" / {r['hours']:.3g} h")


def funnel_section(data, w: Writer, funnel) -> str:
    overall, doms, per = funnel
    rp.funnel_plot([r["stage"] for r in overall], [r["n"] for r in overall], [r["hours"] for r in overall],
                   w.plot("funnel"))
    rows = [[esc(r["stage"])] + [cell(x[i]) for x in [overall] + [per[d] for d in doms]] for i, r in enumerate(overall)]
    return (w.img(w.plots[-1], "funnel") + "<h3>items / hours per source domain</h3>"
            + table(["stage", "all"] + doms, rows, set(range(1, len(doms) + 2))))


def decisions_section(data, w: Writer, reasons: list[tuple[str, int]], n_clips: int) -> str:
    body = (f"<p>recipe <b>{esc(data.recipe_id or 'none')}</b>: {rq.kept_count(data)} of {n_clips} clips kept.</p>")
    if data.recipe is not None:
        body += "<p>predicates, in order: " + ", ".join(f"<code>{esc(str(p))}</code>" for p in data.recipe.predicates) \
            + f" (missing scores: {esc(data.recipe.missing)})</p>"
    if reasons:
        rp.bar_plot([r for r, _ in reasons], [n for _, n in reasons], "dropped clips by reason", w.plot("reasons"))
        most = sorted(reasons, key=lambda r: -r[1])  # Counter.most_common: ties keep first-seen order
        body += w.img(w.plots[-1], "drop reasons") + table(["reason", "clips"], [[esc(k), v] for k, v in most], {1})
    return body + "".join(f'<p class="note">{esc(n)}</p>' for n in data.notes)


def scores_section(data, w: Writer, ranges: dict, n_clips: int) -> str:
    """Stacked histograms per score (SQL buckets) with thresholds, retention curves, the scatter plot."""
    preds = data.recipe.predicates if data.recipe is not None else []
    thr: dict[str, list[tuple[str, float]]] = defaultdict(list)
    first_pred: dict[str, int] = {}
    for i, pred in enumerate(preds):
        thr[pred.score].append((pred.op, pred.value))
        first_pred.setdefault(pred.score, i)
    body = ('<p class="note">Stacked histograms of kept (green) and dropped (red) clips; dashed lines are the '
            "recipe's thresholds. Right: clips the whole recipe would keep if only that threshold moved.</p>"
            '<div class="plots">')
    edges = {name: rq.bin_edges(*ranges[name][1:]) for name in data.scorers}
    counts = rq.histograms(data, edges)
    for name in data.scorers:
        n, lo, hi = ranges[name]
        kept, dropped = counts[name]
        curve = rq.retention_curve(data, first_pred[name], lo, hi) if name in first_pred else None
        rp.score_plot(name, edges[name], kept, dropped, thr.get(name, []), curve, n_clips, w.plot(f"score_{name}"))
        body += f'<div id="score-{esc(name)}">' + w.img(w.plots[-1], f"{name} histogram") + "</div>"
    body += "</div>"
    if all(s in data.scores for s in SCATTER):
        a, b, kept, total = rq.scatter_points(data, *SCATTER)
        rp.scatter_plot(a, b, kept, *SCATTER, [v for _, v in thr.get(SCATTER[0], [])],
                        [v for _, v in thr.get(SCATTER[1], [])], w.plot("scatter_aesthetic_clip_text"))
        note = rp.scatter_note(len(a), total)
        body += ("<h3>aesthetic vs CLIP text score</h3>" + w.img(w.plots[-1], "aesthetic vs clip_text")
                 + (f'<p class="note">{esc(note)}</p>' if note else ""))
    return body if data.scorers else "<p>no scores</p>"


def galleries_section(data, w: Writer, ranges: dict, per_gallery: int) -> str:
    """Clips nearest each threshold on both sides, and one clip per decile of each recipe score."""
    preds = data.recipe.predicates if data.recipe is not None else []
    body = ""
    for i, pred in enumerate(preds):
        failure = pred.failure()
        body += f'<h3 id="near-{i}">near <code>{esc(str(pred))}</code></h3>'
        for label, rows in (("just kept", rq.near_threshold(data, pred, True, per_gallery)),
                            (f"just dropped ({failure})", rq.near_threshold(data, pred, False, per_gallery))):
            tiles = "".join(w.tile(c, f"{pred.score}={c['x']:.4g}") for c in rows)
            body += f"<div>{esc(label)}: {len(rows)}</div><div class=\"gallery\">{tiles or '<span class=note>none</span>'}</div>"
    names = list(dict.fromkeys([p.score for p in preds] + [s for s in SCATTER if s in data.scores]))
    for name in names:
        n, lo, hi = ranges.get(name, (0, None, None))
        if n == 0:
            continue
        tiles = "".join(w.tile(c, f"decile {d}: {c['x']:.4g}") for d, c in rq.decile_clips(data, name, n, lo, hi))
        body += f'<h3>{esc(name)} by decile</h3><div class="gallery">{tiles}</div>'
    return body or "<p>no scores to show</p>"


def failures_section(w: Writer, groups: list[dict]) -> str:
    if not groups:
        return "<p>no failures</p>"
    labels = [f"{g['stage']}: {g['error_class']}" for g in groups]
    rp.bar_plot(labels, [g["n"] for g in groups], "failures by stage: error class", w.plot("failures"))
    rows = [[esc(g["stage"]), esc(g["error_class"]), g["n"], g["max_attempts"],
             "".join(f'<div class="err">{esc(f["uri"] or f["item_id"])}\n{esc(f["error"])}</div>' for f in g["examples"])]
            for g in groups]
    return w.img(w.plots[-1], "failures") + table(["stage", "error class", "n", "max attempts", "examples"], rows, {2, 3})


def captions_section(data, w: Writer) -> str:
    stats, boxes = rq.caption_stats(data)
    if not stats:
        return "<p>no captions</p>"
    rp.caption_length_plot({f"{s['version']}/{s['kind']}": boxes[f"{s['version']}/{s['kind']}"] for s in stats},
                           w.plot("caption_length"))
    rows = [[esc(s["version"]), esc(s["kind"]), s["n"], f"{s['mean_words']:.1f}", f"{s['median_words']:.0f}",
             s["max_words"], "" if s["degenerate"] is None else f"{s['degenerate']} of {s['flagged']}",
             esc(s["decode"])] for s in stats]
    body = w.img(w.plots[-1], "caption length") + table(
        ["version", "kind", "captions", "mean words", "median", "max", "degenerate", "decode path"], rows, {2, 3, 4, 5})
    return body + caption_qa_section(data, w)


def caption_qa_section(data, w: Writer) -> str:
    """Caption-QA distributions per QA score and caption version (the score's version field)."""
    groups = rq.caption_qa(data)
    if not groups:
        return '<p class="note">no caption QA scores in this catalog yet (scores named caption_*).</p>'
    rp.box_plot(groups, "score", "caption QA per score and caption version", w.plot("caption_qa"))
    rows = [[esc(k.split(" ", 1)[0]), esc(k.split(" ", 1)[1]), g["n"], f"{g['mean']:.3f}", f"{g['med']:.3f}",
             f"{g['lo']:.3f}", f"{g['hi']:.3f}"] for k, g in groups.items()]
    return ("<h3>caption QA per version</h3>" + w.img(w.plots[-1], "caption QA")
            + table(["score", "caption version", "captions", "mean", "median", "min", "max"], rows, {2, 3, 4, 5, 6}))


def clips_section(data, w: Writer, n_clips: int, max_clip_pages: int) -> str:
    """Every clip, when there are few enough for one page each."""
    if n_clips > max_clip_pages:
        return f'<p class="note">{n_clips} clips: pages only for the clips the galleries show.</p>'
    rows = [[w.link(c), esc(c["kept"]), esc(c["reason"]), esc(c["domain"]), esc(c["duration_s"]),
             esc(c["caption_version"])] for c in rq.clip_rows(data)]
    return table(["clip", "kept", "reason", "domain", "duration (s)", "caption"], rows, {4})
