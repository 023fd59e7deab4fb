"""Catalog at 10 M clips (issue 3): run F through the driver, and reads while a run appends.

Runs A to E were measured before raw results were kept: their tables stay hand-written in the doc.
"""

from __future__ import annotations

from doc_tables.spec import Col, Table

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
        {"what": "file", "value": f"**{d['file_bytes'] / 1e9:.2f} GB** ({d['bytes_per_clip']:,.0f} bytes per clip; "
                                  "the extrapolation from 2.5 M was 28 GB)"},
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
