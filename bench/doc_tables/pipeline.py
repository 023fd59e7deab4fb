"""Whole-pipeline runs: filter before you encode (issue 22), the multi-process Ray run (issue 12)."""

from __future__ import annotations

import re

from doc_tables.spec import Col, Table


def _short_run(label: str) -> str:
    """'before (244c22370f... 244c223)' -> 'before (244c223)'."""
    m = re.match(r"^(\w+) \((?:\S+ )?(\w{7})\)$", label)
    return f"{m.group(1)} ({m.group(2)})" if m else label


def filter_first_rows(ray: dict, stages: dict) -> list[dict]:
    rows = [{**r, "what": "`vidcorpus run`, Ray, 2 CPUs"} for r in ray["results"]]
    rows += [{**r, "what": "CPU stages in one process", "clips_per_s": None} for r in stages["results"]]
    return [{**r, "run": _short_run(r["run"])} for r in rows]


TABLES = [
    Table("filter_first", ["filter_first_2cpu.json", "filter_first_cpu_stages.json"], rows=filter_first_rows,
          columns=[
              Col("run", "run"),
              Col("what", "what"),
              Col("wall s", "seconds", "{:.1f}"),
              Col("CPU s", "cpu_seconds", "{:.2f}"),
              Col("clips/s (wall)", "clips_per_s", "{:.3f}"),
              Col("clips per CPU s", "clips_per_cpu_s", "{:.3f}"),
              Col("clips encoded", "encoded"),
          ]),
    Table("pipeline_ray_24", ["pipeline_24.json"], rows=lambda d: [
        {"run": "single process", "seconds": d["single_s"], "clips_s": f"{d['single_clips_s']:.2f}"},
        {"run": f"local Ray, 2 CPUs (Ray start {d['ray_start_s']:.1f} s included)", "seconds": d["ray_s"],
         "clips_s": f"{d['ray_clips_s']:.2f}"},
        {"run": "Ray / single", "seconds": f"{d['speedup']:.2f}x"}], columns=[
        Col("run", "run"), Col("seconds", "seconds", lambda v: v if isinstance(v, str) else f"{v:.1f}"),
        Col("clips/s", "clips_s")]),
]


RUN6 = "gpu_node_job_h100_60min_run6.json"


def run6_stage_rows(d: dict) -> list[dict]:
    """The run's per-stage statistics as the catalog recorded them (`stage_stats`), in pipeline order;
    the caption stage's work without its set-up (model load and warm-up compiles) beside it."""
    rows = []
    for r in d["catalog"]["stage_stats"]["stage_stats"]:
        rows.append({**r, "work_after_setup_s": r["work_s"] - r["setup_s"] if r["setup_s"] >= 1 else None,
                     "_bold": ("stage",) if r["bound_by"] else ()})
    return rows


TABLES.append(Table("gpu_node_run6_stages", [RUN6], rows=run6_stage_rows, columns=[
    Col("stage", "stage"), Col("rows in", "rows_in"), Col("workers", "workers"),
    Col("work s (batches' wall, summed over workers)", "work_s", "{:,.1f}"),
    Col("of it set-up s", "setup_s", "{:.1f}"), Col("work after set-up s", "work_after_setup_s", "{:.1f}", "-"),
    Col("wait for input s", "wait_input_s", "{:.0f}"), Col("wait for output s", "wait_output_s", "{:.0f}"),
    Col("GPU busy share", "gpu_busy_share", "{:.1%}", "-")]))

TABLES.append(Table("caption_stage_h100_run6", ["caption_stage_h100_run6.json"], rows=lambda d: [
    {**r, "round": k + 1, "rows": d["rows"]} for k, r in enumerate(d["runs"])], columns=[
    Col("round", "round"), Col("clips (one stage call)", "rows"), Col("wall s", "wall_s", "{:.1f}"),
    Col("clips/s", "clips_per_s", "{:.1f}"), Col("main thread CPU s", "main_thread_cpu_s", "{:.1f}"),
    Col("GPU busy share", "gpu_busy_share", "{:.0%}")]))


