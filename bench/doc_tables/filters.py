"""Filters: the CLIP stage on an H100 (bench_scoring.py), the CPU scorers per core (--cpu-only), OCR and NSFW
(bench_frame_models.py)."""

from __future__ import annotations

from collections.abc import Callable

from doc_tables.spec import Col, Table

SCORERS = [("decode_all_frames", "reference: PyAV decode of every frame"),
           ("technical", "technical (blur, exposure, borders, frozen; ~2 fps samples)"),
           ("motion", "motion (Farneback at 128 px, ~2 fps pairs)")]


def cpu_scorer_rows(data: dict) -> list[dict]:
    cpu = data["cpu"]
    return [{"scorer": label, "short": cpu["48_frames"][key], "long": cpu["240_frames"][key]} for key, label in SCORERS]


def _of_decode(length: str):
    return lambda r: r[length].get("of_decode", 1.0)


def frame_model_rows(d: dict) -> list[dict]:
    ratio = d["text_area_over_truth"]
    return [
        {"measure": "OCR detection, frames/s on one thread", "value": f"{d['ocr_detection_fps_1_thread']:.1f}"},
        {"measure": "NSFW (320n), frames/s on one thread (batched)", "value": f"{d['nsfw_fps_1_thread']:.1f}"},
        {"measure": "captions found", "value": d["text_found"]},
        {"measure": "`text_area` / rendered text's box area: median (min to max)",
         "value": f"{ratio['median']:g} ({ratio['min']:g} to {ratio['max']:g})"},
        {"measure": "Pearson correlation of `text_area` with the rendered area",
         "value": f"{d['text_area_pearson']:g}"},
        {"measure": "largest `text_area` on the frames without a caption",
         "value": f"{d['text_area_without_text_max']:g}"},
        {"measure": "largest `nsfw` on the benign frames", "value": f"{d['nsfw_max_on_benign']:g}"},
    ]


TABLES = [
    Table("cpu_scorers_per_core", ["cpu_scorers_per_core.json"], rows=cpu_scorer_rows, columns=[
        Col("scorer", "scorer"),
        Col("2 s clips (48 frames): frames/s per core", "short.clip_frames_per_s_per_core", "{:,.0f}"),
        Col("clips/s", "short.clips_per_s_per_core", "{:.1f}"),
        Col("of decode-all", _of_decode("short"), "{:.0%}"),
        Col("10 s clips (240 frames): frames/s per core", "long.clip_frames_per_s_per_core", "{:,.0f}"),
        Col("clips/s", "long.clips_per_s_per_core", "{:.1f}"),
        Col("of decode-all", _of_decode("long"), "{:.0%}"),
    ]),
    Table("frame_models_cpu", ["frame_models_cpu.json"], compact=True, rows=frame_model_rows, columns=[
        Col("measure", "measure"), Col("value", "value"),
    ]),
]


MODEL_ONLY = "model-only, ViT-L-14 + aesthetic head, B = 256 (before / after)"
STILLS_ROWS = [  # (frames per clip, text, from stills, label, headline)
    (48, False, True, "end-to-end, 2 s clips, from the stills", True),
    (96, False, True, "end-to-end, 4 s clips, from the stills", True),
    (48, True, True, "end-to-end, 2 s clips, from the stills, with text{text_note}", False),
    (48, False, False, "end-to-end, 2 s clips, decoding the clips{previous}", False),
    (96, False, False, "end-to-end, 4 s clips, decoding the clips{previous}", False),
]


def stills_rows(data: dict, text_note: str = "", previous: str = "") -> list[dict]:
    """The CLIP stage from stills against decoding the clips (bench_scoring.py --stills), one H100."""
    before, after = data["model_only_fps"]
    rows = [{"what": MODEL_ONLY, "fps": f"{before:,.0f} / {after:,.0f}", "ratio": "100%"}]
    for frames, text, stills, label, headline in STILLS_ROWS:
        run = next(r for r in data["runs"] if (r["frames_per_clip"], r["text"], r["stills"]) == (frames, text, stills)
                   and not r["scale_in_decoder"] and not r["hwaccel"])
        ratio = f"{run['ratio']:.1%}"
        rows.append({"what": label.format(text_note=text_note, previous=previous), "fps": f"{run['e2e_fps']:,.0f}",
                     "ratio": f"**{ratio}**" if headline else ratio, "decode": run["decode_only_fps"],
                     "worker_ms": run["decode_only"]["worker_cpu_ms_per_clip"]})
    return rows


STILLS_COLUMNS = [Col("measurement (frames scored per second)", "what"), Col("frames/s", "fps"),
                  Col("of model-only", "ratio"), Col("decode-only (frames/s)", "decode", "{:,.0f}")]

