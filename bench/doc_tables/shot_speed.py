"""Shot detection speed against decoding alone, by resolution (issue 23): on an H100 and two CPU proxies."""

from __future__ import annotations

from doc_tables.formats import whole
from doc_tables.spec import Col, Table

TABLES: list[Table] = []

SWEEP_SIZES = ("1280x720", "960x540", "640x360", "320x180", "160x90")


def resolution_sweep_rows(*files: dict) -> list[dict]:
    """Shot detection against decode-only by resolution on the 2-core machine: frames/s ratios (all
    threads share 2 cores) and, where measured, the busiest thread's (a host with idle cores)."""
    speed, threads = files[:len(SWEEP_SIZES)], dict(zip(("960x540", "640x360"), files[len(SWEEP_SIZES):]))
    rows = []
    for size, d in zip(SWEEP_SIZES, speed):
        f = d["frames_per_s"]
        row = {"size": size, "decode": f["decode_only_48x27"], "frames": d["frames"],
               "both": f["default_plus_transnetv2_feed"] / f["decode_only_48x27"],
               "default": f["default"] / f["decode_only_48x27"], "load": d["loadavg"][0]}
        if size in threads:
            busiest = {r["row"]: max(r["thread_cpu_ms_per_frame"].values()) for r in threads[size]["rows"]}
            row["thread_both"] = busiest["decode_only_48x27"] / busiest["default_plus_transnetv2"]
        rows.append(row)
    return rows


TABLES.append(Table(
    "shot_speed_resolution_cpu",
    [*(f"transnet_speed_cpu_sweep_{s}.json" for s in SWEEP_SIZES),
     "shot_threads_cpu_960x540_sweep.json", "shot_threads_cpu_640x360_sweep.json"],
    rows=resolution_sweep_rows, columns=[
        Col("frames (size)", "size"), Col("frames decoded", "frames", "{:,}"),
        Col("decode only (48x27), frames/s", "decode", whole),
        Col("default + TransNetV2 feed / decode only (2 cores)", "both", "{:.2f}"),
        Col("default / decode only (2 cores)", "default", "{:.2f}"),
        Col("busiest thread: decode only / default + feed", "thread_both", "{:.2f}", "-"),
        Col("1-min load", "load", "{:.1f}")]))


def resolution_h100_rows(*files: dict) -> list[dict]:
    """The sweep on one H100 machine: each row's frames/s against decode-only at that size."""
    rows = []
    for d in files:
        f = d["frames_per_s"]
        rows.append({"size": f"{d['width']}x{d['height']}", "decode": f["decode_only_48x27"],
                     **{k: f[k] / f["decode_only_48x27"] for k in ("transnetv2", "default_plus_transnetv2", "default")},
                     "_bold": ("default + TransNetV2 / decode only",)})
    return rows


TABLES.append(Table(
    "shot_speed_resolution_h100", [f"transnet_sweep_h100_{s}.json" for s in ("1280x720", "960x540", "640x360")],
    rows=resolution_h100_rows, columns=[
        Col("edit (30 s, 750 frames)", "size"), Col("decode only (48x27), frames/s", "decode", whole),
        Col("TransNetV2 / decode only", "transnetv2", "{:.2f}"),
        Col("default + TransNetV2 / decode only", "default_plus_transnetv2", "{:.2f}"),
        Col("default / decode only", "default", "{:.2f}")]))


def _ab_rows(merged: dict, before: str = "before", after: str = "after") -> list[dict]:
    """bench/shot_speed_ab.sh's rows at each size, two interleaved rounds of the earlier code
    (labelled ``before``) and the later (``after``): frames/s against the decode-only run beside it."""
    rows = []
    for size in ("640x360", "960x540", "1280x720"):
        for round_ in ("1", "2"):
            for code, label in (("before", before), ("after", after)):
                d = merged.get(f"ab_{code}{round_}_{size}")
                if d is None:
                    continue
                f = d["frames_per_s"]
                base = f["decode_only_48x27"]
                rows.append({"size": size, "code": f"{label} ({round_})", "decode": base,
                             "both_fps": f["default_plus_transnetv2"],
                             **{k: f[k] / base for k in ("transnetv2", "default_plus_transnetv2", "default") if k in f},
                             "cpu": d.get("cpu_ms_per_frame", {}).get("default_plus_transnetv2"),
                             "_bold": ("default + TransNetV2 / decode only",) if code == "after" else ()})
    return rows


def batched_ab_rows(merged: dict) -> list[dict]:
    """bench/shot_speed_ab.sh on one H100 machine: the code before the batched reader and after."""
    return _ab_rows(merged)


