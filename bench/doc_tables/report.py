"""The report from SQL at 10 M clips (issue 24, item 4): bench/bench_report.py."""

from __future__ import annotations

from doc_tables.spec import Col, Table

# (file, commit it measured, whether it is the headline): the commit is not inside these files
RUNS = [("report_10m.json", "45ca71e", True), ("report_10m_bd982f6.json", "bd982f6", False)]


def report_rows(*files: dict) -> list[dict]:
    rows = []
    for data, (_name, commit, headline) in zip(files, RUNS):
        whole = 0
        for i, run in enumerate(data["runs"]):
            if run["scope"] == "whole catalog":
                whole += 1
                scope = f"whole catalog, run {whole}"
            else:
                scope = f"`--run {run['scope'].split()[-1]}`" + (" (1 M clips)" if headline else "")
            load = (f"{data['load_before'][0]:.2f} / ({data['load_after'][0]:.2f} after the third run)"
                    if i == 0 else "")
            bold = ("wall s", "peak RSS") if headline and run["scope"] == "whole catalog" else ()
            rows.append({**run, "commit": commit, "scope_label": scope, "load": load, "_bold": bold})
    return rows


TABLES = [
    Table("report_10m", [name for name, _c, _h in RUNS], rows=report_rows, columns=[
        Col("commit", "commit"),
        Col("scope", "scope_label"),
        Col("wall s", "wall_s", "{:.1f}"),
        Col("peak RSS", "peak_rss_bytes", lambda b: f"{b / 1e9:.2f} GB"),
        Col("load (1 min) before / after", "load"),
    ]),
]