TABLES += [
    Table("clip_stage_stills", ["scoring_h100_stills.json"],
          rows=lambda d: stills_rows(d, text_note=" (adds the text tower)", previous=" (previous path)"),
          columns=[*STILLS_COLUMNS, Col("worker CPU per clip", "worker_ms", "{:.1f} ms")]),
    Table("clip_stage_stills_4096", ["scoring_h100_stills_4096.json"], rows=stills_rows, columns=STILLS_COLUMNS),
]


Key = tuple[int, bool, bool, str | None]  # frames per clip, text, scale in decoder, hwaccel


def _run(data: dict, key: Key) -> dict:
    frames, text, scale, hw = key
    return next(r for r in data["runs"] if (r["frames_per_clip"], r["text"], bool(r.get("scale_in_decoder")),
                                            r.get("hwaccel")) == (frames, text, scale, hw))


def two_run_rows(spec: list[tuple], decimals: int) -> Callable[..., list[dict]]:
    """Rows of a two-run table: per row a label, then for each run the runs (keys) it shows or None;
    'e2e' rows give frames/s and the share of model-only, 'decode' rows decode-only frames/s."""
    def rows(*runs: dict) -> list[dict]:
        out = [{"what": MODEL_ONLY, **{f"fps{i}": " / ".join(f"{v:,.0f}" for v in d["model_only_fps"])
                                       for i, d in enumerate(runs)}, **{f"pct{i}": "100%" for i in range(len(runs))}}]
        for label, kind, bold, *keys in spec:
            row = {"what": label}
            for i, (d, ks) in enumerate(zip(runs, keys)):
                if not ks:
                    continue
                picked = [_run(d, k) for k in ks]
                if kind == "decode":
                    row[f"fps{i}"] = " / ".join(f"{r['decode_only_fps']:,.0f}" for r in picked)
                    continue
                row[f"fps{i}"] = " / ".join(f"{r['e2e_fps']:,.0f}" for r in picked)
                pct = " / ".join(f"{r['ratio']:.{decimals}%}" for r in picked)
                row[f"pct{i}"] = f"**{pct}**" if bold else pct
            out.append(row)
        return out
    return rows


_2S, _4S, _2ST = (48, False, False, None), (96, False, False, None), (48, True, False, None)
KEYFRAMES = [("end-to-end, 2 s clips, no text", "e2e", False, [_2S], [_2S]),
             ("end-to-end, 4 s clips, no text", "e2e", False, [_4S], [_4S]),
             ("end-to-end, 2 s clips, with text", "e2e", False, [_2ST], [_2ST]),
             ("decode-only, 2 s / 4 s clips", "decode", False, [_2S, _4S], [_2S, _4S])]
_SC2, _SC4, _SC2T = (48, False, True, None), (96, False, True, None), (48, True, True, None)
_NV2, _NV4, _NV2T = (48, False, False, "cuda"), (96, False, False, "cuda"), (48, True, False, "cuda")
FASTDECODE = [("end-to-end, 2 s clips, no text", "e2e", True, [_2S], [_2S]),
              ("end-to-end, 4 s clips, no text", "e2e", False, [_4S], [_4S]),
              ("decode-only, 2 s / 4 s clips", "decode", False, [_2S, _4S], [_2S, _4S]),
              ("end-to-end, resize in FFmpeg's scaler in the workers, 2 s / 4 s", "e2e", False, [_SC2, _SC4], None),
              ("end-to-end, same, 2 s clips with text", "e2e", False, [_SC2T], None),
              ("end-to-end, NVDEC in the workers, 2 s / 4 s", "e2e", False, None, [_NV2, _NV4]),
              ("end-to-end, NVDEC, 2 s clips with text", "e2e", False, None, [_NV2T]),
              ("decode-only, NVDEC, 2 s / 4 s", "decode", False, None, [_NV2, _NV4])]


def _two_run_columns(second: str) -> list[Col]:
    return [Col("measurement (frames scored per second)", "what"), Col("run 1", "fps0"), Col("of model-only", "pct0"),
            Col(second, "fps1"), Col("of model-only", "pct1")]


TABLES += [
    Table("clip_stage_keyframes", ["scoring_h100_keyframes.json", "scoring_h100_keyframes_drain.json"],
          rows=two_run_rows(KEYFRAMES, 0), columns=_two_run_columns("run 2 (decoder drained after a keyframe)")),
    Table("clip_stage_fastdecode", ["scoring_h100_fastdecode_run1.json", "scoring_h100_fastdecode_run2_nvdec.json"],
          rows=two_run_rows(FASTDECODE, 1), columns=_two_run_columns("run 2")),
]

FIRST_RUN = [("end-to-end, 2 s clips (48 frames), no text", _2S), ("end-to-end, 4 s clips (96 frames), no text", _4S),
             ("end-to-end, 2 s clips, with text (adds `clip_text`, the text tower)", _2ST)]


