"""Shot detection decoded in a child process (issue 23's fifth round at 360p): H100 runs of
bench/shot_speed_ab.sh, the code before against the child, with the same code in process beside it."""

from __future__ import annotations

from doc_tables.formats import whole
from doc_tables.spec import Col, Table

TABLES: list[Table] = []

CHILD_RUNS = {"shot_speed_ab_h100_child_one_thread.json": "one thread in the child",
              "shot_speed_ab_h100_child_pool.json": "scaler pool in the child",
              "shot_speed_ab_h100_child_early_free.json": "slots back once copied, twice the slots (merged)",
              "shot_speed_ab_h100_child_early_free_2.json": "the same, again (next call, same machine)"}


def child_rows(*files: dict) -> list[dict]:
    """Per run and round: a456440 (decoding in process) and the branch, whose default + TransNetV2 row
    decodes in a child (auto on a GPU) and whose ``_in_process`` row is the same code with it off."""
    rows = []
    for (name, label), merged in zip(CHILD_RUNS.items(), files):
        for round_ in ("1", "2"):
            for code in ("before", "after"):
                d = merged.get(f"ab_{code}{round_}_640x360")
                if d is None:
                    continue
                f, cpu = d["frames_per_s"], d.get("cpu_ms_per_frame", {})
                base = f["decode_only_48x27"]
                rows.append({
                    "run": label, "code": f"{'a456440' if code == 'before' else 'child'} ({round_})", "decode": base,
                    "child": f["default_plus_transnetv2"] / base, "child_fps": f["default_plus_transnetv2"],
                    "here_fps": f.get("default_plus_transnetv2_in_process", f["default_plus_transnetv2"]),
                    "here": f.get("default_plus_transnetv2_in_process", f["default_plus_transnetv2"]) / base,
                    "default": f["default"] / base,
                    "default_child": f["default_in_child"] / base if "default_in_child" in f else None,
                    "cpu": cpu.get("default_plus_transnetv2"),
                    "_bold": ("default + TransNetV2 / decode only",) if code == "after" else ()})
    return rows


TABLES.append(Table(
    "shot_speed_child_h100", list(CHILD_RUNS), rows=child_rows, columns=[
        Col("run", "run"), Col("code (round)", "code"), Col("decode only (48x27), frames/s", "decode", whole),
        Col("default + TransNetV2, frames/s", "child_fps", whole),
        Col("default + TransNetV2 / decode only", "child", "{:.2f}"),
        Col("the same code decoded in process, frames/s", "here_fps", whole),
        Col("the same / decode only", "here", "{:.2f}"),
        Col("default / decode only", "default", "{:.2f}"),
        Col("default decoded in a child / decode only", "default_child", "{:.2f}", "-"),
        Col("default + TransNetV2, CPU ms a frame (child's included)", "cpu", "{:.2f}", "-")]))


def child_times_rows(*files: dict) -> list[dict]:
    """The runs' GIL profiles (bench/profile_shot_gil.py, default + TransNetV2, 8 s): the reading
    thread's time a frame (decode: waiting for the child's batches where it decodes)."""
    rows = []
    for (name, label), merged in zip(CHILD_RUNS.items(), files):
        for code in ("before", "after"):
            d = merged.get(f"gil_{code}_640x360")
            if d is None:  # a run without a profile
                continue
            t = d["batch_times"]
            rows.append({"run": label, "code": "a456440" if code == "before" else "child",
                         "fps": d["frames_per_s"], "gil": d["gil_share"], "cpu": d["cpu_ms_per_frame"],
                         **{k: t.get(f"{k}_us_per_frame") for k in ("decode", "wait", "consume", "prepare",
                                                                     "child_decode", "child_wait_free")}})
    return rows


