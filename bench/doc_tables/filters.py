"""Filters: the CPU scorers per core (bench_scoring.py --cpu-only), OCR and NSFW (bench_frame_models.py)."""

from __future__ import annotations

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
        {"measure": "Pearson correlation of `text_area` with the rendered area", "value": f"{d['text_area_pearson']:g}"},
        {"measure": "largest `text_area` on the frames without a caption", "value": f"{d['text_area_without_text_max']:g}"},
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
