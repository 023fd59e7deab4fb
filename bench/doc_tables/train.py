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
        Col("variant", "variant"), Col("refiner-stage peak GiB", "peak"),
        Col("refiner-stage s (3 steps)", "s", "{:.2f}")]),
]


def _share(value: float) -> str:
    """A data-wait share: one decimal, two where one decimal would round a share of 0.005% up or more
    down to nothing (as the doc first wrote them)."""
    return f"{value:.2%}" if 0.00005 <= value < 0.001 else f"{value:.1%}"


def train_data_rows(before: dict, prefetch: dict) -> list[dict]:
    rows = []
    for label, d, headline in (("before", before, False), ("with the prefetcher", prefetch, True)):
        syn, again, shards = d["synthetic"], d["synthetic_again"], d["shards"]
        rows.append({"run": f"{label}: synthetic / synthetic again",
                     "sps": f"{syn['samples_per_s']:.3f} / {again['samples_per_s']:.3f}", **_step(syn)})
        ratio = d["ratio_shards_over_synthetic"]
        sps = f"{shards['samples_per_s']:.3f} ({ratio:.1%} of synthetic)" if headline else \
            f"{shards['samples_per_s']:.3f} ({ratio:.0%} of synthetic)"
        rows.append({"run": f"{label}: from shards", "sps": sps, **_step(shards),
                     "_bold": ("samples/s", "data wait share") if headline else ("data wait share",)})
    return rows


def _step(run: dict) -> dict:
    return {"wait": run["data_wait_share"], "step": run["step_s"], "mfu": run["mfu"], "peak": run["peak_gib"]}


def two_h200_rows(one: dict, ddp: dict, fsdp: dict) -> list[dict]:
    base = one["synthetic"]["samples_per_s"]
    rows = [{**one["synthetic"], "run": "one H200", "eff": "(reference)"}]
    for label, d in (("two H200s, DDP", ddp), ("two H200s, FSDP2", fsdp)):
        s = d["synthetic"]
        rows.append({**s, "run": label, "eff": f"**{s['samples_per_s'] / (d['world_size'] * base):.1%}**"})
    return rows


TABLES += [
    Table("train_data_h100", ["train_data_h100.json", "train_data_h100_prefetch.json"], rows=train_data_rows,
          columns=[Col("run", "run"), Col("samples/s", "sps"), Col("data wait share", "wait", _share),
                   Col("step (s)", "step", "{:.3f}"), Col("MFU", "mfu", "{:.1%}"),
                   Col("peak GPU memory (GiB)", "peak", "{:.1f}")]),
    Table("train_2xh200", ["train_2xh200_one.json", "train_2xh200_ddp.json", "train_2xh200_fsdp.json"],
          rows=two_h200_rows, columns=[
              Col("run", "run"), Col("samples/s (all ranks)", "samples_per_s", "{:.2f}"),
              Col("step (s)", "step_s", "{:.3f}"),
              Col("peak GiB per GPU", "peak_gib", "{:.1f}"), Col("scaling efficiency", "eff")]),
]


def _reference(run: dict, n: int) -> dict:
    """A reference run's rate from steps 3 on: mean (its own figure) / median / fastest step."""
    steps = sorted(run["step_times_s"][2:])
    median = steps[len(steps) // 2] if len(steps) % 2 else (steps[len(steps) // 2 - 1] + steps[len(steps) // 2]) / 2
    label = f"reference {n}" + (" (steps 3 to 30: mean / median / fastest step)" if n == 1 else "")
    b = run["batch"]
    return {"run": label, "sps": f"{run['samples_per_s']:.2f} / {b / median:.2f} / {b / steps[0]:.2f}",
            "step": run["step_s"], "peak": run["peak_gib"]}


def _ours(run: dict, label: str, headline: bool) -> dict:
    s = run["synthetic"]
    windows = [w["samples_per_s"] for w in s["windows"][1:]]  # the first window holds the compile
    sps = f"{s['samples_per_s']:.2f}"
    if headline:
        sps = f"**{sps}** (windows {min(windows):.2f} to {max(windows):.2f})"
    return {"run": f"**{label}**" if headline else label, "sps": sps, "step": s["step_s"], "peak": s["peak_gib"],
            "mfu": s["mfu"]}


def step_target_rows(references: list[dict], b3: dict, layout: dict, again: dict) -> list[dict]:
    """In the order they ran: each of ours between two references."""
    refs = [_reference(r, n) for n, r in enumerate(references, 1)]
    ours = [_ours(b3, "ours, batch 3", True),
            _ours(layout, "ours, batch 2, channels-last forced (`TORCHINDUCTOR_FORCE_LAYOUT_OPT=1`)", False),
            {**_ours(again, "ours, batch 3, again", True),
             "run": "**ours, batch 3, again** (35 steps; inductor's on-disk cache from the first run: "
                    "77 s in all instead of 451 s)"}]
    return [refs[0], ours[0], refs[1], ours[1], refs[2], ours[2], refs[3]]


TABLES += [
    Table("train_step_target", ["train_reference_h100_matrix_2026-11-24.jsonl", "train_compiled_cg_b3_h100.json",
                                "train_compiled_cg_layout_b2_h100.json", "train_compiled_cg_b3_repeat_h100.json"],
          rows=step_target_rows, columns=[
              Col("run", "run"), Col("samples/s", "sps"), Col("step (s)", "step", "{:.3f}"),
              Col("peak GiB", "peak", "{:.1f}"), Col("MFU", "mfu", "{:.1%}")]),
]


UNET_STEP = "unet_step_reference_h100_2026-12-06.jsonl"


def unet_step_rows(runs: list[dict]) -> list[dict]:
    """Batch 1 before batch 2, eager before EMA, as the section reads."""
    return sorted(runs, key=lambda r: (r["ema"], r["batch"]))


TABLES.append(Table("unet_reference_step", [UNET_STEP], rows=unet_step_rows, columns=[
    Col("batch", "batch"), Col("EMA", lambda r: "yes" if r["ema"] else "no"), Col("step (s)", "step_s", "{:.3f}"),
    Col("samples/s", "samples_per_s", "{:.2f}"), Col("peak GPU memory (GiB)", "peak_gib", "{:.1f}")]))
