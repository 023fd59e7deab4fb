"""Run 11 on one H100 node (issue 22, 2026-12-07): the caption stage alone with the read-ahead, the
next job from the artifacts `caption-alone` left (no caption came), the NVDEC frame probe and the
source decoders' threads on the node's CPU.

Each cell is a field of a result file or is computed here from it.
"""

from __future__ import annotations

from doc_tables.gpu_node_run10 import _stages
from doc_tables.spec import Col, Table

RUNS = {"run 10a: a first job (no artifacts)": "gpu_node_job_h100_120min_run10a.json",
        "run 9b: the next job (the artifacts of 9a)": "gpu_node_job_h100_120min_run9b.json",
        "run 10b: the next job (the artifacts of 10a), stopped at 285 s": "gpu_node_job_h100_120min_run10b.json",
        "run 11: the next job (the artifacts of caption-alone), stopped at 440 s": "gpu_node_job_h100_120min_run11.json"}


def _cpu(d: dict, *prefixes: str) -> float | None:
    by = (d.get("job_cpu") or {}).get("cpu_s_by_process")
    return sum(v for k, v in by.items() if k.startswith(prefixes)) if by else None


def summary_rows(*runs: dict) -> list[dict]:
    """Per run: totals, when its last clip was committed, its caption set-up (or that it never ended)
    and the CPU of the CPU stages' workers and of the caption actor."""
    rows = []
    for label, d in zip(RUNS, runs):
        cap = _stages(d).get("caption")
        setup = f"{cap['setup_s']:.0f}" if cap else f"not done by {d['wall_s']:.0f}"
        rows.append({"run": label, "wall": d["wall_s"], "hours": d["video_hours_processed"],
                     "last_clip": d["catalog"]["timeline"]["first_last_clip_s"][1],
                     "captioned": d["catalog"]["clips_captioned"], "setup": setup,
                     "stages_cpu": _cpu(d, "ray::MapBatches", "ray::write_shard"),
                     "actor_cpu": _cpu(d, "ray::StageChain"), "gpu": d["gpu_busy"]["share_of_samples_busy_whole_job"],
                     "util": d["gpu_busy"]["util_mean_pct_whole_job"]})
    return rows


def stage_rows(d10a: dict, d11: dict) -> list[dict]:
    """The CPU stages' work (their batches' wall time summed over workers) per row in, 10a against 11
    (run 11's stage table was last written at 367 s, with 29 of its 30 sources split)."""
    a, b = _stages(d10a), _stages(d11)
    rows = []
    for name in ("split", "technical", "motion", "clip", "extract"):
        per_a, per_b = a[name]["work_s"] / a[name]["rows_in"], b[name]["work_s"] / b[name]["rows_in"]
        rows.append({"stage": name, "rows": f"{a[name]['rows_in']:,} / {b[name]['rows_in']:,}",
                     "a": per_a, "b": per_b, "ratio": per_b / per_a})
    return rows


ALONE = {"run 9": "caption_stage_alone_h100_run9.json", "run 11": "caption_stage_alone_h100_run11.json"}


def alone_rows(d9: dict, d11: dict) -> list[dict]:
    rows = []
    for label, d in zip(ALONE, (d9, d11)):
        for r in d["runs"]:
            rows.append({"run": label, "batches": f"{r.get('batches', 1)} x {d['rows']}, {r.get('in_flight', 1)} at a time",
                         "wall": r["wall_s"], "rate": r["clips_per_s"], "gpu": r.get("gpu_busy_share"),
                         "cpu": r.get("process_cpu_s"), "setup": d["setup_and_first_batch_s"]})
    return rows


PROBES = ["probe_nvdec_h100_edited_720p.json", "probe_nvdec_h100_bikes.json"]


