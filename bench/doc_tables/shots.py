"""Shot detection (issue 23): bench_shot_learned.py, bench_shot_wide.py, bench_transnet_gpu.py."""

from __future__ import annotations

from doc_tables.formats import dp2, dp2_or_tie, joined, num, pct, whole
from doc_tables.spec import Col, Table

DEFAULT = "adaptive+histogram + evidence + dissolve spans"


def detector_rows(data: dict, labels: dict[str, str] | None = None, bold: dict[str, tuple] | None = None,
                  order: list[str] | None = None) -> list[dict]:
    """One row per detector of a shot benchmark, its summary flattened, in the file's order."""
    rows = []
    for key in order or data["detectors"]:
        entry = data["detectors"][key]
        row = {**entry.get("summary", entry), "label": (labels or {}).get(key, key)}
        row["_bold"] = (bold or {}).get(key, ())
        rows.append(row)
    return rows


def dp3_min2(value: float) -> str:
    """Up to three decimals, at least two: 0.926, 0.98, 1.00."""
    text = f"{value:.3f}"
    return text[:-1] if text.endswith("0") else text


WIDE_COLUMNS = [
    Col("detectors and checks", "label"),
    Col("hard-cut P", "hard_precision", dp2),
    Col("R", "hard_recall", dp2),
    Col("F1", "hard_f1", dp2_or_tie),
    Col("gradual recall", "gradual_recall", dp2),
    Col("false cuts/min (unedited)", "false_cuts_per_min_unedited", num),
    Col("transition frames in shots", "transition_frames_inside", pct(1)),
    Col("clean frames dropped", "clean_frames_dropped"),
]


def missed_cuts(entry: dict) -> list[str]:
    """A detector's missed cuts over the edit and the unedited takes, as "kind frame"."""
    both = entry["files"]["edit"]["missed_cuts"] + entry["files"]["unedited"]["missed_cuts"]
    return [f"{kind} {frame}" for frame, kind in both]


def seed_rows(*files: dict) -> list[dict]:
    """The default before (first four files) and after (last four) on seeds 0 to 3; then jump cuts."""
    before, after = files[:4], files[4:]
    rows = []
    for seed, (b, a) in enumerate(zip(before, after)):
        bs, a_entry = b["detectors"][DEFAULT]["summary"], a["detectors"][DEFAULT]
        rows.append({"edit": "0 (the previous section's)" if seed == 0 else str(seed),
                     "before": bs, "after": a_entry["summary"],
                     "missed": missed_cuts(a_entry)})
    jump = [a["detectors"][DEFAULT + " + jump cuts"] for a in (after[1], after[3])]
    rows.append({"edit": "1, 3 with `split.jump_cuts`", "jump": [j["summary"] for j in jump],
                 "missed_jump": [j["files"]["edit"]["missed_cuts"] + j["files"]["unedited"]["missed_cuts"]
                                 for j in jump]})
    return rows


def _seed_pair(field: str, fmt) -> tuple[Col, Col]:
    def after(row: dict) -> str | None:
        if "jump" in row:
            return ", ".join(fmt(s[field]) for s in row["jump"])
        return fmt(row["after"][field])
    return Col("", lambda r: fmt(r["before"][field]) if "before" in r else None), Col("after", after)


_F1 = _seed_pair("hard_f1", dp3_min2)
_GRADUAL = _seed_pair("gradual_recall", dp2)
_FALSE = _seed_pair("false_cuts_per_min_unedited", num)
_INSIDE = _seed_pair("transition_frames_inside", pct(1))

