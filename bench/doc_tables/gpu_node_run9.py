"""The job on one H100 node over two hours of footage (issue 22, run 9, 2026-12-07): a first job
and the next one beside run 8b's hour, where each stage's time went, and the caption stage alone.

Each cell is a field of a run's report (bench/gpu_node_job.py) or is computed here from its
timeline, so a summary cannot say more than the report does.
"""

from __future__ import annotations

import statistics

from doc_tables.spec import Col, Table

RUN8B = "gpu_node_job_h100_60min_run8b.json"
RUN9A, RUN9B = "gpu_node_job_h100_120min_run9a.json", "gpu_node_job_h100_120min_run9b.json"
ALONE = "caption_stage_alone_h100_run9.json"
LABELS = ("run 8b: 1 h, the next job (before)", "run 9a: 2 h, a first job", "run 9b: 2 h, the next job")
TIMELINE_STAGES = ("split", "technical", "extract", "caption")


def _stages(d: dict) -> dict[str, dict]:
    return {r["stage"]: r for r in d["catalog"]["stage_stats"]["stage_stats"]}


def _alone_rate(alone: dict) -> float:
    return statistics.median(r["clips_per_s"] for r in alone["runs"])


def _done_span(d: dict) -> str:
    """'150 to 360 s': the 30 s buckets in which sources were marked done (their start to the last's end)."""
    done = sorted(int(k) for k in d["catalog"]["timeline"]["sources_done"])
    return f"{done[0]} to {done[-1] + 30} s" if done else "-"


def caption_in_job(d: dict) -> tuple[float, float]:
    """(work after set-up s, clips per s of it): the caption stage's rows over its batches' time
    after the actor's set-up (model load, compile-cache load, warm-up batches)."""
    caption = _stages(d)["caption"]
    after = caption["work_s"] - caption["setup_s"]
    return after, caption["rows_in"] / after


def summary_rows(d8b: dict, d9a: dict, d9b: dict, alone: dict) -> list[dict]:
    rate_alone = _alone_rate(alone)

    def one(label: str, d: dict) -> dict:
        after, rate = caption_in_job(d)
        first, last = d["catalog"]["timeline"]["first_last_caption_s"]
        return {"run": label, "hours": d["video_hours_processed"], "wall": d["wall_s"],
                "vh": d["video_hours_per_gpu_hour"], "clips": f"{d['clips_in']:,} / {d['clips_kept']:,}",
                "done": _done_span(d), "captions": f"{first:.0f} to {last:.0f}",
                "setup": _stages(d)["caption"]["setup_s"], "after": after,
                "rate": f"{rate:.1f} ({rate / rate_alone:.0%})",
                "gpu": d["gpu_busy"]["share_of_samples_busy_whole_job"],
                "cpu": " ".join(f"{v:.0f}" for v in d["host_cpu"]["busy_pct_by_bucket"]),
                "rss": d["memory"]["tree_rss_peak_gib"]}
    return [one(label, d) for label, d in zip(LABELS, (d8b, d9a, d9b))]


def stage_rows(d8b: dict, d9a: dict, d9b: dict) -> list[dict]:
    """Each stage's work (its batches' wall time summed over workers) per video-hour; run 9b's
    bounding stage (the report's bound_by) in bold."""
    s8, sa, sb = _stages(d8b), _stages(d9a), _stages(d9b)
    h8, ha, hb = (d["video_hours_processed"] for d in (d8b, d9a, d9b))
    rows = []
    for name, r in sb.items():
        if name not in s8 or name not in sa:
            continue
        per8, perb = s8[name]["work_s"] / h8, r["work_s"] / hb
        rows.append({"stage": name, "w8": per8, "wa": sa[name]["work_s"] / ha, "wb": perb,
                     "ratio": perb / per8 if per8 else None, "workers": r["workers"], "batches": r["batches"],
                     "setb": r["setup_s"], "_bold": ("stage",) if r["bound_by"] else ()})
    return rows


def timeline_rows(d: dict) -> list[dict]:
    """Run 9b per 30 s: the host's CPU and the GPU (the report's samplers, from the job's start), and
    from the catalog (from the pipeline run's start, a second or two later): sources done, captions
    written and the busy seconds of the costliest stages (at least one of its batches running)."""
    host, gpu, tl = d["host_cpu"], d["gpu_busy"], d["catalog"]["timeline"]
    busy = tl["stage_busy_s_by_bucket"]
    n = max(len(host["busy_pct_by_bucket"]), len(gpu["busy_share_by_bucket"]))
    rows = []
    for i in range(n):
        key = str(i * 30)
        row = {"t": f"{i * 30}-{i * 30 + 30}",
               "cpu": host["busy_pct_by_bucket"][i] if i < len(host["busy_pct_by_bucket"]) else None,
               "gpu": gpu["busy_share_by_bucket"][i] if i < len(gpu["busy_share_by_bucket"]) else None,
               "util": gpu["util_mean_pct_by_bucket"][i] if i < len(gpu["util_mean_pct_by_bucket"]) else None,
               "done": tl["sources_done"].get(key, 0), "captions": tl["captions_written"].get(key, 0)}
        row.update({s: busy.get(s, {}).get(key) for s in TIMELINE_STAGES})
        rows.append(row)
    return rows