FILTER_FIRST_STAGES = "filter_first_cpu_stages_3videos_2026-12-06.json"
STAGE_ROWS = [("split (PySceneDetect, scaled decode)", "SplitStage"),
              ("extract (before: every shot; after: the kept ones)", "ExtractStage"),
              ("technical (after: one decode of the source for technical, motion, stills and first frames)",
               "TechnicalStage"),
              ("motion", "MotionStage")]


def filter_first_stage_rows(d: dict) -> list[dict]:
    """CPU seconds of each CPU stage, before and after, in one process (bench_filter_first.py --cpu-stages-only)."""
    before, after = d["results"]
    rows = [{"stage": "code", "before": _short_run(before["run"]), "after": _short_run(after["run"])}]
    for label, name in STAGE_ROWS:
        rows.append({"stage": label, "before": f"{before['stage_cpu_seconds'][name]:.2f}",
                     "after": f"{after['stage_cpu_seconds'][name]:.2f}"})
    rows.append({"stage": "all CPU stages (download, probe and decide included)",
                 "before": f"{before['cpu_seconds']:.2f}", "after": f"{after['cpu_seconds']:.2f}"})
    return rows


TABLES.append(Table("filter_first_stage_cpu", [FILTER_FIRST_STAGES], rows=filter_first_stage_rows, columns=[
    Col("stage (CPU s)", "stage"), Col("before", "before"), Col("after", "after")]))


RUN7 = "gpu_node_job_h100_60min_run7.json"


def _stage_work(d: dict) -> dict[str, dict]:
    return {r["stage"]: r for r in d["catalog"]["stage_stats"]["stage_stats"]}


def run6_run7_stage_rows(d6: dict, d7: dict) -> list[dict]:
    """Per stage, the work (batches' wall summed over workers) of run 6 beside run 7; the bounding stage in bold."""
    s6, s7 = _stage_work(d6), _stage_work(d7)
    return [{"stage": name, "w6": s6[name]["work_s"], "w7": r["work_s"], "set7": r["setup_s"],
             "ratio": r["work_s"] / s6[name]["work_s"] if s6.get(name, {}).get("work_s") else None,
             "_bold": ("stage",) if r["bound_by"] else ()} for name, r in s7.items() if name in s6]


def run6_run7_summary(d6: dict, d7: dict) -> list[dict]:
    def one(label, d):
        modes = d["catalog"].get("extract_modes") or {}
        return {"run": label, "wall": d["wall_s"], "vh": d["video_hours_per_gpu_hour"], "kept": d["clips_kept"],
                "copied": f"{modes.get('copy', 0)} of {d['clips_kept']}" if modes else "0 (precise only)",
                "gpu": d["gpu_busy"]["share_of_samples_busy_whole_job"],
                "cpu": " ".join(f"{v:.0f}" for v in d["host_cpu"]["busy_pct_by_bucket"]),
                "rss": d["memory"]["tree_rss_peak_gib"]}
    return [one("run 6 (8af37ba)", d6), one("run 7", d7)]


TABLES.append(Table("gpu_node_run6_run7", [RUN6, RUN7], rows=run6_run7_summary, columns=[
    Col("run", "run"), Col("wall s (1 h of 720p)", "wall", "{:.0f}"), Col("video-hours per GPU-hour", "vh", "{:.2f}"),
    Col("clips kept", "kept"), Col("kept clips stream-copied", "copied"), Col("GPU busy share", "gpu", "{:.1%}"),
    Col("host CPU busy % per 30 s", "cpu"), Col("RSS peak GiB", "rss", "{:.1f}")]))
TABLES.append(Table("gpu_node_run7_stages", [RUN6, RUN7], rows=run6_run7_stage_rows, columns=[
    Col("stage", "stage"), Col("run 6 work s", "w6", "{:,.1f}"), Col("run 7 work s", "w7", "{:,.1f}"),
    Col("run 7 / run 6", "ratio", "{:.2f}", "-"), Col("run 7 set-up s", "set7", "{:.1f}")]))