TABLES = [
    Table("shot_learned_edit16s", ["shot_learned_cpu.json"], compact=True, rows=detector_rows, columns=[
        Col("detectors", "label"),
        Col("hard-cut precision", "hard_precision", "{:.2f}"),
        Col("recall", "hard_recall", "{:.2f}"),
        Col("F1", "hard_f1", "{:.2f}"),
        Col("gradual found", "gradual_recall"),
        Col("false cuts/min", "false_cuts_per_min", num),
        Col("flash cut", "flash_cuts"),
        Col("transition frames inside shots", "transition_frames_inside", pct(1)),
        Col("missed cuts", "missed_cuts", joined()),
    ]),
    Table("shot_wide", ["shot_wide_cpu.json"], compact=True, columns=[
        *WIDE_COLUMNS, Col("frames/s (CPU)", "fps_cpu", "{:,.0f}", missing="-")],
        rows=lambda d: detector_rows(d, labels={
            "adaptive+histogram": "adaptive+histogram (the default until now)",
            DEFAULT: f"**{DEFAULT} (default)**",
            "adaptive+histogram+transnetv2 + evidence + dissolve spans":
                "adaptive+histogram+transnetv2 + evidence + dissolve spans "
                "(`split.transnet_on_gpu` on a GPU worker)"})),
    Table("shot_pans_seeds", [*(f"shot_wide_cpu_before_pans_seed{i}.json" for i in range(4)),
                              *(f"shot_wide_cpu_pans_seed{i}.json" for i in range(4))],
          compact=True, rows=seed_rows, columns=[
              Col("edit (seed)", "edit"),
              Col("hard-cut F1 before", _F1[0].key), _F1[1],
              Col("gradual recall before", _GRADUAL[0].key), _GRADUAL[1],
              Col("false cuts/min before", _FALSE[0].key), _FALSE[1],
              Col("transition frames in shots before", _INSIDE[0].key), _INSIDE[1],
              Col("missed cuts after", lambda r: joined()(r["missed"]) if "missed" in r
                  else ", ".join(joined()(m) for m in r["missed_jump"])),
          ]),
    Table("shot_pans_seed0_all", ["shot_wide_cpu_pans_seed0.json"], compact=True, columns=WIDE_COLUMNS,
          rows=lambda d: detector_rows(d, labels={DEFAULT: f"**{DEFAULT} (default)**"}, bold={
              DEFAULT: ("F1", "gradual recall", "false cuts/min (unedited)", "transition frames in shots")})),
]

TRANSNET_VIDEOS = [("transnet_gpu_h100_720p120s.json", "1280x720, 120 s rendered ({frames:,} frames)"),
                   ("transnet_gpu_h100_720p30s.json", "1280x720, 30 s rendered ({frames:,} frames, 1 run)"),
                   ("transnet_gpu_h100_testmp4.json", "transnetv2's test.mp4, {width}x{height} ({frames:,} frames)")]


def transnet_h100_rows(*files: dict) -> list[dict]:
    rows = [{**d, "video": label.format(**d), "_bold": ("TransNetV2 / decode only",) if i == 0 else ()}
            for i, (d, (_name, label)) in enumerate(zip(files, TRANSNET_VIDEOS))]
    for r in rows:
        fps = r["frames_per_s"]
        r["ratio"] = fps["transnetv2"] / fps["decode_only_48x27"]
    return rows


THREAD_ROWS = [("decode_only_48x27", "decode only, scaled to 48x27", ()),
               ("transnetv2", "**TransNetV2**", ("frames/s", "of decode-only (48x27)")),
               ("default_plus_transnetv2", "default + TransNetV2 (`split.transnet_on_gpu`)",
                ("of decode-only (48x27)",)),
               ("default", "default (CPU)", ()),
               ("model_only", "model alone", ()),
               ("decode_only_unscaled", "decode only, unscaled", ())]


def transnet_threads_rows(after: dict, before: dict) -> list[dict]:
    rows = []
    for key, label, bold in THREAD_ROWS:
        fps, ms = after["frames_per_s"][key], after.get("cpu_ms_per_frame", {}).get(key)
        old = before["frames_per_s"].get(key)
        ratio = fps / after["frames_per_s"]["decode_only_48x27"] if ms is not None else None
        if old is None:
            was = None
        elif key in ("decode_only_48x27", "model_only"):
            was = whole(old)
        else:
            was = f"{whole(old)} ({old / before['frames_per_s']['decode_only_48x27']:.2f})"
        rows.append({"row": label, "fps": fps, "ms": ms, "ratio": ratio, "before": was, "_bold": bold})
    return rows


