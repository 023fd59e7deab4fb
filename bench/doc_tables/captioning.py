"""Captioning on an H100 (issues 6 and 20): bench_captioning.py runs, the fast-path probe (probe_cuda_check.py)."""

from __future__ import annotations

from doc_tables.formats import fixed, or_tie, whole
from doc_tables.spec import Col, Table

PROBE_FILES = ["probe_cuda_h100_t517.json", "probe_cuda_h100_t525.json"]
MODELS = {"tiny": "tiny, float32", "3b": "3B shape, bf16, random weights"}


def _probe(p: dict, exact: bool) -> str:
    """'7 of 640 off (1.1%), worst gap 0.14 sd: passes'; the worst gap only where it says something."""
    text = f"{p['off']} of {p['positions']} off"
    if p["off"]:
        text += f" ({p['share_off']:.1%})"
    if p["agrees"] and p["off"] and not exact:
        text += f", worst gap {p['worst_gap_std']:.2f} sd"
    return text + (": passes" if p["agrees"] else ": rejected")


def probe_rows(*files: dict) -> list[dict]:
    rows = []
    for size in MODELS:  # model by model, each transformers version in turn
        for d in files:
            c = next(x for x in d["checks"] if x["size"] == size)
            path = ", ".join(c["long_paths"]) + (", no switch-off" if not c["long_switch_offs"] else ", switched off")
            agreement = c["long_token_agreement_with_generate"]
            equal = (f"{c['long_rows_equal_generate']} of {c['batch']} rows" if agreement == 1
                     else f"{agreement:.1%} of tokens")
            rows.append({"model": MODELS[size], "transformers": c["transformers"], "path": path,
                         "correct": _probe(c["probe_correct"], c["probe_correct"]["exact"]),
                         "shifted": _probe(c["probe_shifted"], c["probe_shifted"]["exact"]), "equal": equal})
    return rows


TABLES = [
    Table("probe_cuda_h100", PROBE_FILES, rows=probe_rows, columns=[
        Col("model", "model"), Col("transformers", "transformers"), Col("path used", "path"),
        Col("probe: correct tokens", "correct"), Col("probe: shifted tokens", "shifted"),
        Col("tokens equal to `generate`", "equal")]),
]


PREFILL_RUNS = ["captioning_h100_fastvision_run1.json", "captioning_h100_fastprefill_run2.json",
                "captioning_h100_fastprefill_run3.json"]
# why a batch ran out of memory is known from the run's order, not from its JSON
OOM_NOTES = {(1, 1024): "out of memory in the default path (with the static paths' buffers of batch 512 still held)"}


def tokens(path: dict) -> str:
    """'606.2 (9.5)': tokens/s (whole above 1,000) and clips/s (two places under 5)."""
    tps, cps = path["tokens_per_s"], path["clips_per_s"]
    return (whole(tps) if tps >= 1000 else fixed(1)(tps)) + f" ({fixed(2 if cps < 5 else 1)(cps)})"


def prefill_rows(*runs: dict) -> list[dict]:
    rows = []
    for n, d in enumerate(runs, 1):
        for r in d["results"]:
            label = f"run {n}: {r['batch']}"
            if "oom" in r:
                rows.append({"batch": label, "default": OOM_NOTES.get((n, r["batch"]), "out of memory")})
                continue
            compiled_key = next(k for k in r if k.startswith("static_graph_compiled"))
            base, static, fast = r["default"], r["static_graph"], r[compiled_key]
            rows.append({"batch": label, "default": tokens(base), "static": tokens(static),
                         "speedup": fixed(1)(r["speedup"]) + "x", "fast": tokens(fast),
                         "fast_speedup": f"**{fixed(1)(r['speedup_' + compiled_key])}x**",
                         "prefill": f"{fixed(2)(static['prefill_s'])} / {fixed(2)(fast['prefill_s'])}",
                         "decode": fast["decode_s"],
                         "first": fast["first_call_s"],
                         "peak": " / ".join(fixed(1)(p["peak_gib"]) for p in (base, static, fast))})
    return rows


TABLES += [
    Table("captioning_fast_prefill", PREFILL_RUNS, rows=prefill_rows, columns=[
        Col("batch", "batch"), Col("default tok/s (clips/s)", "default"), Col("static_graph, not compiled", "static"),
        Col("speed-up", "speedup"), Col("static_graph + compile_prefill", "fast"), Col("**speed-up**", "fast_speedup"),
        Col("prefill s (not compiled / compiled)", "prefill"), Col("decode s (compiled)", "decode", fixed(2)),
        Col("first call s (compile)", "first", fixed(1)), Col("peak GiB default / static / compiled", "peak")]),
]


def static_graph_rows(data: dict) -> list[dict]:
    """The default path against static_graph, one row per batch the run measured (bench_captioning.py)."""
    rows = []
    for r in data["results"]:
        if "static_graph" not in r:  # a batch the time budget skipped
            continue
        base, static = r["default"], r["static_graph"]
        speedup = or_tie(1)(r["speedup"]) + "x"
        rows.append({"batch": r["batch"], "default": tokens(base), "static": tokens(static),
                     "speedup": f"**{speedup}**" if r["batch"] <= 64 else speedup,
                     "split": f"{fixed(2)(static['prefill_s'])} / {fixed(2)(static['decode_s'])}",
                     "ms": static["ms_per_graph_step"], "peak": f"{base['peak_gib']:.1f} / {static['peak_gib']:.1f}"})
    return rows


STATIC_GRAPH_COLUMNS = [
    Col("batch", "batch"), Col("default tok/s (clips/s)", "default"), Col("static_graph tok/s (clips/s)", "static"),
    Col("speed-up", "speedup"), Col("static prefill s / decode s", "split"),
    Col("ms per decoding step", "ms", fixed(1)),
    Col("peak GiB default / static", "peak")]

TABLES += [
    Table("captioning_static_final", ["captioning_h100_final_b1_fp32.json", "captioning_h100_final_b64.json"],
          rows=lambda *runs: [row for d in runs for row in static_graph_rows(d)], columns=STATIC_GRAPH_COLUMNS),
    Table("captioning_static_90fb7da", ["captioning_h100_run2.json"], rows=static_graph_rows,
          columns=STATIC_GRAPH_COLUMNS),
]
