"""The source-decoding stages with the CPU decoder against NVDEC on one H100 node (issue 22,
2026-12-08; bench/bench_nvdec_stages.py): each round's CPU and wall seconds, and whether its
corpus hashes are the first round's.

Each cell is a field of the result file or is computed here from it.
"""

from __future__ import annotations

from doc_tables.spec import Col, Table


def round_rows(d: dict) -> list[dict]:
    first = d["each_round"][0]
    rows = []
    for i, r in enumerate(d["each_round"]):
        rows.append({"round": f"{i // 2 + 1}", "decoder": r["decoder"],
                     "scorers_cpu": r["scorers"]["cpu_s"], "scorers_wall": r["scorers"]["wall_s"],
                     "extract_cpu": r["extract"]["cpu_s"], "extract_wall": r["extract"]["wall_s"],
                     "on_gpu": f"{r['cursors_on_gpu']} of {r['cursors']}",
                     "same": (r["scores_sha256"], r["clip_files_sha256"]) == (first["scores_sha256"],
                                                                            first["clip_files_sha256"])})
    for stage in ("scorers", "extract"):
        rows.append({"round": "best of each", "decoder": f"nvdec / cpu ({stage})",
                     f"{stage}_cpu": d["nvdec_over_cpu"][stage]})
    return rows


TABLES = [
    Table("nvdec_stages_h100", ["nvdec_stages_h100.json"], rows=round_rows, columns=[
        Col("round", "round"), Col("decoder", "decoder"),
        Col("technical + motion CPU s", "scorers_cpu", "{:.3f}"), Col("technical + motion wall s", "scorers_wall", "{:.2f}"),
        Col("extraction CPU s", "extract_cpu", "{:.3f}"), Col("extraction wall s", "extract_wall", "{:.2f}"),
        Col("source cursors on NVDEC", "on_gpu"),
        Col("scores and clip bytes as round 1's", "same", lambda v: "yes" if v else "NO")]),
]
