"""The whole job on one H100 node (issue 19, 2026-12-05/06): runs 1 and 3, runs 4 and 5, side by side.

Each cell is a field of the run's report (bench/gpu_node_job.py) or a summary of its timeline; the
summaries are computed here so that they cannot say more than the timeline does.
"""

from __future__ import annotations

import datetime as dt
import statistics

from doc_tables.formats import fixed, whole
from doc_tables.spec import Col, Table

RUNS_1_3 = ["gpu_node_job_h100_60min_run1.json", "gpu_node_job_h100_60min_run3.json"]
RUNS_4_5 = ["gpu_node_job_h100_60min_run4.json", "gpu_node_job_h100_60min_run5.json"]
BUSY_PCT = 80.0  # a 30 s bucket of the host's CPU at least this busy counts as the busy phase


def _pct(share: float) -> str:
    return f"{share:.1%}"


def _span(lo: float, hi: float, unit: str = "") -> str:
    return f"{lo:.0f}{unit}" if round(lo) == round(hi) else f"{lo:.0f} to {hi:.0f}{unit}"


def host_busy_phases(host: dict) -> str:
    """'89 to 99% from 30 to 180 s, then 8 to 54% (median 10%)': the first run of buckets at least
    BUSY_PCT busy, and the buckets after it."""
    buckets, width = host["busy_pct_by_bucket"], host["bucket_s"]
    start = next((i for i, b in enumerate(buckets) if b >= BUSY_PCT), None)
    if start is None:
        return f"under {BUSY_PCT:.0f}% in every bucket (median {statistics.median(buckets):.0f}%)"
    end = next((i for i in range(start, len(buckets)) if buckets[i] < BUSY_PCT), len(buckets))
    busy, after = buckets[start:end], buckets[end:]
    text = f"{_span(min(busy), max(busy), '%')} from {start * width:.0f} to {end * width:.0f} s"
    if after:
        text += f", then {_span(min(after), max(after), '%')} (median {statistics.median(after):.0f}%)"
    return text


def _run_window(d: dict) -> str:
    """'02:53 to 03:00 UTC': the report's date is written when the job ends."""
    end = dt.datetime.fromisoformat(d["date"])
    start = end - dt.timedelta(seconds=d["wall_s"])
    return f"{start:%H:%M} to {end:%H:%M}"


def _gpu_busy(g: dict) -> str:
    return (f"{_pct(g['share_of_samples_busy_whole_job'])} / {g['util_mean_pct_whole_job']:.1f}% "
            f"({g['util_mean_pct_first_to_last_busy']:.1f}% from first to last busy sample)")


def runs_1_3(run1: dict, run3: dict) -> list[dict]:
    def col(d: dict) -> dict:
        c, g, m = d["catalog"], d["gpu_busy"], d["memory"]
        captions = c["clips_captioned"]
        rate = fixed(1)(d["video_hours_per_gpu_hour"])
        if not captions and d["video_hours_per_gpu_hour"]:
            rate += " (ingest only: no caption landed)"
        kept = f"{c['clips']:,} / {c['clips_kept']:,}"
        return {"sources": f"{c['sources_done']} of {d['footage']['videos']} ({d['budget_s']:.0f} s)",
                "clips": kept, "hours": fixed(1)(c["video_hours_done"]) if c["video_hours_done"] else "0",
                "captions": str(captions), "rate": rate if d["video_hours_per_gpu_hour"] else "0",
                "first_busy": f"{whole(g['first_busy_s'])} s", "busy": _gpu_busy(g),
                "rss": f"{m['tree_rss_peak_gib']:.1f} GiB ({m['processes_peak']} processes)"}
    a, b = col(run1), col(run3)
    labels = [("sources done in the budget", "sources"), ("clips committed / kept (deduplicated)", "clips"),
              ("video-hours through ingest, scoring and decisions", "hours"), ("captions committed", "captions"),
              ("video-hours per GPU-hour (hours done / job hours)", "rate"),
              ("GPU first busy (the CLIP actor's first batch)", "first_busy"),
              ("GPU busy (200 ms samples) / mean utilisation", "busy"), ("process-tree RSS peak", "rss")]
    headline = {"sources", "hours", "captions", "rate"}  # run 3's figures the section is about
    bold = ("run 3 (long sources in pieces)",)
    return [{"what": label, "a": a[key], "b": b[key], "_bold": bold if key in headline else ()}
            for label, key in labels]


