"""The report from SQL at 10 M clips (issue 24, item 4): bench/bench_report.py."""

from __future__ import annotations

from doc_tables.spec import Col, Table

# The headline: a catalog whose long scores table is shaped like the driver's (15 rows a clip,
# bench_catalog.py --score-rows); its JSON records the commit it ran at.
PIPELINE = "report_10m_pipeline_scores.json"
PIPELINE_CATALOG = "report_10m_pipeline_scores_catalog.json"
# (file, commit it measured, whether it is the headline) of the earlier catalog (caption-QA score
# rows only): the commit is not inside these files
RUNS = [("report_10m.json", "45ca71e", True), ("report_10m_bd982f6.json", "bd982f6", False)]

_COLUMNS = [
    Col("commit", "commit"),
    Col("scope", "scope_label"),
    Col("wall s", "wall_s", "{:.1f}"),
    Col("peak RSS", "peak_rss_bytes", lambda b: f"{b / 1e9:.2f} GB"),
    Col("load (1 min) before / after", "load"),
]


def _scope(run: dict, whole: int) -> str:
    return f"whole catalog, run {whole}" if run["scope"] == "whole catalog" else f"`--run {run['scope'].split()[-1]}`"


def pipeline_rows(data: dict) -> list[dict]:
    rows, whole = [], 0
    for i, run in enumerate(data["runs"]):
        whole += run["scope"] == "whole catalog"
        load = f"{data['load_before'][0]:.2f} / {data['load_after'][0]:.2f} (after the last run)" if i == 0 else ""
        bold = ("wall s", "peak RSS") if run["scope"] == "whole catalog" else ()
        rows.append({**run, "commit": data["commit"], "scope_label": _scope(run, whole), "load": load, "_bold": bold})
    return rows


def catalog_rows(build: dict, bench: dict) -> list[dict]:
    c = bench["counts"]
    return [
        {"what": "clips_wide / clips / decisions", "value": f"{c['clips_wide']:,} / {c['clips_wide']:,} / {c['decisions']:,}"},
        {"what": "long `scores` rows", "value": f"{c['scores']:,} ({c['scores'] / c['clips_wide']:.1f} a clip)"},
        {"what": "captions / sources", "value": f"{c['captions']:,} / {c['sources']:,}"},
        {"what": "file", "value": f"{bench['catalog_bytes'] / 1e9:.2f} GB"},
        {"what": "build (direct SQL fill, two parts)",
         "value": " + ".join(f"{p['wall_s']:,.0f} s" for p in build["parts"])
         + f" = {build['wall_s']:,.0f} s; peak RSS {build['peak_rss_kb'] / 1e6:.1f} GB (DuckDB memory_limit 8 GB); "
           f"load (1 min, every 30 s) {build['load_1min_sampled_every_30s']['min']:.1f} to "
           f"{build['load_1min_sampled_every_30s']['max']:.1f}, median {build['load_1min_sampled_every_30s']['median']:.1f}"},
    ]


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
            rows.append({**run, "commit": commit, "scope_label": scope, "load": load})
    return rows


TABLES = [
    Table("report_10m_pipeline", [PIPELINE], rows=pipeline_rows, columns=_COLUMNS),
    Table("report_10m_pipeline_catalog", [PIPELINE_CATALOG, PIPELINE], rows=catalog_rows, columns=[
        Col("catalog", "what"), Col("", "value")]),
    Table("report_10m", [name for name, _c, _h in RUNS], rows=report_rows, columns=_COLUMNS),
]
