"""Captioning on an H100 (issues 6 and 20): the fast-path probe check (bench/probe_cuda_check.py)."""

from __future__ import annotations

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
            equal = (f"{c['long_rows_equal_generate']} of {c['batch']} rows" if c["long_token_agreement_with_generate"] == 1
                     else f"{c['long_token_agreement_with_generate']:.1%} of tokens")
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