def _stage(d: dict, name: str) -> dict | None:
    return next((s for s in d["catalog"]["stage_stats"]["stage_stats"] if s["stage"] == name), None)


def _sources_done_by(d: dict) -> str:
    """The end of the 30 s bucket in which the last source was done (the timeline's resolution)."""
    t = d["catalog"]["timeline"]
    done, total = 0, d["footage"]["videos"]
    for start in sorted(t["sources_done"], key=float):
        done += t["sources_done"][start]
        if done >= total:
            return f"by {float(start) + t['bucket_s']:.0f} s"
    return f"{done} of {total}"


def runs_4_5(run4: dict, run5: dict) -> list[dict]:
    def col(d: dict) -> dict:
        c, g, m = d["catalog"], d["gpu_busy"], d["memory"]
        first, last = c["timeline"]["first_last_caption_s"]
        captioned = str(c["clips_captioned"])
        if first is not None:
            captioned += f" (one commit, at {first:.0f} s)" if first == last else f" ({first:.0f} to {last:.0f} s)"
        return {"budget": f"{d['budget_s']:.0f} s / {'yes' if d['stopped_at_budget'] else 'no'}",
                "sources": _sources_done_by(d), "clips": f"{c['clips']:,} / {c['clips_kept']:,}",
                "setup": _stage(d, "caption")["setup_s"], "captioned": captioned, "n_captioned": c["clips_captioned"],
                "rate": fixed(1)(d["video_hours_per_gpu_hour"]),
                "busy": f"{_pct(g['share_of_samples_busy_whole_job'])} / {g['util_mean_pct_whole_job']:.1f}%",
                "host": host_busy_phases(d["host_cpu"]),
                "memory": f"{fixed(1)(m['tree_rss_peak_gib'])} / {fixed(1)(g['memory_peak_gib'])} GiB"}
    a, b = col(run4), col(run5)
    rows = [("budget / stopped at it", "budget"),
            ("all 15 sources done (1.0 video-hour through ingest, scoring, decisions, dedup; 30 s buckets)", "sources"),
            ("clips / kept", "clips"), ("caption actor set-up (model load and warm-up compiles)", "setup"),
            ("clips captioned (long 160 tokens, short 32 each)", "captioned"),
            ("video-hours per GPU-hour (hours done through ingest / job hours)", "rate"),
            ("GPU busy: share of 200 ms samples / mean utilisation", "busy"),
            ("host CPU busy, 30 s buckets", "host"), ("process-tree RSS peak / GPU memory peak", "memory")]
    out = [{"what": "time (UTC)", "a": _run_window(run4), "b": _run_window(run5)}]
    for label, key in rows:
        row = {"what": label, "a": a[key], "b": b[key]}
        if key == "setup":  # the shorter set-up in bold
            row.update(a=f"{a[key]:.0f} s", b=f"{b[key]:.0f} s", _bold=("run 5" if b[key] < a[key] else "run 4",))
        if key == "captioned" and a["n_captioned"] != b["n_captioned"]:
            row["_bold"] = ("run 5" if b["n_captioned"] > a["n_captioned"] else "run 4",)
        out.append(row)
    return out


TABLES = [
    Table("gpu_node_runs_1_3", RUNS_1_3, rows=runs_1_3, columns=[
        Col("", "what"), Col("run 1 (before)", "a"), Col("run 3 (long sources in pieces)", "b")]),
    Table("gpu_node_runs_4_5", RUNS_4_5, rows=runs_4_5, columns=[
        Col("", "what"), Col("run 4", "a"), Col("run 5", "b")]),
]