def first_run_rows(data: dict) -> list[dict]:
    """The first CLIP-stage table's workload (x264's own keyframes, resize on the device) on today's code."""
    before, after = data["model_only_fps"]
    rows = [{"what": MODEL_ONLY, "fps": f"{before:,.0f} / {after:,.0f}", "pct": "100%"}]
    for label, key in FIRST_RUN:
        run = _run(data, key)
        rows.append({"what": label, "fps": f"{run['e2e_fps']:,.0f}", "pct": f"{run['ratio']:.0%}",
                     "decode": run["decode_only_fps"], "decode_pct": run["decode_only_fps"] / data["model_only_mean_fps"]})
    return rows


TABLES.append(Table("clip_stage_first_workload", ["scoring_h100_issue5_rerun.json"], rows=first_run_rows, columns=[
    Col("measurement (frames scored per second)", "what"), Col("frames/s", "fps"), Col("of model-only", "pct"),
    Col("decode-only, same rows (frames/s)", "decode", "{:,.0f}"), Col("of model-only", "decode_pct", "{:.0%}")]))


def frame_model_speed_rows(dev: dict, host: dict, gpu1: dict, gpu2: dict) -> list[dict]:
    """OCR detection and NSFW frames/s: one thread on the dev box and on the H100's host, and on the H100."""
    rows = []
    for label, key in (("OCR detection (PP-OCRv4, one frame a call)", "ocr_detection_fps"),
                       ("NSFW (NudeNet 320n, one batch of all frames)", "nsfw_fps")):
        cuda = [gpu1[f"{key}_cuda"], gpu2[f"{key}_cuda"]]
        rows.append({"model": label, "dev": dev[f"{key}_1_thread"], "host": host[f"{key}_1_thread"],
                     "gpu": " / ".join(f"{v:,.1f}" for v in cuda), "ratio": min(cuda) / host[f"{key}_1_thread"]})
    return rows


TABLES.append(Table("frame_models_speed", ["frame_models_cpu_quiet.json", "frame_models_h100host_cpu.json",
                                           "frame_models_h100_cuda_r1.json", "frame_models_h100_cuda_r2.json"],
                    rows=frame_model_speed_rows, columns=[
                        Col("model (602x256 frames)", "model"), Col("dev box, one thread", "dev", "{:,.1f}"),
                        Col("H100 host, one thread", "host", "{:,.1f}"), Col("H100 (two runs)", "gpu"),
                        Col("H100 over one host core (slower run)", "ratio", "{:.1f}x")]))

SOURCE_DECODE = {"before": "before (`272725b`)", "off": "this branch, `filters.skip_unread_frames=false`",
                 "on": "this branch, skipping on (default)",
                 "decode_all": "reference: decode only, every frame",
                 "decode_refs_only": "reference: decode only, every non-reference frame skipped"}
RATIO_BASE = {"on": "before", "off": "before", "decode_refs_only": "decode_all"}
RATIO_HEADER = "median CPU against before (decode only: against every frame)"


def source_decode_rows(*results: dict) -> list[dict]:
    """bench_source_decode.py: per footage and code, its runs side by side and the median CPU against before."""
    out = []
    for data in results:
        med = data["median"]
        for variant, label in SOURCE_DECODE.items():
            runs = [r for r in data["runs"] if r["variant"] == variant]
            if not runs:
                continue

            def each(key: str, fmt: str = "{:.2f}") -> str:
                return " / ".join("-" if r[key] is None else fmt.format(r[key]) for r in runs)

            base = med.get(RATIO_BASE.get(variant, ""))
            out.append({"footage": f"x264 {data['x264_preset']} ({data['date'][11:16]} UTC)", "code": label, "cpu": each("cpu_s"),
                        "main": each("main_thread_cpu_s"), "wall": each("wall_s"),
                        "decoded": each("frames_decoded", "{:,}"), "load": each("load_1min_before", "{:.1f}"),
                        "ratio": med[variant]["cpu_s"] / base["cpu_s"] if base else None,
                        "_bold": (RATIO_HEADER,) if variant == "on" else ()})
    return out


TABLES.append(Table(
    "source_decode_skip", ["source_decode_720p_medium.json", "source_decode_720p_veryfast.json",
                           "source_decode_720p_medium_quiet.json", "source_decode_720p_veryfast_quiet.json"],
    rows=source_decode_rows, columns=[
        Col("footage (60 s 720p)", "footage"), Col("code", "code"), Col("CPU s (round 1 / 2)", "cpu"),
        Col("main thread CPU s", "main"), Col("wall s", "wall"), Col("frames decoded (of 1,500)", "decoded"),
        Col("1-min load at start", "load"),
        Col(RATIO_HEADER, "ratio", "{:.2f}x")]))