def _cache_hits(d: dict) -> str:
    ind, aot = d["inductor_counters"], d["aot_autograd_counters"]
    return (f"FX graph {ind.get('fxgraph_cache_hit', 0)} hit / {ind.get('fxgraph_cache_miss', 0)} miss, "
            f"AOTAutograd {aot.get('autograd_cache_hit', 0)} hit / {aot.get('autograd_cache_miss', 0)} miss")


def caption_warmup_rows(cold: dict, warm: dict) -> list[dict]:
    """The caption stage's set-up in a fresh process: cold, then with the caches the first one left."""
    hits = _cache_hits
    return [{"process": "first (empty cache: a fresh node)", "setup": cold["setup_s"], "caches": hits(cold)},
            {"process": "second (the caches the first left)", "setup": warm["setup_s"], "caches": hits(warm)}]


TABLES.append(Table("caption_warmup_h100", ["caption_warmup_h100_cold.json", "caption_warmup_h100_warm.json"],
                    rows=caption_warmup_rows, columns=[
                        Col("process", "process"), Col("caption set-up s (load, compiles, warm-up batches)", "setup",
                                                       "{:.1f}"), Col("compile caches", "caches")]))


def caption_warmup_cpu_rows(cold: dict, *runs: dict) -> list[dict]:
    """A tiny model's caption set-up on the CPU: cold, a fresh node with the artifacts, a warm node."""
    def row(what, d):
        return {"process": what, "setup": d["setup_s"], "caches": _cache_hits(d),
                "load": f"{d['load_1min_start']:.1f}-{d['load_1min_end']:.1f}"}
    fresh, warm = runs[0::2], runs[1::2]
    return [row("cold (empty Inductor folder, no artifacts)", cold)] + \
        [row(f"fresh node, artifacts hot-loaded (round {i})", d) for i, d in enumerate(fresh, 1)] + \
        [row(f"warm node: its Inductor folder and the artifacts (round {i})", d) for i, d in enumerate(warm, 1)]


TABLES.append(Table("caption_warmup_cpu_tiny", ["caption_warmup_cpu_tiny_cold.json"] + [
    f"caption_warmup_cpu_tiny_{kind}_r{r}.json" for r in (1, 2) for kind in ("fresh_node", "warm")],
    rows=caption_warmup_cpu_rows, columns=[
        Col("process", "process"), Col("caption set-up s", "setup", "{:.1f}"), Col("compile caches", "caches"),
        Col("load (1 min, start-end)", "load")]))


def compile_probe_rows(d: dict) -> list[dict]:
    """The three processes of bench/probe_compile_cache_gpu.py."""
    what = {"cold": "cold (empty local caches; writes the artifacts)",
            "fresh_node": "fresh node (new empty local caches, artifacts hot-loaded)",
            "warm": "warm node (the cold process's local caches, no artifacts)"}
    return [{"process": what[r["mode"]], "first": r["first_call_s"], "load": r["load_s"], "steady": r["steady_call_s"] * 1e3,
             "caches": _cache_hits(r)} for r in d["runs"]]


TABLES.append(Table("compile_cache_probe_h100", ["compile_cache_probe_h100.json"], rows=compile_probe_rows, columns=[
    Col("process", "process"), Col("first call s (compile or cache load)", "first", "{:.2f}"),
    Col("artifacts load s", "load", "{:.2f}"), Col("later call ms", "steady", "{:.1f}"), Col("compile caches", "caches")]))


RUN8A, RUN8B = "gpu_node_job_h100_60min_run8a.json", "gpu_node_job_h100_60min_run8b.json"
RUN8_LABELS = ("run 7", "run 8a: a first job", "run 8b: the next job, compile artifacts found")


def _first_caption(d: dict) -> str:
    first, last = d["catalog"]["timeline"]["first_last_caption_s"]
    return f"{first:.0f} to {last:.0f}" if first is not None else "-"


