"""The report's "Filter quality from labels" section: each filter's precision and recall with 95 %
intervals and the threshold the labels argue for (the numbers of `vidcorpus filter suggest`,
computed by ``vidcorpus/serve/measure.py`` over the whole catalog's labels)."""

from __future__ import annotations

from typing import Callable


def _pr(value, ci) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def filter_quality_section(rows: list[dict], table: Callable, escape: Callable) -> str:
    """HTML for the rows of ``serve.measure.filter_quality``."""
    if not rows or not any(r["current"].labels for r in rows):
        return ('<p class="note">No labels yet: mark clips good or bad in <code>vidcorpus serve</code> (its '
                "sampling mode gives unbiased estimates) to see each filter's precision and recall here.</p>")
    body = ('<p class="note">A filter flags the clips it drops; a bad label says a clip should be dropped. '
            "Precision: share of flagged clips that are bad; recall: share of bad clips flagged; 95 % intervals "
            "(stratified bootstrap). Labels from a filter's sample are weighted to the whole catalog; labels "
            "from browsing are biased.</p>")
    out = []
    for r in rows:
        c, p = r["current"], r["proposed"]
        out.append([escape(c.predicate), f"{c.flagged} / {c.passed}", f"{c.labels} ({c.bad_labels})",
                    "sample" if c.sampled else "browsing (biased)", _pr(c.precision, c.precision_ci),
                    _pr(c.recall, c.recall_ci), escape(p.predicate if p else r["note"]),
                    _pr(p.precision, p.precision_ci) if p else "", _pr(p.recall, p.recall_ci) if p else ""])
    return body + table(["filter", "flagged / passed", "labels (bad)", "labels from", "precision", "recall",
                         "suggested", "its precision", "its recall"], out)
