"""The CPU-only path against video2dataset 1.3.0 (issue 22, Build 5): bench/cpu_vs_video2dataset.py,
and the CPU seconds per stage (bench/stage_cpu.py)."""

from __future__ import annotations

from doc_tables.spec import Col, Table

SHORT_RUNS = {3: "3 (vidcorpus first)", 4: "4 (video2dataset first)", 5: "5 (vidcorpus first)"}
LONG_RUNS = {8: "8 (vidcorpus first, load 14)", 9: "9 (video2dataset first, load 6)",
             10: "10 (vidcorpus first, quiet box: load 6.2 at the end, from the run itself; "
                 "23:09 UTC, with the cached detection scalers)"}


def _files(runs: dict[int, str]) -> list[str]:
    return [f"cpu_vs_video2dataset_run{n}.json" for n in runs]


def _side(d: dict, name: str) -> dict:
    return d["vidcorpus" if name == "vidcorpus" else "video2dataset"]


def short_rows(*files: dict) -> list[dict]:
    rows = [{"run": label, "ours": d["vidcorpus"], "theirs": d["video2dataset"],
             "ratio": d["ratio_vidcorpus_over_v2d_clips_per_s"]} for d, label in zip(files, SHORT_RUNS.values())]
    ours = min((r["ours"] for r in rows), key=lambda s: s["wall_s"])
    theirs = min((r["theirs"] for r in rows), key=lambda s: s["wall_s"])
    rows.append({"run": "best of the three, each side", "ours": ours, "theirs": theirs,
                 "ratio": ours["clips_per_s"] / theirs["clips_per_s"]})
    for r in rows:  # the worst and the fairest ratio are the headline figures
        r["_bold"] = ("vidcorpus / video2dataset",) if r is rows[-1] or r["ratio"] < 0.5 else ()
    return rows


def long_rows(*files: dict) -> list[dict]:
    return [{"run": label, "ours": d["vidcorpus"], "theirs": d["video2dataset"],
             "ratio": d["ratio_vidcorpus_over_v2d_clips_per_s"],
             # both sides read the same input video: video seconds per second go as 1 / wall time
             "seconds_ratio": d["video2dataset"]["wall_s"] / d["vidcorpus"]["wall_s"],
             "_bold": ("clips/s ratio",)} for d, label in zip(files, LONG_RUNS.values())]


def _clips(side: str):
    return lambda r: f"{r[side]['clips_written']} ({r[side]['clips_per_s']:.2f})"


def stage_rows(old1: dict, old2: dict, new1: dict, new2: dict) -> list[dict]:
    def pair(a: dict, b: dict, stage: str | None) -> str:
        va, vb = (x["stages"][stage]["cpu_s"] if stage else x["cpu_s_total"] for x in (a, b))
        return f"{va:.2f} / {vb:.2f}"
    stages = ("split", "technical", "motion", "extract")
    return [{"code": f"{code}, run 1 / run 2", **{s: pair(a, b, s) for s in stages}, "total": pair(a, b, None)}
            for code, a, b in (("old", old1, old2), ("new", new1, new2))]


def run11_rows(run11: dict, superfast: dict) -> list[dict]:
    def row(label: str, side: dict, note: str) -> dict:
        cpu = side["cpu"]
        return {"side": label, "wall_s": side["wall_s"],
                "clips": f"{side['clips_written']} ({side['clips_per_s']:.2f})",
                "cpu": f"{cpu['cpu_s']:.1f}{note}", "busy": cpu["busy_share_of_cores"],
                "buckets": " ".join(f"{b:.2f}".removeprefix("0") if b < 1 else f"{b:.1f}"
                                    for b in cpu["busy_share_by_bucket"])}
    ours, theirs = run11["vidcorpus"], run11["video2dataset"]
    return [row("vidcorpus (defaults)", ours, f" (driver {ours['cpu']['cpu_s_by_process']['python']:.1f})"),
            row("video2dataset 1.3.0", theirs, f" (ffmpeg {theirs['cpu']['cpu_s_by_process']['ffmpeg']:.1f})"),
            row("vidcorpus, `split.clip_preset=superfast`", superfast["vidcorpus"], "")]