TABLES.append(Table(
    "shot_child_times_h100", list(CHILD_RUNS), rows=child_times_rows, columns=[
        Col("run", "run"), Col("code", "code"), Col("frames/s (profiled)", "fps", whole),
        Col("GIL held, share of the time", "gil", "{:.2f}"), Col("CPU ms a frame", "cpu", "{:.2f}"),
        Col("reading thread: decoding (or waiting for the child), µs a frame", "decode", "{:.0f}"),
        Col("waiting for the pool", "wait", "{:.0f}"), Col("detectors", "consume", "{:.0f}"),
        Col("pool: preparing, thread-µs a frame", "prepare", "{:.0f}"),
        Col("child: decoding thread, µs a frame", "child_decode", "{:.0f}", "-"),
        Col("child: waiting for a free slot", "child_wait_free", "{:.0f}", "-")]))


KNOBS_FILE = "shot_child_knobs_h100_640x360_2min.json"
KNOB_VARIANTS = {"base": "none (b1d1b4d as committed)",
                 "c_sc2": "the child's scaler threads: 2 (4)",
                 "c_sc6": "the child's scaler threads: 6 (4)",
                 "c_dt8": "the child's FFmpeg decoder threads: 8 (FFmpeg's choice)",
                 "cv2_1": "OpenCV's threads in the parent: 1 (16)"}


def knob_rows(merged: dict) -> list[dict]:
    """bench/shot_child_knobs.sh's runs (default + TransNetV2 decoded in a child), rounds interleaved."""
    rows = []
    for round_ in ("1", "2"):
        for name, label in KNOB_VARIANTS.items():
            d = merged.get(f"knob_{name}_{round_}")
            if d is None:
                continue
            f, cpu, base = d["frames_per_s"], d["cpu_ms_per_frame"], d["frames_per_s"]["decode_only_48x27"]
            rows.append({"knob": f"{label} ({round_})", "decode": base,
                         "fps": f["default_plus_transnetv2"], "ratio": f["default_plus_transnetv2"] / base,
                         "cpu": cpu["default_plus_transnetv2"], "load": d["loadavg"][0],
                         "_bold": ("default + TransNetV2 / decode only",) if name == "cv2_1" else ()})
    return rows


TABLES.append(Table(
    "shot_child_knobs_h100", [KNOBS_FILE], rows=knob_rows, columns=[
        Col("knob: value (default) (round)", "knob"), Col("decode only (48x27), frames/s", "decode", whole),
        Col("default + TransNetV2, frames/s", "fps", whole),
        Col("default + TransNetV2 / decode only", "ratio", "{:.2f}"),
        Col("default + TransNetV2, CPU ms a frame (child's included)", "cpu", "{:.2f}"),
        Col("1-min load at start", "load", "{:.1f}")]))

LONG_RUNS = {"shot_speed_child_h100_640x360_2min.json": "2 min (3,000 frames)",
             "shot_speed_child_h100_640x360_30s.json": "30 s (750 frames)"}


def long_rows(*files: dict) -> list[dict]:
    """b1d1b4d (the child, OpenCV's default threads) on a 2-minute and a 30 s edit, one machine."""
    rows = []
    for label, merged in zip(LONG_RUNS.values(), files):
        for round_ in ("1", "2"):
            d = merged.get(f"ab_after{round_}_640x360")
            if d is None:
                continue
            f, cpu, base = d["frames_per_s"], d["cpu_ms_per_frame"], d["frames_per_s"]["decode_only_48x27"]
            rows.append({"edit": f"{label} ({round_})", "decode": base, "fps": f["default_plus_transnetv2"],
                         "ratio": f["default_plus_transnetv2"] / base,
                         "here": f["default_plus_transnetv2_in_process"] / base, "default": f["default"] / base,
                         "cpu": cpu["default_plus_transnetv2"]})
    return rows


TABLES.append(Table(
    "shot_child_long_h100", list(LONG_RUNS), rows=long_rows, columns=[
        Col("edit (round)", "edit"), Col("decode only (48x27), frames/s", "decode", whole),
        Col("default + TransNetV2 (child), frames/s", "fps", whole),
        Col("default + TransNetV2 / decode only", "ratio", "{:.2f}"),
        Col("the same decoded in process / decode only", "here", "{:.2f}"),
        Col("default / decode only", "default", "{:.2f}"),
        Col("default + TransNetV2, CPU ms a frame (child's included)", "cpu", "{:.2f}")]))
