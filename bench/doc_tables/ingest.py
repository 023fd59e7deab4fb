"""Ingest: shot detection and clip extraction (bench/bench_ingest.py -> ingest_cpu.json)."""

from __future__ import annotations

from doc_tables.spec import Col, Table

SOURCE = "ingest_cpu.json"


def _with_size(data: dict) -> list[dict]:
    return [{**r, "size": data["input"]["detection_size"]} for r in data["throughput"]]


TABLES = [
    Table("ingest_throughput", [SOURCE], compact=True, rows=_with_size, columns=[
        Col("pipeline", "pipeline"),
        Col("analysed at", "size"),
        Col("frames/s", "frames_per_s", "{:,.0f}"),
        Col("of decode-only", "of_decode_only", "{:.0%}"),
    ]),
    Table("ingest_accuracy", [SOURCE], compact=True, rows="accuracy", columns=[
        Col("detectors", "detectors"),
        Col("precision", "precision", "{:.2f}"),
        Col("recall", "recall", "{:.2f}"),
        Col("hard cuts within 1 frame", "cuts_within_1"),
        Col("fades found", "fades_found"),
        Col("transitions predicted", "predicted"),
        Col("frames/s", "frames_per_s", "{:,.0f}"),
    ]),
    Table("ingest_extraction", [SOURCE], compact=True, rows="extraction", columns=[
        Col("mode", "mode"),
        Col("clips", "clips"),
        Col("seconds", "seconds", "{:.2f}"),
        Col("clips/s", "clips_per_s", "{:.1f}"),
        Col("recorded mode", "recorded_modes"),
    ]),
    Table("ingest_worker_rss", [SOURCE], compact=True, rows="worker_rss.rows", columns=[
        Col("worker", "worker"),
        Col("clips", "clips"),
        Col("recorded modes", "modes"),
        Col("errors", "errors"),
        Col("split s", "split_s", "{:.1f}"),
        Col("detection frames/s", "detection_frames_per_s", "{:,.0f}"),
        Col("extract s", "extract_s", "{:.1f}"),
        Col("RSS after imports MB", "rss_after_imports_mb", "{:.0f}"),
        Col("peak RSS MB (VmHWM)", "peak_rss_mb", "{:.0f}"),
    ]),
]