def _sources_done(d: dict) -> str:
    done = d["catalog"]["timeline"]["sources_done"]
    return f"by {max(int(k) for k in done) + 30} s" if done else "-"


def run8_summary(d7: dict, d8a: dict, d8b: dict) -> list[dict]:
    """Runs 7, 8a and 8b side by side: the rate, when the ingest and the captions ended, the caption set-up."""
    def one(label, d):
        caption = _stage_work(d)["caption"]
        return {"run": label, "wall": d["wall_s"], "vh": d["video_hours_per_gpu_hour"],
                "clips": f"{d['clips_in']} / {d['clips_kept']}", "sources": _sources_done(d),
                "captions": _first_caption(d), "setup": caption["setup_s"],
                "after": caption["work_s"] - caption["setup_s"],
                "gpu": d["gpu_busy"]["share_of_samples_busy_whole_job"],
                "cpu": " ".join(f"{v:.0f}" for v in d["host_cpu"]["busy_pct_by_bucket"]),
                "rss": d["memory"]["tree_rss_peak_gib"]}
    return [one(label, d) for label, d in zip(RUN8_LABELS, (d7, d8a, d8b))]


def run8_stage_rows(d7: dict, d8a: dict, d8b: dict) -> list[dict]:
    """Per stage, the work (batches' wall summed over workers) of runs 7, 8a and 8b; run 8b's bounding stage in bold."""
    s7, sa, sb = _stage_work(d7), _stage_work(d8a), _stage_work(d8b)
    return [{"stage": name, "w7": s7[name]["work_s"], "wa": sa[name]["work_s"], "wb": r["work_s"],
             "setb": r["setup_s"], "ratio": r["work_s"] / s7[name]["work_s"] if s7[name]["work_s"] else None,
             "_bold": ("stage",) if r["bound_by"] else ()} for name, r in sb.items() if name in s7 and name in sa]


TABLES.append(Table("gpu_node_run8", [RUN7, RUN8A, RUN8B], rows=run8_summary, columns=[
    Col("run", "run"), Col("wall s (1 h of 720p)", "wall", "{:.0f}"), Col("video-hours per GPU-hour", "vh", "{:.2f}"),
    Col("clips / kept", "clips"), Col("all sources done (30 s buckets)", "sources"),
    Col("first to last caption s", "captions"), Col("caption set-up s", "setup", "{:.0f}"),
    Col("caption work after set-up s", "after", "{:.0f}"), Col("GPU busy share", "gpu", "{:.1%}"),
    Col("host CPU busy % per 30 s", "cpu"), Col("RSS peak GiB", "rss", "{:.1f}")]))
TABLES.append(Table("gpu_node_run8_stages", [RUN7, RUN8A, RUN8B], rows=run8_stage_rows, columns=[
    Col("stage", "stage"), Col("run 7 work s", "w7", "{:,.1f}"), Col("run 8a work s", "wa", "{:,.1f}"),
    Col("run 8b work s", "wb", "{:,.1f}"), Col("run 8b / run 7", "ratio", "{:.2f}", "-"),
    Col("run 8b set-up s", "setb", "{:.1f}")]))


TABLES.append(Table("extract_skip_720p", ["extract_skip_720p_60s.json"], rows=lambda d: [
    {**r, "modes": ", ".join(f"{n} {m}" for m, n in sorted(r["extract_modes"].items())),
     "code": "before (77209e3^)" if r["variant"] == "before" else f"after ({d['commit'][:7]})",
     "ratio": r["cpu_s"] / d["median_cpu_s"]["before"]} for r in d["runs"]], columns=[
    Col("round", "round"), Col("code", "code"), Col("CPU s", "cpu_s", "{:.2f}"), Col("wall s", "wall_s", "{:.2f}"),
    Col("clips (how written)", "modes"), Col("of before's median CPU", "ratio", "{:.2f}x"),
    Col("1-min load", "load_1min_before", "{:.1f}")]))
