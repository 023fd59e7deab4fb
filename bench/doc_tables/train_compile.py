"""Trainer on one H100 (issue 8, 2026-11-24): `train.compile` runs against the same call's reference,
and where the step's kernel time goes (profile_train_step.py)."""

from __future__ import annotations

import statistics

from doc_tables.formats import fixed, pct
from doc_tables.spec import Col, Table

REFERENCES = "train_reference_h100_2026-11-24.jsonl"
# (label, result file, how its rate is summarised, line of REFERENCES measured in the same call or None)
COMPILE_RUNS = [
    ("our loop, eager (last session)", "train_compiled_h100.json", "windows", None),
    ("our loop, `train.compile` (inductor, default mode)", "train_compiled_default_h100.json", "windows", 0),
    ("our loop, `train.compile_mode=reduce-overhead` (CUDA graphs), log every 5 steps",
     "train_compiled_cudagraphs_h100.json", "windows", 4),
    ("same, log every step, 50 steps", "train_compiled_cudagraphs_log1_h100.json", "median", 5),
]
WARMUP_STEPS = 3  # the CUDA-graph run logging every step: steps 1 to 3 compile and record the graphs


def steady_rate(run: dict) -> float:
    """Samples/s of the windows after the first (compile), leaving out stalls under half the median."""
    rates = [w["samples_per_s"] for w in run["synthetic"]["windows"][1:]]
    median = statistics.median(rates)
    return statistics.mean(r for r in rates if r > median / 2)


def median_step_rate(run: dict) -> float:
    """Samples/s of the median step after warm-up (a run that logs every step)."""
    steps = [w["step_s"] for w in run["synthetic"]["windows"][WARMUP_STEPS:]]
    return run["args"]["batch"] / statistics.median(steps)


def compile_rows(references: list[dict], *runs: dict) -> list[dict]:
    rows = []
    for (label, _, summary, ref_line), run in zip(COMPILE_RUNS, runs, strict=True):
        rate = steady_rate(run) if summary == "windows" else median_step_rate(run)
        note = {"windows": "", "median": " (median step)"}[summary]
        if run["args"].get("compile_mode") == "reduce-overhead" and summary == "windows":
            note = " (steady windows)"
        ref = references[ref_line] if ref_line is not None else None
        if ref is not None and ref["ema"]:
            raise ValueError(f"{REFERENCES} line {ref_line}: an EMA reference, not the plain step")
        headline = run["args"].get("compile_mode") == "reduce-overhead"
        rate_text = fixed(2)(rate)
        ratio = None if ref is None else f"{rate / ref['samples_per_s']:.2f}x"
        rows.append({"run": label, "rate": (f"**{rate_text}**" if headline else rate_text) + note,
                     "step": run["args"]["batch"] / rate, "peak": run["synthetic"]["peak_gib"],
                     "reference": None if ref is None else ref["samples_per_s"],
                     "ratio": f"**{ratio}**" if headline and ratio else ratio})
    return rows


# kernel families of profile_train_step.py, grouped as the table's columns
FAMILY_COLUMNS = [
    ("GEMMs (cuBLAS, cuDNN implicit-GEMM convolutions)", ("gemm",)),
    ("cuDNN NCHW/NHWC transposes, other cuDNN", ("conv",)),
    ("copies, casts", ("copy/cast/layout",)),
    ("elementwise, norms (Triton when compiled)", ("elementwise/reduce", "norm", "triton (fused)")),
    ("attention", ("attention",)),
    ("optimizer, EMA, clipping", ("optimizer",)),
    ("other", ("other",)),
]
TRANSPOSE_KERNELS = ("nchwToNhwcKernel", "nhwcToNchwKernel")


def profile_rows(eager: dict, compiled: dict) -> list[dict]:
    rows = []
    for label, p in (("eager", eager), ("compiled", compiled)):
        fam = p["families"]
        row = {"run": label, "ms": p["cuda_ms_per_step"]}
        for header, names in FAMILY_COLUMNS:
            row[header] = pct(1)(round(sum(fam.get(n, 0.0) for n in names), 4))
        transposes = sum(share for name, share in p["top"] if any(k in name for k in TRANSPOSE_KERNELS))
        row[FAMILY_COLUMNS[1][0]] += f" (transposes {pct(1)(round(transposes, 4))})"
        rows.append(row)
    return rows


TABLES = [
    Table("train_compile_h100", [REFERENCES] + [f for _, f, _, _ in COMPILE_RUNS], rows=compile_rows, columns=[
        Col("run (one process each; H100)", "run"), Col("samples/s", "rate"), Col("step (s)", "step", "{:.3f}"),
        Col("peak GiB", "peak", "{:.1f}"), Col("reference in the same call (samples/s)", "reference", "{:.2f}", "—"),
        Col("ours / reference", "ratio", missing="—")]),
    Table("train_profile_h100", ["profile_step_eager_h100.json", "profile_step_compiled_h100.json"],
          rows=profile_rows, columns=[Col("", "run"), Col("CUDA ms per step", "ms", "{:.1f}")]
          + [Col(header, header) for header, _ in FAMILY_COLUMNS]),
]