TABLES = [
    Table("v2d_short_runs", _files(SHORT_RUNS), rows=short_rows, columns=[
        Col("run (order)", "run"),
        Col("vidcorpus s", "ours.wall_s", "{:.1f}"),
        Col("vidcorpus clips/s", "ours.clips_per_s", "{:.3f}"),
        Col("video2dataset s", "theirs.wall_s", "{:.1f}"),
        Col("video2dataset clips/s", "theirs.clips_per_s", "{:.3f}"),
        Col("vidcorpus / video2dataset", "ratio", "{:.2f}x"),
    ]),
    Table("v2d_long_runs", _files(LONG_RUNS), rows=long_rows, columns=[
        Col("run (order)", "run"),
        Col("vidcorpus s", "ours.wall_s", "{:.1f}"),
        Col("vidcorpus clips (clips/s)", _clips("ours")),
        Col("video2dataset s", "theirs.wall_s", "{:.1f}"),
        Col("video2dataset clips (clips/s)", _clips("theirs")),
        Col("clips/s ratio", "ratio", "{:.2f}x"),
        Col("video seconds/s ratio", "seconds_ratio", "{:.2f}x"),
    ]),
    Table("v2d_stage_cpu", [f"stage_cpu_360p_60s_{c}_run{n}.json" for c in ("old", "new") for n in (1, 2)],
          compact=True, rows=stage_rows, columns=[
              Col("code", "code"), Col("split", "split"), Col("technical", "technical"), Col("motion", "motion"),
              Col("extract", "extract"), Col("total (14 clips, 1,500 frames)", "total"),
          ]),
    Table("v2d_run11", ["cpu_vs_video2dataset_run11.json", "cpu_vs_video2dataset_run11_vidcorpus_superfast.json"],
          compact=True, rows=run11_rows, columns=[
              Col("side", "side"),
              Col("wall s", "wall_s", "{:.1f}"),
              Col("clips (clips/s)", "clips"),
              Col("CPU s of its processes", "cpu"),
              Col("cores busy (of 2)", "busy", "{:.0%}"),
              Col("busy per 10 s", "buckets"),
          ]),
]


def side_by_side_rows(*runs: dict) -> list[dict]:
    """Each run's two sides: wall time, clips, CPU seconds of each side's process tree and its cores' busy share."""
    out = []
    for n, d in enumerate(runs, 1):
        ours, theirs = d["vidcorpus"], d["video2dataset"]
        for label, side in (("vidcorpus (defaults)", ours), ("video2dataset 1.3.0", theirs)):
            out.append({"run": d["_label"] if "_label" in d else n, "side": label, "wall_s": side["wall_s"],
                        "clips": f"{side['clips_written']} ({side['clips_per_s']:.2f})", "cpu_s": side["cpu"]["cpu_s"],
                        "cpu_per_clip": side["cpu"]["cpu_s"] / side["clips_written"],
                        "busy": side["cpu"]["busy_share_of_cores"],
                        "ratio": d["ratio_vidcorpus_over_v2d_clips_per_s"] if side is ours else None})
    return out


SIDE_BY_SIDE_COLUMNS = [Col("run", "run"), Col("side", "side"), Col("wall s", "wall_s", "{:.1f}"),
                        Col("clips (clips/s)", "clips"), Col("CPU s of its processes", "cpu_s", "{:.1f}"),
                        Col("CPU s per clip", "cpu_per_clip", "{:.2f}"), Col("cores busy (of 2)", "busy", "{:.0%}"),
                        Col("clips/s, vidcorpus over video2dataset", "ratio", "**{:.2f}x**", "")]

RUNS_EXACT_COPY = ["cpu_vs_video2dataset_run12_loaded.json", "cpu_vs_video2dataset_run12.json",
                   "cpu_vs_video2dataset_run13.json"]
TABLES.append(Table("v2d_exact_copy", RUNS_EXACT_COPY, rows=lambda *runs: side_by_side_rows(
    *[dict(d, _label=label) for d, label in zip(runs, ("12a", "12b", "13"))]), columns=SIDE_BY_SIDE_COLUMNS))