def transnet_threads_table(name: str, after: str, before: str, before_video: str) -> Table:
    """A run of THREAD_ROWS (``after``) beside the same rows of an earlier run (``before``, on ``before_video``)."""
    return Table(name, [after, before], rows=transnet_threads_rows, columns=[
        Col("row", "row"), Col("frames/s", "fps", whole), Col("CPU ms a frame", "ms", "{:.2f}"),
        Col("of decode-only (48x27)", "ratio", lambda v: "1" if v == 1 else f"{v:.2f}"),
        Col(f"before the change (H100, {before_video})", "before")])


TABLES += [
    Table("transnet_h100_before", [name for name, _label in TRANSNET_VIDEOS], compact=True, rows=transnet_h100_rows,
          columns=[
              Col("video", "video"),
              Col("decode only (scaled to 48x27)", "frames_per_s.decode_only_48x27", whole),
              Col("TransNetV2", "frames_per_s.transnetv2", whole),
              Col("default + TransNetV2 (`split.transnet_on_gpu`)", "frames_per_s.default_plus_transnetv2", whole),
              Col("default (CPU)", "frames_per_s.default", whole),
              Col("model alone", "frames_per_s.model_only", whole),
              Col("TransNetV2 / decode only", "ratio", "{:.2f}"),
          ]),
    transnet_threads_table("transnet_h100_threads", "transnet_gpu_h100_720p60s_threads.json",
                           "transnet_gpu_h100_720p120s.json", "120 s video"),
]

THREAD_LABELS = {"decode_only_48x27": "decode only (48x27)", "default": "default",
                 "transnetv2": "TransNetV2, no network", "default_plus_transnetv2": "default + TransNetV2, no network"}


def _threads(row: dict) -> dict:
    """CPU ms a frame per thread of one row: decode, detectors, TransNetV2 worker, scaling pool."""
    t = row["thread_cpu_ms_per_frame"]
    with_detectors = row["row"] in ("default", "default_plus_transnetv2")
    return {"decode": t.get("decode_thread", t["main_thread_total"]),
            "detectors": t["main_thread_detect_scenes"] if with_detectors else None,
            "worker": t.get("transnet_worker"), "pool": t.get("scaler_pool_2_threads")}


def thread_rows(before_r1: dict, before_r2: dict, after_r1: dict, after_r2: dict) -> list[dict]:
    """Round 2 with round 1 in brackets; the busiest single thread (the pool is two) against decode-only's."""
    out = []
    for key, label in THREAD_LABELS.items():
        for code, r1, r2 in (("before", before_r1, before_r2), ("after", after_r1, after_r2)):
            rounds = []
            for data in (r2, r1):
                rows = {r["row"]: r for r in data["rows"]}
                t = _threads(rows[key])
                busiest = max(v for k, v in t.items() if k != "pool" and v is not None)
                ratio = _threads(rows["decode_only_48x27"])["decode"] / busiest
                rounds.append({**t, "busiest": busiest, "ratio": ratio})
            now, first = rounds

            def both(field: str, fmt: str = "{:.3f}") -> str | None:
                if now[field] is None:
                    return None
                return fmt.format(now[field]) + (f" [{fmt.format(first[field])}]" if first[field] is not None else "")
            worker = both("worker") or ("(in the decode thread)" if "transnetv2" in key and code == "before" else None)
            ratio = "1" if key == "decode_only_48x27" else f"**{now['ratio']:.2f}** [{first['ratio']:.2f}]"
            out.append({"row": label, "code": code, "decode": both("decode"), "detectors": both("detectors"),
                        "worker": worker, "pool": None if now["pool"] is None else f"{now['pool']:.3f}",
                        "busiest": f"{now['busiest']:.3f}", "ratio": ratio})
    return out


