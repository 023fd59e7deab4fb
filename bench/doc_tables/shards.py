"""Shards (issue 7): the writer against a plain copy, the reader with 1, 2 and 4 workers (bench_shards.py)."""

from __future__ import annotations

from doc_tables.formats import whole
from doc_tables.spec import Col, Table

RUNS = ["shards_run1.json", "shards_run2.json"]


def writer_rows(*runs: dict) -> list[dict]:
    rows = [("plain copy, MB/s", "copy_mb_s", whole), ("`write_shard`, MB/s", "writer_mb_s", whole),
            ("writer / copy", "ratio", lambda v: f"**{v:.2f}**")]
    return [{"what": label, **{f"run{i}": fmt(r["writer"][key]) for i, r in enumerate(runs, 1)}}
            for label, key, fmt in rows]


def reader_rows(*runs: dict) -> list[dict]:
    out = []
    for label, key in (("raw, verified (run 1 / run 2)", "reader_raw"),
                       ("decoded for training (run 1 / run 2)", "reader_decoded")):
        by_workers = [{r["workers"]: r["samples_s"] for r in run[key]} for run in runs]
        out.append({"what": label, **{f"w{w}": " / ".join(whole(b[w]) for b in by_workers) for w in (1, 2, 4)}})
    return out


TABLES = [
    Table("shards_writer", RUNS, rows=writer_rows, columns=[
        Col("writer (273.6 MB of payload)", "what"), Col("run 1", "run1"), Col("run 2", "run2")]),
    Table("shards_reader", RUNS, rows=reader_rows, columns=[
        Col("reader, samples/s", "what"), Col("1 worker", "w1"), Col("2 workers", "w2"), Col("4 workers", "w4")]),
]
