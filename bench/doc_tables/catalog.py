"""Catalog at 1 M and 10 M clips (issue 3): runs A (1 M, driver path) and D (10 M, direct SQL fill),
run F through the driver, and reads while a run appends.

Runs B, C, D0 and E (2026-11-23) kept no raw results: the doc says what they showed in prose only.
"""

from __future__ import annotations

from doc_tables.spec import Col, Table

RUN_A = "catalog_1m_A_2026-12-06.json"
RUN_D = "catalog_10m_D_2026-12-06.json"
DRIVER = "catalog_10m_driver.json"
CONCURRENT = "catalog_10m_concurrent.json"
QUERIES = ["funnel", "funnel of one run", "audit (issue's question)", "recipe what-if", "wide: top kept clips",
           "wide: one clip", "training shard selection"]
REFERENCES = {"REFERENCE funnel 'scored' (count distinct clips in scores)":
              "REFERENCE funnel 'scored' (distinct clips in scores)",
              "REFERENCE wide: top kept clips (pivot view)": "REFERENCE wide top kept clips through the pivot view",
              "REFERENCE recipe what-if (pivot view)": "REFERENCE recipe what-if through the pivot view"}


def driver_summary(d: dict) -> list[dict]:
    c, commit = d["counts"], d["commit_64_clips_s"]
    return [
        {"what": "insert", "value": f"{d['insert_s']:,.0f} s: **{d['clips_per_s']:,.0f} clips/s**, "
                                    f"{d['rows_per_s']:,.0f} rows/s over all tables "
                                    f"({d['long_rows_written'] / 1e6:.0f} M long rows)"},
        {"what": "file", "value": f"**{d['file_bytes'] / 1e9:.2f} GB** ({d['bytes_per_clip']:,.0f} bytes per clip)"},
        {"what": "counts",
         "value": f"{c['clips']:,} clips, {c['scores']:,} scores, {c['clips_wide']:,} clips_wide rows"},
        {"what": "peak RSS", "value": f"{d['peak_rss_mb'] / 1000:.1f} GB (memory_limit 8 GB)"},
        {"what": "one runner-sized commit (64 clips) on the full file",
         "value": f"{commit['held']:.2f} s held, {commit['open_per_commit']:.2f} s opening and closing the file"},
    ]


def driver_queries(d: dict) -> list[dict]:
    rows = [{"query": q, **d["queries"][q]} for q in QUERIES]
    for key, label in REFERENCES.items():
        q = d["queries"][key]
        stopped = f"> {q['timed_out_after_s']:g} (stopped)" if q.get("median_s") is None else None
        rows.append({"query": label, "median_s": q.get("median_s"), "stopped": stopped})
    return rows


def concurrent_rows(d: dict) -> list[dict]:
    return [{"query": q, "quiet": d["queries_quiet"][q], "writes": d["queries_during_writes"][q]} for q in QUERIES]


TABLES = [
    Table("catalog_f_load", [DRIVER], rows=driver_summary, columns=[
        Col("", "what"),
        Col("10 M clips, driver path (`commit_fragments`, 100,000 clips per transaction)", "value"),
    ]),
    Table("catalog_f_queries", [DRIVER], rows=driver_queries, columns=[
        Col("query (median of 3, s)", "query"),
        Col("F: 10 M via the driver", lambda r: r["stopped"] or f"{r['median_s']:.3f}" if "stopped" in r
            else f"{r['median_s']:.3f}"),
    ]),
    Table("catalog_f_concurrent", [CONCURRENT], rows=concurrent_rows, columns=[
        Col("query (s, open included)", "query"),
        Col("quiet, median", "quiet.median_s", "{:.3f}"),
        Col("during writes: reads", "writes.n"),
        Col("median", "writes.median_s", "{:.3f}"),
        Col("p95", "writes.p95_s", "{:.3f}"),
        Col("max", "writes.max_s", "{:.3f}"),
    ]),
]



# the 2026-12-06 reruns, with the label and column each gets; D joins when its JSON is in bench/results/
RUN_D_QUIET = "catalog_10m_D_queries_quiet_2026-12-06.json"
AD_RUNS = [(RUN_A, "A: 1 M, driver path", "A: 1 M"), (RUN_D, "D: 10 M, direct SQL fill", "D: 10 M"),
           (RUN_D_QUIET, "D again: its file's queries on a quiet box", "D: 10 M, quiet box")]


def _load(d: dict) -> str:
    return f"{d['load_before'][0]:.1f} before, {d['load_after'][0]:.1f} after"


def ad_runs(*runs: dict) -> list[dict]:
    return [{"run": label, "command": f"`{r['command'].removeprefix('python ')}`", "date": r["date"], "load": _load(r)}
            for (_, label, _), r in zip(AD_RUNS, runs)]


def a_insert(a: dict) -> list[dict]:
    commit = a["commit_64_clips_s"]
    return [
        {"what": "clips/s", "value": f"{a['clips_per_s']:,.0f}"},
        {"what": "rows/s, all tables", "value": f"{a['rows_per_s']:,.0f}"},
        {"what": "file", "value": f"{a['file_bytes'] / 1e9:.2f} GB ({a['bytes_per_clip']:,.0f} bytes per clip)"},
        {"what": "peak RSS", "value": f"{a['peak_rss_mb'] / 1000:.1f} GB"},
        {"what": "one runner-sized commit (64 clips with all their rows) on the full file",
         "value": f"{commit['held']:.2f} s held, {commit['open_per_commit']:.2f} s opening and closing the file"},
    ]


def _median(q: dict | None) -> str | None:
    if q is None:
        return None
    if q.get("median_s") is None:
        return f"> {q['timed_out_after_s']:g} (stopped)"
    return f"{q['median_s']:.3f}"


def ad_queries(*runs: dict) -> list[dict]:
    rows = []
    for key, label in [(q, q) for q in QUERIES] + list(REFERENCES.items()):
        row = {"query": label}
        for (_, _, column), r in zip(AD_RUNS, runs):
            row[column] = _median(r["queries"].get(key)) or ("(no scores)" if r["direct"] else None)
        rows.append(row)
    return rows


def ad_tables(n_runs: int) -> list[Table]:
    runs = AD_RUNS[:n_runs]
    return [
        Table("catalog_ad_runs", [f for f, _, _ in runs], rows=ad_runs, columns=[
            Col("run", "run"), Col("command", "command"), Col("finished", "date"), Col("load (1 min)", "load")]),
        Table("catalog_a_insert", [RUN_A], rows=a_insert, columns=[Col("", "what"), Col("A (1 M)", "value")]),
        Table("catalog_ad_queries", [f for f, _, _ in runs], rows=ad_queries, columns=[
            Col("query (median, s)", "query")] + [Col(column, column, missing="—") for _, _, column in runs]),
    ]


TABLES += ad_tables(n_runs=3)