TABLES += [
    Table("shot_threads_720p", [f"shot_threads_cpu_720p30s_{code}_r{n}.json" for code in ("before", "after")
                                for n in (1, 2)], compact=True, rows=thread_rows, columns=[
        Col("row", "row"), Col("code", "code"), Col("decode thread", "decode"), Col("detectors (main)", "detectors"),
        Col("TransNetV2 worker", "worker"), Col("scaling pool (2 threads together)", "pool"),
        Col("busiest", "busiest"), Col("decode-only's thread / busiest", "ratio"),
    ]),
]

TABLES.append(transnet_threads_table("transnet_h100_threads_160x90", "transnet_gpu_h100_testmp4_threads.json",
                                    "transnet_gpu_h100_testmp4.json", "same video"))

GRADUAL = DEFAULT + " + transnetv2 gradual"
WITH_CUTS = "adaptive+histogram+transnetv2 + evidence + dissolve spans"
LEARNED_DEFAULT = "adaptive+histogram (default: evidence + dissolve spans)"


def gradual_seed_rows(*files: dict) -> list[dict]:
    """Seeds 0-3: the CPU default, TransNetV2 with its cuts too (before), TransNetV2 as gradual
    evidence (after); then the 16 s edit. Files: after 0-3, before 0-3 (seed 0's from the pans run),
    the 16 s edit's."""
    after, before, learned = files[:4], files[4:8], files[8]
    rows = []
    for seed, (a, b) in enumerate(zip(after, before)):
        for label, entry, bold in (
                ("CPU default (adaptive+histogram + evidence + dissolve spans)" if seed == 0 else "CPU default",
                 a["detectors"][DEFAULT], False),
                ("+ TransNetV2, its cuts too (before)", b["detectors"][WITH_CUTS], False),
                ("+ TransNetV2 gradual (after; GPU default)" if seed == 0 else "+ TransNetV2 gradual",
                 a["detectors"][GRADUAL], True)):
            s = entry["summary"]
            rows.append({**s, "edit": str(seed), "row": f"**{label}**" if bold else label, "missed": ", ".join(missed_cuts(entry)) or "-",
                         "_bold": ("hard-cut F1", "gradual recall", "false cuts/min",
                                   "transition frames in shots") if bold else ()})
    cpu, grad = learned["detectors"][LEARNED_DEFAULT], learned["detectors"]["adaptive+histogram+transnetv2 gradual"]
    rows.append({"edit": "16 s edit", "row": "CPU default / + TransNetV2 gradual",
                 "f1": f"{cpu['hard_f1']:.2f} / {grad['hard_f1']:.2f}",
                 "gr": f"{cpu['gradual_recall']} / {grad['gradual_recall']}",
                 "fc": f"{num(cpu['false_cuts_per_min'])} / {num(grad['false_cuts_per_min'])}",
                 "inside": f"{pct(0)(cpu['transition_frames_inside'])} / {pct(0)(grad['transition_frames_inside'])}",
                 "missed": " / ".join(", ".join(map(str, e["missed_cuts"])) or "-" for e in (cpu, grad))})
    return rows


# each edit's row of a seeds table: the four targets' measures, what it costs and what it misses
SEED_COLUMNS = [
        Col("edit (seed)", "edit"), Col("row", "row"),
        Col("hard-cut F1", lambda r: r.get("f1") or dp3_min2(r["hard_f1"])),
        Col("gradual recall", lambda r: r.get("gr") or dp2(r["gradual_recall"])),
        Col("false cuts/min", lambda r: r.get("fc") or num(r["false_cuts_per_min_unedited"])),
        Col("transition frames in shots", lambda r: r.get("inside") or pct(1)(r["transition_frames_inside"])),
        Col("clean frames dropped", "clean_frames_dropped"), Col("missed cuts", "missed")]

