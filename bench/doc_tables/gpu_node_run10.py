"""The job on one H100 node after run 9 (issue 22, run 10, 2026-12-07): x264's preset for precise
clips, the caption actor's read-ahead, and the job again.

Each cell is a field of a result file or is computed here from it.
"""

from __future__ import annotations

from doc_tables.spec import Col, Table

PRESETS = "clip_preset_cpu.json"


def preset_rows(d: dict) -> list[dict]:
    """bench/bench_clip_preset.py: per video and preset, CPU a frame, bytes and luma PSNR, against the
    first preset listed (veryfast, the default before run 10)."""
    return [{"video": f"{v['video']} ({v['size']}, {v['frames']} frames)", **p} for v in d["videos"] for p in v["presets"]]


TABLES = [
    Table("clip_preset_cpu", [PRESETS], rows=preset_rows, columns=[
        Col("video", "video"), Col("preset (crf 20)", "preset"), Col("CPU ms a frame", "cpu_ms_per_frame", "{:.2f}"),
        Col("of veryfast", "cpu_of_first", "{:.2f}x"), Col("kB", "kbytes", "{:,.0f}"),
        Col("bytes of veryfast", "bytes_of_first", "{:.2f}x"), Col("PSNR-Y dB", "psnr_y_db", "{:.2f}"),
        Col("PSNR-Y minus veryfast's dB", "psnr_minus_first_db", "{:+.2f}")]),
]


RUNS = {"run 9a: a first job (before)": "gpu_node_job_h100_120min_run9a.json",
        "run 10a: a first job": "gpu_node_job_h100_120min_run10a.json",
        "run 9b: the next job (before)": "gpu_node_job_h100_120min_run9b.json",
        "run 10b: the next job, stopped at 285 s": "gpu_node_job_h100_120min_run10b.json"}


def _stages(d: dict) -> dict[str, dict]:
    return {r["stage"]: r for r in d["catalog"]["stage_stats"]["stage_stats"]}


def _done_by(d: dict, until_s: int) -> int:
    """Sources marked done in the 30 s buckets that end by ``until_s``."""
    return sum(n for k, n in d["catalog"]["timeline"]["sources_done"].items() if int(k) + 30 <= until_s)


def summary_rows(*runs: dict) -> list[dict]:
    """Per run: the report's totals; the caption stage's busy time after its set-up (its batches'
    union, which the read-ahead's overlap leaves true) and its clips over it."""
    rows = []
    for label, d in zip(RUNS, runs):
        cap = _stages(d)["caption"]
        after = cap["busy_s"] - cap["setup_s"]
        first, last = d["catalog"]["timeline"]["first_last_caption_s"]
        rows.append({"run": label, "wall": d["wall_s"], "hours": d["video_hours_processed"],
                     "vh": d["video_hours_per_gpu_hour"], "done300": _done_by(d, 300),
                     "captions": f"{first:.0f} to {last:.0f}", "captioned": d["catalog"]["clips_captioned"],
                     "setup": cap["setup_s"], "after": after, "rate": cap["rows_in"] / after,
                     "gpu": d["gpu_busy"]["share_of_samples_busy_whole_job"],
                     "cpu": " ".join(f"{v:.0f}" for v in d["host_cpu"]["busy_pct_by_bucket"]),
                     "job_cpu": (d.get("job_cpu") or {}).get("cpu_s"), "rss": d["memory"]["tree_rss_peak_gib"]})
    return rows


def stage_rows(d9a: dict, d10a: dict) -> list[dict]:
    """Each stage's work (its batches' wall time summed over workers) per video-hour, the two whole
    first jobs; a stage that only run 10a has shows '-' before."""
    s9, s10 = _stages(d9a), _stages(d10a)
    h9, h10 = d9a["video_hours_processed"], d10a["video_hours_processed"]
    rows = []
    for name, r in s10.items():
        before = s9[name]["work_s"] / h9 if name in s9 else None
        now = r["work_s"] / h10
        rows.append({"stage": name, "w9": before, "w10": now, "ratio": now / before if before else None,
                     "busy": r["busy_s"], "batches": f"{r['batches']} / {r['workers']}"})
    return rows