TABLES.append(Table(
    "shot_speed_batched_h100", ["shot_speed_ab_h100.json"], rows=batched_ab_rows, columns=[
        Col("edit (30 s)", "size"), Col("code (round)", "code"),
        Col("decode only (48x27), frames/s", "decode", whole),
        Col("TransNetV2 / decode only", "transnetv2", "{:.2f}"),
        Col("default + TransNetV2 / decode only", "default_plus_transnetv2", "{:.2f}"),
        Col("default / decode only", "default", "{:.2f}"),
        Col("default + TransNetV2, CPU ms a frame", "cpu", "{:.2f}", "-")]))


def batch_knob_rows(merged: dict) -> list[dict]:
    """bench/shot_gil_profile.sh's runs at 360p on one H100 machine: frames/s, against the mean of the
    decode-only runs before and after, and where the reading thread's time went (microseconds a frame)."""
    runs = {k: v for k, v in merged.items() if not k.startswith("_")}
    decode = [v["frames_per_s"] for k, v in runs.items() if "decode_only" in k]
    base = sum(decode) / len(decode)
    rows = []
    for key, d in runs.items():
        k, t = d.get("knobs", {}), d.get("batch_times", {})
        rows.append({"row": d["row"].replace("_48x27", ""), "fps": d["frames_per_s"], "ratio": d["frames_per_s"] / base,
                     "knobs": "-" if not t.get("frames") else
                     f"{k['pool_threads']} threads, {k['ahead']} ahead, batch {k['max_batch']}, cv2 {k['cv2_threads']}",
                     **({f: t[f"{f}_us_per_frame"] for f in ("decode", "wait", "consume", "prepare")} if t.get("frames") else {})})
    return rows


TABLES.append(Table(
    "shot_batch_knobs_h100", ["shot_gil_knobs_h100_640x360.json"], rows=batch_knob_rows, columns=[
        Col("row", "row"), Col("pool threads, batches ahead, frames a batch, OpenCV threads", "knobs"),
        Col("frames/s", "fps", whole), Col("of decode only (mean of 2)", "ratio", "{:.2f}"),
        Col("reading thread: decode, µs a frame", "decode", "{:.0f}", "-"),
        Col("waiting for the pool", "wait", "{:.0f}", "-"), Col("detectors", "consume", "{:.0f}", "-"),
        Col("pool: preparing, thread-µs a frame", "prepare", "{:.0f}", "-")]))


READER_RUNS = (("shot_speed_ab_h100_correl.json", "32e7b60"), ("shot_speed_ab_h100_scratch.json", "1bde715"))


def reader_ab_rows(*files: dict) -> list[dict]:
    """Two bench/shot_speed_ab.sh runs on H100 machines, each the committed batched reader (f51c1ef)
    against a later commit."""
    return [row for merged, (_name, commit) in zip(files, READER_RUNS)
            for row in _ab_rows(merged, "f51c1ef", commit)]


TABLES.append(Table(
    "shot_speed_reader_h100", [name for name, _commit in READER_RUNS], rows=reader_ab_rows, columns=[
        Col("edit (30 s)", "size"), Col("code (round)", "code"),
        Col("decode only (48x27), frames/s", "decode", whole),
        Col("TransNetV2 / decode only", "transnetv2", "{:.2f}"),
        Col("default + TransNetV2 / decode only", "default_plus_transnetv2", "{:.2f}"),
        Col("default + TransNetV2, frames/s", "both_fps", whole),
        Col("default / decode only", "default", "{:.2f}"),
        Col("default + TransNetV2, CPU ms a frame", "cpu", "{:.2f}", "-")]))


def reader_times_rows(*files: dict) -> list[dict]:
    """The GIL profiles of the same runs (bench/profile_shot_gil.py, default + TransNetV2 at 360p, the
    row over and over for 8 s): where the reading thread's time went, and the GIL's share of the time."""
    rows = []
    for merged, (_name, commit) in zip(files, READER_RUNS):
        for code in ("before", "after"):
            d = merged[f"gil_{code}_640x360"]
            t = d["batch_times"]
            rows.append({"code": "f51c1ef" if code == "before" else commit, "fps": d["frames_per_s"],
                         "gil": d["gil_share"], "cpu": d["cpu_ms_per_frame"],
                         **{f: t[f"{f}_us_per_frame"] for f in ("decode", "wait", "consume", "prepare")}})
    return rows


