"""Run 12 on one H100 node (issue 22, 2026-12-07): a first job and the next one, neither captioned
anything (their caption actors were still compiling their second warm-up shape), against runs 10
and 11; the CPU stages' work a row across runs 9 to 12.

Each cell is a field of a result file or is computed here from it.
"""

from __future__ import annotations

import datetime as dt
import re

from doc_tables.gpu_node_run10 import _stages
from doc_tables.spec import Col, Table

RUNS = {"run 9b: the next job": "gpu_node_job_h100_120min_run9b.json",
        "run 10a: a first job": "gpu_node_job_h100_120min_run10a.json",
        "run 10b: the next job, stopped at 285 s": "gpu_node_job_h100_120min_run10b.json",
        "run 11: the next job, stopped at 440 s": "gpu_node_job_h100_120min_run11.json",
        "run 12a: a first job, stopped at 470 s": "gpu_node_job_h100_120min_run12a.json",
        "run 12b: the next job, stopped at 430 s": "gpu_node_job_h100_120min_run12b.json"}
STAGES = ("split", "technical", "motion", "clip", "extract")


def _last_source_s(d: dict) -> float:
    """The end of the 30 s bucket in which the last source was marked done."""
    return max(int(k) for k in d["catalog"]["timeline"]["sources_done"]) + 30


def _stage_cpu(d: dict) -> float | None:
    """CPU seconds of the Ray workers whose last task was a CPU stage's batch or a shard write."""
    by = (d.get("job_cpu") or {}).get("cpu_s_by_process")
    return sum(v for k, v in by.items() if k.startswith(("ray::MapBatches", "ray::write_shard"))) if by else None


def stage_rows(*runs: dict) -> list[dict]:
    """Per run: each CPU stage's work (its batches' wall time, summed over workers) a row in, when
    its last source was done, and its CPU stages' workers' CPU a video-hour (only where every source
    was done: a job stopped earlier spent CPU on sources it did not finish)."""
    rows = []
    for label, d in zip(RUNS, runs):
        st = _stages(d)
        row = {"run": label, "sources": d["catalog"]["sources_done"], "last": _last_source_s(d)}
        for name in STAGES:
            row[name] = st[name]["work_s"] / st[name]["rows_in"]
        cpu = _stage_cpu(d)
        all_done = d["catalog"]["sources_done"] == d["footage"]["videos"]
        row["cpu_vh"] = cpu / d["catalog"]["video_hours_done"] if cpu and all_done else None
        rows.append(row)
    return rows


def _started(d: dict) -> dt.datetime:
    return dt.datetime.fromisoformat(d["date"]) - dt.timedelta(seconds=d["wall_s"])


def setup_rows(d12a: dict, d12b: dict) -> list[dict]:
    """The caption actor's set-up lines (its worker log, copied into the report), timed from the job's
    start: what it did and when, and that no later line came before the budget stopped the job."""
    rows = []
    for label, d in (("run 12a (first job)", d12a), ("run 12b (next job)", d12b)):
        t0 = _started(d)
        for line in d["caption_setup_lines"]:
            if line.startswith("INFO:"):  # the same line through the root logger's handler
                continue
            stamp, text = line[:23], line[24:]
            at = (dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=dt.timezone.utc) - t0)
            text = re.sub(r"/tmp/gpujob/compile-cache/(caption-[0-9a-f]{6})\S*\.bin", r"\1....bin", text)
            rows.append({"run": label, "at": at.total_seconds(), "line": text.replace("caption set-up: ", "")})
        rows.append({"run": label, "at": d["wall_s"], "line": "(no further line: the job was stopped, its "
                     f"{d['catalog']['clips_kept']:,} kept clips uncaptioned)"})
    return rows


TABLES = [
    Table("gpu_node_run12_stages", list(RUNS.values()), rows=stage_rows, columns=[
        Col("run", "run"), Col("sources done", "sources"), Col("last source done by s", "last"),
        *[Col(f"{s} work s a row", s, "{:.3f}") for s in STAGES],
        Col("CPU stages' workers CPU s a video-hour", "cpu_vh", "{:,.0f}", "-")]),
    Table("gpu_node_run12_setup", [RUNS["run 12a: a first job, stopped at 470 s"],
                                   RUNS["run 12b: the next job, stopped at 430 s"]],
          rows=setup_rows, columns=[Col("job", "run"), Col("s from the job's start", "at", "{:.0f}"),
                                    Col("the caption actor's set-up line", "line")]),
]
