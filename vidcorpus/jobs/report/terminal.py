"""The report's headline numbers as rich tables in the terminal: funnel per domain, drop reasons,
failures (the same SQL aggregates the HTML page shows)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from vidcorpus.jobs.report.sections import cell


def print_headline(data, console: Console, funnel, reasons: list[tuple[str, int]], failures: list[dict]) -> None:
    """``funnel`` is ``report_sections.funnel_cells``; ``failures`` is ``report_queries.failure_groups``."""
    overall, doms, per = funnel
    t = Table(title=f"funnel{' of run ' + data.run if data.run else ''} (items / hours)")
    t.add_column("stage")
    t.add_column("all", justify="right")
    for d in doms:
        t.add_column(d, justify="right")
    for i, row in enumerate(overall):
        t.add_row(row["stage"], *[cell(r) for r in [row] + [per[d][i] for d in doms]])
    console.print(t)
    if reasons:
        t = Table(title=f"drop reasons ({data.recipe_id})")
        t.add_column("reason")
        t.add_column("clips", justify="right")
        for reason, n in sorted(reasons, key=lambda r: -r[1]):
            t.add_row(reason, str(n))
        console.print(t)
    if failures:
        t = Table(title="failures by class")
        for col in ("stage", "error_class", "n", "example"):
            t.add_column(col, justify="right" if col == "n" else "left", overflow="fold")
        for g in failures:
            t.add_row(g["stage"], g["error_class"], str(g["n"]), (g["examples"][0]["error"] or "")[:120])
        console.print(t)