TABLES.append(Table(
    "shot_reader_times_h100", [name for name, _commit in READER_RUNS], rows=reader_times_rows, columns=[
        Col("code", "code"), Col("frames/s (profiled)", "fps", whole),
        Col("GIL held, share of the time", "gil", "{:.2f}"),
        Col("CPU ms a frame", "cpu", "{:.2f}"),
        Col("reading thread: decode, µs a frame", "decode", "{:.0f}"), Col("waiting for the pool", "wait", "{:.0f}"),
        Col("detectors", "consume", "{:.0f}"), Col("pool: preparing, thread-µs a frame", "prepare", "{:.0f}")]))

KNOB_NAMES = {"base": "none (1bde715 as committed)", "si=0.001": "switch interval 1 ms (Python's 5 ms)",
              "si=0.0002": "switch interval 0.2 ms", "threads=6": "6 pool threads (4)",
              "keep": "malloc keeps freed memory (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ 256 MB)"}


def knob_rows(merged: dict, names: dict | None = None) -> list[dict]:
    """bench/shot_knobs.sh at 360p on one H100 machine, two interleaved rounds (``names``: the knobs' labels)."""
    rows = []
    for round_ in ("1", "2"):
        for knob, label in (names or KNOB_NAMES).items():
            d = merged.get(f"{knob}_r{round_}_640x360")
            if d is None:
                continue
            f = d["frames_per_s"]
            base = f["decode_only_48x27"]
            rows.append({"knob": f"{label} ({round_})", "decode": base, "both_fps": f["default_plus_transnetv2"],
                         "both": f["default_plus_transnetv2"] / base, "default": f["default"] / base,
                         "cpu": d["cpu_ms_per_frame"]["default_plus_transnetv2"]})
    return rows


TABLES.append(Table(
    "shot_knobs_h100", ["shot_knobs_h100_640x360.json"], rows=knob_rows, columns=[
        Col("knob (round)", "knob"), Col("decode only (48x27), frames/s", "decode", whole),
        Col("default + TransNetV2, frames/s", "both_fps", whole),
        Col("default + TransNetV2 / decode only", "both", "{:.2f}"), Col("default / decode only", "default", "{:.2f}"),
        Col("default + TransNetV2, CPU ms a frame", "cpu", "{:.2f}")]))


def reader_concurrent_rows(d: dict) -> list[dict]:
    """bench/bench_shot_concurrent.py with three codes, interleaved, on the busy 2-core machine."""
    return [{"run": r["run"], "fps": r["frames_per_s"], "cpu": r["cpu_ms_per_frame"], "load": r["loadavg"][0]}
            for r in d["runs"]]


TABLES.append(Table(
    "shot_reader_concurrent_cpu", ["shot_reader_concurrent_cpu_640x360.json"], rows=reader_concurrent_rows, columns=[
        Col("code (round)", "run"), Col("2 processes, frames/s summed", "fps", whole),
        Col("CPU ms a frame", "cpu", "{:.2f}"), Col("1-min load", "load", "{:.1f}")]))


DECODE_THREAD_RUN = "shot_speed_ab_h100_decode_thread.json"


def decode_thread_rows(merged: dict) -> list[dict]:
    """bench/shot_speed_ab.sh at 360p on one H100 machine: 7b174bd against branch h-decode-thread."""
    return _ab_rows(merged, "7b174bd", "h-decode-thread (d8b4a2c)")


TABLES.append(Table(
    "shot_speed_decode_thread_h100", [DECODE_THREAD_RUN], rows=decode_thread_rows, columns=[
        Col("edit (30 s)", "size"), Col("code (round)", "code"), Col("decode only (48x27), frames/s", "decode", whole),
        Col("default + TransNetV2, frames/s", "both_fps", whole),
        Col("default + TransNetV2 / decode only", "default_plus_transnetv2", "{:.2f}"),
        Col("default / decode only", "default", "{:.2f}")]))


def _gil_profile_row(d: dict) -> dict:
    """A bench/profile_shot_gil.py run's frames/s, GIL share, CPU a frame, batch loop times and the
    pool's share of the GIL samples."""
    t = d["batch_times"]
    return {"fps": d["frames_per_s"], "gil": d["gil_share"], "cpu": d["cpu_ms_per_frame"],
            **{f: t[f"{f}_us_per_frame"] for f in ("decode", "wait", "consume", "prepare")},
            "pool_gil": d["by_thread"].get("detect-scale_N", 0.0)}


GIL_PROFILE_COLUMNS = [Col("frames/s (profiled)", "fps", whole), Col("GIL held, share of the time", "gil", "{:.2f}"),
                       Col("CPU ms a frame", "cpu", "{:.2f}")]


