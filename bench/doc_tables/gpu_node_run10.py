"""The job on one H100 node after run 9 (issue 22, run 10, 2026-12-07): x264's preset for precise
clips, the caption actor's read-ahead, and the job again.

Each cell is a field of a result file or is computed here from it.
"""

from __future__ import annotations

from doc_tables.spec import Col, Table

PRESETS = "clip_preset_cpu.json"


def preset_rows(d: dict) -> list[dict]:
    """bench/bench_clip_preset.py: per video and preset, CPU a frame, bytes and luma PSNR, against the
    first preset listed (veryfast, the default before run 10)."""
    return [{"video": f"{v['video']} ({v['size']}, {v['frames']} frames)", **p} for v in d["videos"] for p in v["presets"]]


TABLES = [
    Table("clip_preset_cpu", [PRESETS], rows=preset_rows, columns=[
        Col("video", "video"), Col("preset (crf 20)", "preset"), Col("CPU ms a frame", "cpu_ms_per_frame", "{:.2f}"),
        Col("of veryfast", "cpu_of_first", "{:.2f}x"), Col("kB", "kbytes", "{:,.0f}"),
        Col("bytes of veryfast", "bytes_of_first", "{:.2f}x"), Col("PSNR-Y dB", "psnr_y_db", "{:.2f}"),
        Col("PSNR-Y minus veryfast's dB", "psnr_minus_first_db", "{:+.2f}")]),
]