def probe_rows(*probes: dict) -> list[dict]:
    """Per video and decoder: frames matched by pts, planes and RGB identical to software decoding, the
    largest RGB difference, and the decode loop's wall and CPU (planes copied and to_rgb included)."""
    rows = []
    for d in probes:
        video = d["video"].rsplit("/", 1)[-1]
        sw = d["software"]
        size = "x".join(map(str, sw["first_frame_meta"]["size"]))
        rows.append({"video": f"{video} ({size})", "way": "software (reference)", "frames": sw["frames"],
                     "format": sw["first_frame_meta"]["format"], "wall": sw["wall_s"], "cpu": sw["cpu_s"]})
        for way in ("h264_hwaccel_cuda", "h264_cuvid"):
            w = d.get(way)
            if not w or "frames" not in w:
                continue
            rows.append({"video": f"{video} ({size})", "way": way, "frames": w["frames"],
                         "format": w["first_frame_meta"]["format"],
                         "planes": f"{w['identical_luma']} / {w['identical_chroma']}",
                         "rgb": f"{w['identical_rgb']} (max {w['max_abs_rgb']})", "wall": w["wall_s"], "cpu": w["cpu_s"]})
    return rows


TABLES = [
    Table("gpu_node_run11", list(RUNS.values()), rows=summary_rows, columns=[
        Col("run", "run"), Col("wall s", "wall", "{:.0f}"), Col("video-hours done", "hours", "{:.1f}"),
        Col("last clip committed s", "last_clip", "{:.0f}"), Col("clips captioned", "captioned"),
        Col("caption set-up s", "setup"), Col("CPU stages' workers CPU s", "stages_cpu", "{:,.0f}", "-"),
        Col("caption actor CPU s", "actor_cpu", "{:,.0f}", "-"), Col("GPU busy share", "gpu", "{:.1%}"),
        Col("GPU util mean %", "util", "{:.1f}")]),
    Table("gpu_node_run11_stages", [RUNS["run 10a: a first job (no artifacts)"],
                                    RUNS["run 11: the next job (the artifacts of caption-alone), stopped at 440 s"]],
          rows=stage_rows, columns=[
        Col("stage", "stage"), Col("rows in (10a / 11)", "rows"), Col("run 10a work s a row", "a", "{:.3f}"),
        Col("run 11 work s a row", "b", "{:.3f}"), Col("11 / 10a", "ratio", "{:.2f}")]),
    Table("caption_alone_run11", list(ALONE.values()), rows=alone_rows, columns=[
        Col("caption-alone", "run"), Col("batches", "batches"), Col("wall s", "wall", "{:.1f}"),
        Col("clips/s", "rate", "{:.2f}"), Col("GPU busy share", "gpu", "{:.1%}", "-"),
        Col("process CPU s", "cpu", "{:,.0f}", "-"), Col("set-up and first batch s", "setup", "{:.0f}")]),
    Table("nvdec_probe_h100", PROBES, rows=probe_rows, columns=[
        Col("video", "video"), Col("decoder", "way"), Col("frames", "frames"), Col("frames' format", "format"),
        Col("luma / chroma planes identical", "planes", missing="-"), Col("RGB (to_rgb) identical", "rgb", missing="-"),
        Col("wall s", "wall", "{:.2f}"), Col("CPU s", "cpu", "{:.2f}")]),
]

# run 11 per 30 s, as run 10a's table (bench/doc_tables/gpu_node_run9.py's timeline_rows)
from doc_tables.gpu_node_run9 import TIMELINE_STAGES, timeline_rows  # noqa: E402

TABLES.append(Table("gpu_node_run11_timeline", [RUNS["run 11: the next job (the artifacts of caption-alone), stopped at 440 s"]],
                    rows=timeline_rows, columns=[
    Col("s", "t"), Col("host CPU busy %", "cpu", "{:.0f}", "-"), Col("GPU busy share", "gpu", "{:.0%}", "-"),
    Col("GPU util mean %", "util", "{:.0f}", "-"), Col("sources done", "done"), Col("captions written", "captions"),
    *[Col(f"{s} busy s", s, "{:.0f}", "") for s in TIMELINE_STAGES]]))
