"""Trainer and generation on GPUs (issues 8 and 9): bench_refiner.py and friends."""

from __future__ import annotations

from doc_tables.spec import Col, Table

REFINER = "refiner_h100.json"
CROP_LABELS = {"1280x720": "1280x720 (the whole frame)"}
ABLATION_LABELS = ["all measures (defaults)", "guidance passes batched (`cfg_batched`)",
                   "VAE encode/decode 4 frames at a time (`vae_chunk=4`)", "VAE encode/decode all 16 frames at once",
                   "stages kept resident, refiner text encoder on the GPU (`offload=false`)",
                   "fp32 weights and activations (`precision=fp32`)"]


def refiner_training_rows(d: dict) -> list[dict]:
    rows = []
    for r in d["training"]:
        if r.get("error") == "out of memory":  # the failed row names its crop only in its label
            h, w = r["label"].split("+")[0].split("x")
            prev = next(x for x in d["training"] if x.get("crop") == f"{w}x{h}")
            rows.append({**prev, "ckpt": "no", "step": "out of memory (80 GB)", "peak_gib": None})
            continue
        blocks = r["activation_checkpointing_blocks"]
        rows.append({**r, "crop": CROP_LABELS.get(r["crop"], r["crop"]),
                     "ckpt": f"{blocks} blocks" if blocks else "no", "step": f"{r['step_s']:.2f}"})
    return rows


def refiner_cascade_rows(d: dict) -> list[dict]:
    c = d["cascade"]
    return [{"stage": "base (CLIP image + text encoders, 50 steps, decode 16 frames at 448x256)",
             "s": c["sampling_s"]["base"], "gib": c["peak_gib"]["base"]},
            {"stage": "upsample + refiner (text, encode 16 frames at 720p, 31 steps x 2 passes, decode)",
             "s": c["sampling_s"]["refine"], "gib": c["peak_gib"]["refine"]},
            {"stage": "whole cascade", "s": c["sampling_s_total"], "gib": c["peak_gib_max"]}]


def refiner_ablation_rows(d: dict) -> list[dict]:
    rows = []
    for label, a in zip(ABLATION_LABELS, d["ablations"], strict=True):
        peak = f"{a['peak_gib']['refine']:.2f}"
        if a["settings"]["precision"] == "fp32":  # the one variant whose base stage grows too
            peak += f" (base stage {a['peak_gib']['base']:.2f})"
        rows.append({"variant": label, "peak": peak, "s": a["sampling_s"]["refine"]})
    return rows


TABLES = [
    Table("refiner_training", [REFINER], rows=refiner_training_rows, columns=[
        Col("crop (pixels)", "crop"), Col("latent", "latent"), Col("activation checkpointing", "ckpt"),
        Col("step s", "step"), Col("peak GiB", "peak_gib", "{:.1f}")]),
    Table("refiner_cascade", [REFINER], rows=refiner_cascade_rows, columns=[
        Col("stage", "stage"), Col("seconds", "s", "{:.1f}"), Col("peak GiB", "gib", "{:.2f}")]),
    Table("refiner_ablations", [REFINER], rows=refiner_ablation_rows, columns=[
        Col("variant", "variant"), Col("refiner-stage peak GiB", "peak"), Col("refiner-stage s (3 steps)", "s", "{:.2f}")]),
]