def job_cpu_rows(d10a: dict, d10b: dict) -> list[dict]:
    """bench/job_timeline.py's TreeCpu: the job's process tree by process name (a Ray worker is named
    by the last task it ran, so a CPU stage's worker that wrote a shard last counts as write_shard)."""
    a, b = d10a["job_cpu"], d10b["job_cpu"]
    names = list(dict.fromkeys([*a["cpu_s_by_process"], *b["cpu_s_by_process"]]))
    rows = [{"name": n, "a": a["cpu_s_by_process"].get(n), "b": b["cpu_s_by_process"].get(n)} for n in names]
    rows.append({"name": "**all (share of 16 cores over the job)**",
                 "a": f"{a['cpu_s']:,.0f} ({a['busy_share_of_cores']:.0%})", "b": f"{b['cpu_s']:,.0f} ({b['busy_share_of_cores']:.0%})"})
    return rows


def _num(v):
    return f"{v:,.1f}" if isinstance(v, (int, float)) else (v or "-")


TABLES += [
    Table("gpu_node_run10", list(RUNS.values()), rows=summary_rows, columns=[
        Col("run", "run"), Col("wall s", "wall", "{:.0f}"), Col("video-hours done", "hours", "{:.1f}"),
        Col("video-hours per GPU-hour", "vh", "{:.2f}"), Col("sources done by 300 s (of 30)", "done300"),
        Col("first to last caption s", "captions"), Col("clips captioned", "captioned"),
        Col("caption set-up s", "setup", "{:.0f}"), Col("caption busy after set-up s", "after", "{:.0f}"),
        Col("caption clips/s over it", "rate", "{:.1f}"), Col("GPU busy share", "gpu", "{:.1%}"),
        Col("host CPU busy % per 30 s", "cpu"), Col("job's CPU s", "job_cpu", "{:,.0f}", "-"),
        Col("RSS peak GiB", "rss", "{:.1f}")]),
    Table("gpu_node_run10_stages", [RUNS["run 9a: a first job (before)"], RUNS["run 10a: a first job"]],
          rows=stage_rows, columns=[
        Col("stage", "stage"), Col("run 9a work s per video-hour", "w9", "{:,.1f}", "-"),
        Col("run 10a work s per video-hour", "w10", "{:,.1f}"), Col("10a / 9a", "ratio", "{:.2f}", "-"),
        Col("run 10a busy s", "busy", "{:,.0f}"), Col("run 10a batches / workers", "batches")]),
    Table("gpu_node_run10_job_cpu", [RUNS["run 10a: a first job"], RUNS["run 10b: the next job, stopped at 285 s"]],
          rows=job_cpu_rows, columns=[
        Col("process (Ray workers by their last task)", "name"), Col("run 10a CPU s", lambda r: _num(r["a"])),
        Col("run 10b CPU s (285 s)", lambda r: _num(r["b"]))]),
]

# run 10a per 30 s, as run 9b's table (bench/doc_tables/gpu_node_run9.py's timeline_rows)
from doc_tables.gpu_node_run9 import TIMELINE_STAGES, timeline_rows  # noqa: E402

TABLES.append(Table("gpu_node_run10a_timeline", [RUNS["run 10a: a first job"]], rows=timeline_rows, columns=[
    Col("s", "t"), Col("host CPU busy %", "cpu", "{:.0f}", "-"), Col("GPU busy share", "gpu", "{:.0%}", "-"),
    Col("GPU util mean %", "util", "{:.0f}", "-"), Col("sources done", "done"), Col("captions written", "captions"),
    *[Col(f"{s} busy s", s, "{:.0f}", "") for s in TIMELINE_STAGES]]))