TABLES.append(Table(
    "shot_gradual_seeds",
    [*(f"shot_wide_cpu_gradual_seed{i}.json" for i in range(4)), "shot_wide_cpu_pans_seed0.json",
     *(f"shot_wide_cpu_before_gradual_seed{i}.json" for i in (1, 2, 3)), "shot_learned_cpu_gradual.json"],
    compact=True, rows=gradual_seed_rows, columns=SEED_COLUMNS))

CPU_PRECISION_ROWS = {"decode_only_48x27": "decode only (scaled to 48x27)", "default": "default (no TransNetV2)",
                      "transnetv2": "TransNetV2", "default_plus_transnetv2": "default + TransNetV2",
                      "model_only": "model alone"}


def cpu_precision_rows(before: dict, fp32: dict, bf16: dict) -> list[dict]:
    """One row per bench row: frames/s and CPU ms a frame before (float32, PyTorch's layout), with
    channels-last weights (float32) and in bfloat16 (the CPU default where the CPU has it)."""
    rows = []
    for key, label in CPU_PRECISION_ROWS.items():
        row = {"row": label, "_bold": ("bfloat16: frames/s",) if "transnetv2" in key else ()}
        for name, run in (("before", before), ("fp32", fp32), ("bf16", bf16)):
            row[f"{name}_fps"] = run["frames_per_s"].get(key)
            row[f"{name}_ms"] = run["cpu_ms_per_frame"].get(key)
        row["speedup"] = row["bf16_fps"] / row["before_fps"] if row["bf16_fps"] and row["before_fps"] else None
        rows.append(row)
    return rows


TABLES.append(Table(
    "transnet_cpu_precision", ["transnet_cpu_before.json", "transnet_cpu_fp32.json", "transnet_cpu_bf16.json"],
    rows=cpu_precision_rows, columns=[
        Col("row", "row"),
        Col("before: frames/s", "before_fps", whole), Col("before: CPU ms a frame", "before_ms", "{:.1f}"),
        Col("channels-last float32: frames/s", "fp32_fps", whole), Col("float32: CPU ms a frame", "fp32_ms", "{:.1f}"),
        Col("bfloat16: frames/s", "bf16_fps", whole), Col("bfloat16: CPU ms a frame", "bf16_ms", "{:.1f}"),
        Col("bfloat16 / before", "speedup", "{:.2f}")]))

BF16_GRADUAL = DEFAULT + " + transnetv2 gradual"


def cpu_bf16_seed_rows(*files: dict) -> list[dict]:
    """Seeds 0-3, each rendered once: the CPU default, TransNetV2 gradual beside it in float32 (the
    GPU default's precision) and in bfloat16; then the 16 s edit (bfloat16)."""
    fp32, bf16, learned = files[:4], files[4:8], files[8]
    rows = []
    for seed, (f, b) in enumerate(zip(fp32, bf16)):
        diff = b.get("bf16_vs_fp32_max_abs_diff") or {}
        worst = max((max(d.values()) for d in diff.values()), default=None)
        for label, entry, bold in (("CPU default", f["detectors"][DEFAULT], False),
                                   ("+ TransNetV2 gradual, float32", f["detectors"][BF16_GRADUAL], False),
                                   ("+ TransNetV2 gradual, bfloat16", b["detectors"][BF16_GRADUAL], True)):
            s = entry["summary"]
            rows.append({**s, "edit": str(seed), "row": label, "missed": ", ".join(missed_cuts(entry)) or "-",
                         "diff": f"{worst:.4f}" if bold and worst is not None else None,
                         "_bold": ("gradual recall", "transition frames in shots") if bold else ()})
    rows.append(learned_gradual_row(learned, f"+ TransNetV2 gradual, {learned.get('transnetv2_precision_cpu')}"))
    return rows


def learned_gradual_row(learned: dict, label: str) -> dict:
    """The 16 s edit's row (bench_shot_learned.py) for TransNetV2 gradual beside the default."""
    grad = learned["detectors"]["adaptive+histogram+transnetv2 gradual"]
    return {"edit": "16 s edit", "row": label, "f1": f"{grad['hard_f1']:.2f}", "gr": str(grad["gradual_recall"]),
            "fc": num(grad["false_cuts_per_min"]), "inside": pct(1)(grad["transition_frames_inside"]),
            "missed": ", ".join(map(str, grad["missed_cuts"])) or "-"}


