"""Captioning's final fast path on H100s (issue 20, 2026-11-24): ten bench_captioning.py calls on six
machines, each row one batch size of one call, against the reference measured in the same process."""

from __future__ import annotations

from statistics import mean

from doc_tables.formats import fixed, whole
from doc_tables.spec import Col, Table

FAST = "static_graph_compiled"
# (machine label, call, batch): the calls ran on machines M1 to M4 (calls 1 to 4), M5 (5 to 9), M6 (10)
ROWS = [("M4", 4, 1), ("M5", 9, 1), ("M6", 10, 1), ("M5", 9, 64), ("M5", 9, 256), ("M3", 3, 512),
        ("M4", 4, 512), ("M5", 5, 512), ("M5 (call 6)", 6, 1024), ("M5 (call 8)", 8, 1024), ("M5", 7, 1280)]
CALL_FILES = {3: "captioning_h100_call3_512.json", 4: "captioning_h100_call4_1_512.json",
              5: "captioning_h100_call5_512.json", 6: "captioning_h100_call6_1024.json",
              7: "captioning_h100_call7_1280.json", 8: "captioning_h100_call8_1024.json",
              9: "captioning_h100_call9_1_64_256.json", 10: "captioning_h100_call10_1.json"}
PREFETCH_FROM_BATCH = 128  # the final code prepares the next batch in a thread from this size up
SAME_CODE_FROM_CALL = 10   # from call 10 both stream figures below 128 ran the final code (no prefetch there)


def _stream(r: dict, call: int) -> list[float]:
    """Our steady-state seconds a batch in the final code's configuration; [] without a valid stream.

    Calls 3 and 4 measured a first version of the stream (no ``one_batch_s``): not comparable.
    """
    s = r.get("stream", {})
    if "one_batch_s" not in s.get("default", {}):
        return []
    with_prefetch = s[FAST]["s_per_batch"]
    without = s.get(FAST + "_no_prefetch", {}).get("s_per_batch")
    if r["batch"] >= PREFETCH_FROM_BATCH or without is None:
        return [with_prefetch]
    return sorted([without, with_prefetch]) if call >= SAME_CODE_FROM_CALL else [without]


def _span(values: list[float], fmt) -> str:
    return " to ".join(fmt(v) for v in sorted(values)) if len(values) > 1 else fmt(values[0])


def final_row(machine: str, call: int, r: dict, new_tokens: int) -> dict:
    base = r["default"]
    row = {"batch": whole(r["batch"]), "machine": machine, "peak_ref": fixed(1)(base["peak_gib"])}
    fast = r.get(FAST)
    warm_ref = []
    if "default_repeats_s" in r:
        warm_ref.append(f"{' and '.join(fixed(2)(x) for x in r['default_repeats_s'])} repeat")
    stream = _stream(r, call)
    ref_stream = r["stream"]["default"]["s_per_batch"] if stream else None
    if ref_stream is not None:
        warm_ref.append(f"{fixed(2)(ref_stream)} stream")
    row["reference"] = f"{fixed(2)(base['s'])} / {', '.join(warm_ref) or '—'}"
    if fast is None:  # out of memory before our path ran
        return {**row, "ours": "out of memory", "peak": f"{row['peak_ref']} / —"}
    row["ours"] = f"{fixed(3)(fast['s'])} / {_span(stream, fixed(3)) if stream else '—'}"
    row["first"] = fixed(1)(r[f"speedup_{FAST}"]) + "x"
    warm = []
    if "default_repeats_s" in r:
        warm.append(f"**{fixed(1)(mean(r['default_repeats_s']) / mean(r[FAST + '_repeats_s']))}x** repeat")
    if stream:
        warm.append(f"**{_span([ref_stream / s for s in stream], fixed(1))}x** stream")
    row["warm"] = ", ".join(warm) or "—"
    # the faster of the single call and the stream where the stream is one figure
    rate, source = (fast["tokens_per_s"], fast["clips_per_s"]), "single"
    if len(stream) == 1 and stream[0] < fast["s"]:
        measured = r["stream"][FAST]  # its rates are from unrounded seconds; the no-prefetch run has none
        rate = ((measured["tokens_per_s"], measured["clips_per_s"]) if measured["s_per_batch"] == stream[0]
                else (r["batch"] * new_tokens / stream[0], r["batch"] / stream[0]))
        source = "stream"
    tps, cps = rate
    row["tokens"] = f"{whole(round(tps, 1))} ({fixed(2 if cps < 5 else 1)(round(cps, 2))}) {source}"
    row["peak"] = f"{row['peak_ref']} / {fixed(1)(fast['peak_gib'])}"
    return row


def final_rows(*calls: dict) -> list[dict]:
    by_call = dict(zip(CALL_FILES, calls, strict=True))
    rows = []
    for machine, call, batch in ROWS:
        d = by_call[call]
        r = next(x for x in d["results"] if x["batch"] == batch)
        rows.append(final_row(machine, call, r, d["info"]["new_tokens"]))
    return rows


TABLES = [
    Table("captioning_final_h100", list(CALL_FILES.values()), rows=final_rows, columns=[
        Col("batch", "batch"), Col("machine", "machine"), Col("reference s (first / warm)", "reference"),
        Col("ours s (single / stream)", "ours"), Col("vs first call", "first"),
        Col("**vs warm reference**", "warm"), Col("ours tokens/s (clips/s), from", "tokens"),
        Col("peak GiB reference / ours", "peak")]),
]