def decode_thread_times_rows(merged: dict) -> list[dict]:
    """The branch's GIL profiles (bench/profile_shot_gil.py, default + TransNetV2 at 360p, 6 s) with 4
    and 6 pool threads: where the decoding and detecting threads' time went, who held the GIL."""
    rows = []
    for threads in (4, 6):
        d = merged[f"gil_after_pt{threads}_640x360"]
        rows.append({"threads": threads, **_gil_profile_row(d), "decode_gil": d["by_thread"].get("detect-decode", 0.0)})
    return rows


TABLES.append(Table(
    "shot_decode_thread_times_h100", [DECODE_THREAD_RUN], rows=decode_thread_times_rows, columns=[
        Col("pool threads", "threads"), *GIL_PROFILE_COLUMNS,
        Col("decoding thread: decode, µs a frame", "decode", "{:.0f}"),
        Col("detecting thread: waiting for a batch", "wait", "{:.0f}"), Col("detectors", "consume", "{:.0f}"),
        Col("pool: preparing, thread-µs a frame", "prepare", "{:.0f}"),
        Col("GIL samples: pool", "pool_gil", "{:.2f}"), Col("GIL samples: decoding thread", "decode_gil", "{:.2f}")]))


def tn_on_device_rows(merged: dict) -> list[dict]:
    """bench/shot_speed_ab.sh on one GPU machine: 7b174bd (TransNetV2's 48x27 frames scaled by FFmpeg on
    the scaler pool) against the change (shrunk from the detectors' frames where the model runs)."""
    return _ab_rows(merged, "7b174bd", "TransNetV2 shrinks the detectors' frames")


TABLES.append(Table(
    "shot_speed_tn_on_device_h100", ["shot_speed_ab_h100_tn_on_device.json"], rows=tn_on_device_rows, columns=[
        Col("edit (30 s)", "size"), Col("code (round)", "code"), Col("decode only (48x27), frames/s", "decode", whole),
        Col("default + TransNetV2, frames/s", "both_fps", whole),
        Col("default + TransNetV2 / decode only", "default_plus_transnetv2", "{:.2f}"),
        Col("TransNetV2 alone / decode only", "transnetv2", "{:.2f}"),
        Col("default + TransNetV2, CPU ms a frame", "cpu", "{:.2f}", "-")]))


DECODER_KNOB_NAMES = {"base": "none (branch tn-from-detector-frames)",
                      "dthreads=4": "4 FFmpeg decoder threads for the detection stream (FFmpeg's choice: 17)",
                      "dthreads=8": "8 decoder threads", "ahead=2": "2 batches ahead of the reading thread (4)"}


TABLES.append(Table(
    "shot_decoder_knobs_h100", ["shot_knobs_h100_640x360_dthreads.json"],
    rows=lambda merged: knob_rows(merged, DECODER_KNOB_NAMES), columns=[
        Col("knob (round)", "knob"), Col("decode only (48x27), frames/s", "decode", whole),
        Col("default + TransNetV2, frames/s", "both_fps", whole),
        Col("default + TransNetV2 / decode only", "both", "{:.2f}"), Col("default / decode only", "default", "{:.2f}"),
        Col("default + TransNetV2, CPU ms a frame", "cpu", "{:.2f}")]))


def tn_on_device_times_rows(merged: dict) -> list[dict]:
    """The same run's GIL profiles (bench/profile_shot_gil.py, default + TransNetV2 at 360p, 8 s each):
    where the reading thread's time went, the pool's, and who held the GIL."""
    rows = []
    for code, label in (("before", "7b174bd"), ("after", "TransNetV2 shrinks the detectors' frames")):
        d = merged[f"gil_{code}_640x360"]
        rows.append({"code": label, **_gil_profile_row(d), "tn_gil": d["by_thread"].get("transnetv2", 0.0)})
    return rows


TABLES.append(Table(
    "shot_tn_on_device_times_h100", ["shot_speed_ab_h100_tn_on_device.json"], rows=tn_on_device_times_rows, columns=[
        Col("code", "code"), *GIL_PROFILE_COLUMNS,
        Col("reading thread: decode, µs a frame", "decode", "{:.0f}"), Col("waiting for the pool", "wait", "{:.0f}"),
        Col("detectors", "consume", "{:.0f}"), Col("pool: preparing, thread-µs a frame", "prepare", "{:.0f}"),
        Col("GIL samples: pool", "pool_gil", "{:.2f}"), Col("GIL samples: TransNetV2's thread", "tn_gil", "{:.2f}")]))