TABLES.append(Table(
    "shot_cpu_bf16_seeds",
    [*(f"shot_wide_cpu_fp32_seed{i}.json" for i in range(4)), *(f"shot_wide_cpu_bf16_seed{i}.json" for i in range(4)),
     "shot_learned_cpu_bf16.json"],
    compact=True, rows=cpu_bf16_seed_rows,
    columns=[*SEED_COLUMNS, Col("largest probability difference (bfloat16 - float32)", "diff")]))


def production_cpu_cost_rows(*runs: dict) -> list[dict]:
    """CPU seconds of each CPU stage over one 60 s 720p edit, TransNetV2 off (the tiny preset's CPU
    default) and on (the production preset's), two interleaved rounds; the ratio against the first round off."""
    base = runs[0]["cpu_s_total"]
    rows = []
    for run, label in zip(runs, ("off (the tiny preset's), round 1", "on (the production preset's), round 1",
                                 "off (the tiny preset's), round 2", "on (the production preset's), round 2")):
        cpu = {k: v["cpu_s"] for k, v in run["stages"].items()}
        rows.append({"row": label, **cpu, "total": run["cpu_s_total"], "ratio": run["cpu_s_total"] / base,
                     "clips": f"{run['clips']} / {run['frames_in_clips']:,}",
                     "_bold": ("split CPU s",) if label.startswith("on") else ()})
    return rows


TABLES.append(Table(
    "transnet_cpu_production_cost",
    [f"stage_cpu_720p_60s_transnet_cpu_{s}_r{r}.json" for r in (1, 2) for s in ("off", "on")],
    rows=production_cpu_cost_rows, columns=[
        Col("split.transnet_on_cpu", "row"), Col("split CPU s", "split", "{:.1f}"),
        Col("technical", "technical", "{:.1f}"), Col("motion", "motion", "{:.2f}"), Col("extract", "extract", "{:.1f}"),
        Col("all CPU stages", "total", "{:.1f}"), Col("of round 1 off", "ratio", "{:.2f}x"),
        Col("clips / frames in them", "clips")]))



def tn_from_detector_seed_rows(*files: dict) -> list[dict]:
    """Seeds 0-3 (the same renders), bfloat16 on CPU: TransNetV2 gradual beside the default with its
    48x27 frames scaled by FFmpeg from the decoded frame (before) and shrunk from the detectors'
    frames by PyTorch (after); then the 16 s edit, after."""
    before, after, learned = files[:4], files[4:8], files[8]
    rows = []
    for seed, (b, a) in enumerate(zip(before, after)):
        for label, entry, bold in (("+ TransNetV2 gradual, 48x27 by FFmpeg (before)", b["detectors"][BF16_GRADUAL], False),
                                   ("+ TransNetV2 gradual, 48x27 from the detectors' frames (after)", a["detectors"][BF16_GRADUAL],
                                    True)):
            s = entry["summary"]
            rows.append({**s, "edit": str(seed), "row": label, "missed": ", ".join(missed_cuts(entry)) or "-",
                         "_bold": ("hard-cut F1", "gradual recall", "false cuts/min",
                                   "transition frames in shots") if bold else ()})
    rows.append(learned_gradual_row(learned, "+ TransNetV2 gradual, from the detectors' frames"))
    return rows


TABLES.append(Table(
    "shot_tn_from_detector_seeds",
    [*(f"shot_wide_cpu_bf16_seed{i}.json" for i in range(4)),
     *(f"shot_wide_cpu_tn_on_device_seed{i}.json" for i in range(4)), "shot_learned_cpu_tn_on_device.json"],
    compact=True, rows=tn_from_detector_seed_rows, columns=SEED_COLUMNS))