def alone_rows(alone: dict) -> list[dict]:
    return [{"round": i, "clips": alone["rows"], "wall": r["wall_s"], "rate": r["clips_per_s"],
             "cpu": r["main_thread_cpu_s"], "gpu": r.get("gpu_busy_share")} for i, r in enumerate(alone["runs"], 1)]


TABLES = [
    Table("gpu_node_run9", [RUN8B, RUN9A, RUN9B, ALONE], rows=summary_rows, columns=[
        Col("run", "run"), Col("video-hours", "hours", "{:.0f}"), Col("wall s", "wall", "{:.0f}"),
        Col("video-hours per GPU-hour", "vh", "{:.2f}"), Col("clips / kept", "clips"),
        Col("sources done (30 s buckets)", "done"), Col("first to last caption s", "captions"),
        Col("caption set-up s", "setup", "{:.0f}"), Col("caption work after set-up s", "after", "{:.0f}"),
        Col("caption clips/s after set-up (of alone)", "rate"), Col("GPU busy share", "gpu", "{:.1%}"),
        Col("host CPU busy % per 30 s", "cpu"), Col("RSS peak GiB", "rss", "{:.1f}")]),
    Table("gpu_node_run9_stages", [RUN8B, RUN9A, RUN9B], rows=stage_rows, columns=[
        Col("stage", "stage"), Col("run 8b work s per video-hour", "w8", "{:,.1f}"),
        Col("run 9a work s per video-hour", "wa", "{:,.1f}"), Col("run 9b work s per video-hour", "wb", "{:,.1f}"),
        Col("run 9b / run 8b", "ratio", "{:.2f}", "-"), Col("run 9b batches / workers",
                                                          lambda r: f"{r['batches']} / {r['workers']}"),
        Col("run 9b set-up s", "setb", "{:.1f}")]),
    Table("gpu_node_run9b_timeline", [RUN9B], rows=timeline_rows, columns=[
        Col("s", "t"), Col("host CPU busy %", "cpu", "{:.0f}", "-"), Col("GPU busy share", "gpu", "{:.0%}", "-"),
        Col("GPU util mean %", "util", "{:.0f}", "-"), Col("sources done", "done"), Col("captions written", "captions"),
        *[Col(f"{s} busy s", s, "{:.0f}", "") for s in TIMELINE_STAGES]]),
    Table("caption_stage_alone_h100_run9", [ALONE], rows=alone_rows, columns=[
        Col("round", "round"), Col("clips (one stage call)", "clips"), Col("wall s", "wall", "{:.1f}"),
        Col("clips/s", "rate", "{:.1f}"), Col("main thread CPU s", "cpu", "{:.1f}"),
        Col("GPU busy share", "gpu", "{:.0%}", "-")]),
]


def priority_rows(d: dict) -> list[dict]:
    """bench/bench_task_priority.py: per round and mode, the caption batch's median wall time, as a
    multiple of the same round's alone, and what the burners encoded meanwhile."""
    alone = {r["round"]: r["batch_wall_median_s"] for r in d["runs"] if r["burner_frames_per_s"] is None}
    return [{"round": r["round"], "mode": r["mode"], "wall": r["batch_wall_median_s"],
             "x": r["batch_wall_median_s"] / alone[r["round"]], "fps": r["burner_frames_per_s"]}
            for r in d["runs"]]


TABLES.append(Table("task_priority_cpu_tiny", ["task_priority_cpu_tiny.json"], rows=priority_rows, columns=[
    Col("round", "round"), Col("beside the caption stage", "mode"),
    Col("caption batch wall s (median of 3)", "wall", "{:.2f}"), Col("of alone", "x", "{:.1f}x"),
    Col("burners' x264 frames/s", "fps", "{:.1f}", "-")]))

# The caption actor's own niceness (ray.actor_nice): the same bench with this process at 0 or at Ray's 15,
# the burners at 19, in the order they ran
ACTOR_NICE = ["task_priority_cpu_tiny_actor_nice0_1.json", "task_priority_cpu_tiny_actor_nice15_1.json",
              "task_priority_cpu_tiny_actor_nice0_2.json", "task_priority_cpu_tiny_actor_nice15_2.json"]


def actor_nice_rows(*runs: dict) -> list[dict]:
    rows = []
    for i, d in enumerate(runs, 1):
        for r in priority_rows(d):
            rows.append({"run": i, "actor": d["actor_nice"], **r})
    return rows


TABLES.append(Table("task_priority_actor_nice", ACTOR_NICE, rows=actor_nice_rows, columns=[
    Col("run", "run"), Col("caption stage's niceness", "actor"), Col("beside it", "mode"),
    Col("caption batch wall s (median of 3)", "wall", "{:.2f}"), Col("of alone", "x", "{:.2f}x"),
    Col("burners' x264 frames/s", "fps", "{:.1f}", "-")]))
