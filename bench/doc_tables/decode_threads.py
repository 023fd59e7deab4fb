"""docs/benchmarks.md: the source decoders' threads (bench/bench_decode_threads.py)."""

from __future__ import annotations

from statistics import median

from doc_tables.spec import Col, Table

RESULT = "decode_threads_cpu_720p.json"
NODE = "decode_threads_h100_node.json"  # the GPU node's 16 cores (run 11's first device call)


def decode_rows(d: dict) -> list[dict]:
    """Per setting: each round's CPU and wall seconds for the video(s), and the median CPU against one thread."""
    def cpu(runs: list) -> list[float]:
        return [sum(v["cpu_s"] for v in r) for r in runs]

    base = median(cpu(d["decode"]["one thread"]))
    return [{"setting": name, "frames": sum(v["frames"] for v in runs[0]),
             "cpu": " / ".join(f"{c:.2f}" for c in cpu(runs)),
             "wall": " / ".join(f"{sum(v['wall_s'] for v in r):.2f}" for r in runs),
             "of_one": median(cpu(runs)) / base} for name, runs in d["decode"].items()]


def stage_rows(d: dict) -> list[dict]:
    """Per stage: CPU per round with filters.source_decode_threads 0 (before) and 1, and the medians' ratio."""
    same = d["outputs_identical"]
    output = {"technical": "scores identical" if same else "scores differ",
              "motion": "scores identical" if same else "scores differ",
              "extract": "clip bytes identical" if same else "clip bytes differ",
              "split": "control: the splitter's own decoder, not changed"}
    rows = []
    for stage, note in output.items():
        before = [r["stages"][stage]["cpu_s"] for r in d["stages"]["0"]]
        after = [r["stages"][stage]["cpu_s"] for r in d["stages"]["1"]]
        rows.append({"stage": stage, "before": " / ".join(f"{c:.2f}" for c in before),
                     "after": " / ".join(f"{c:.2f}" for c in after), "ratio": median(after) / median(before),
                     "output": note})
    return rows


def _tables(suffix: str, result: str, decode_header: str, stage_header: str, before_header: str) -> list[Table]:
    """The decode table and the stages table of one result file."""
    return [
        Table(f"decode_threads_raw{suffix}", [result], rows=decode_rows, columns=[
            Col(decode_header, "setting"), Col("frames", "frames", "{:,}"),
            Col("CPU s (round 1 / 2)", "cpu"), Col("wall s (round 1 / 2)", "wall"),
            Col("median CPU against one thread", "of_one", "{:.2f}x")]),
        Table(f"decode_threads_stages{suffix}", [result], rows=stage_rows, columns=[
            Col(stage_header, "stage"), Col(before_header, "before"),
            Col("CPU s, one thread (1, the default; round 1 / 2)", "after"), Col("median after / before", "ratio", "{:.2f}x"),
            Col("output", "output")]),
    ]


TABLES = (_tables("", RESULT, "H.264 decoder threads (2-minute 720p edit)", "stage",
                  "CPU s, FFmpeg's threads (0, before; round 1 / 2)")
          + _tables("_node", NODE, "H.264 decoder threads (30 s 720p edit, the node's 16 cores)",
                    "stage (the node's 16 cores)", "CPU s, FFmpeg's threads (0; round 1 / 2)"))
