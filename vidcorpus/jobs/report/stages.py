"""The report's "Where the time goes" section: a run's stages on one timeline, and what bounds it.

Reads ``stage_stats`` and ``stage_intervals`` (written by the driver at the end of each run,
``vidcorpus/stage_stats.py``) for the report's run, or the newest run that recorded them.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Callable

from vidcorpus.catalog.stage_stats_table import latest_run_with_stats, read
from vidcorpus.jobs.report import plots as rp
from vidcorpus.stage_stats import StageRow, bound_by

SECTION = ("time", "Where the time goes")


def load_stages(cat, run: str | None) -> tuple[str | None, list[dict], dict]:
    """(run id, its stage rows, its intervals by stage) for the report's run or the newest recorded."""
    run_id = run or latest_run_with_stats(cat)
    rows, spans = read(cat, run_id) if run_id else ([], {})
    return run_id, rows, spans


def _bound_by(rows: list[dict]) -> str:
    return bound_by([StageRow(r["stage"], r["step"], wall_s=r["wall_s"], busy_s=r["busy_s"], setup_s=r["setup_s"])
                     for r in rows])


def headline(loaded: tuple[str | None, list[dict], dict]) -> str | None:
    """One line for the terminal: which stage bounded the run (None when no run recorded it)."""
    run_id, rows, _spans = loaded
    return f"run {run_id}: {_bound_by(rows)}" if rows else None


def stage_section(loaded: tuple[str | None, list[dict], dict], plot_path: Callable[[str], Path],
                  img: Callable[[Path, str], str], table: Callable) -> str:
    """HTML of the section (a note when no run recorded its stages)."""
    run_id, rows, spans = loaded
    if not rows:
        return '<p class="note">no run in this catalog recorded where its time went (runs before issue 22).</p>'
    wall = rows[0]["wall_s"]
    labels = [f"busy {r['busy_s'] / wall:.0%}" + ("" if r["gpu_busy_share"] is None else
                                                   f", GPU {r['gpu_busy_share']:.0%}") if wall else ""
              for r in rows]
    path = plot_path("stage_timeline")
    rp.timeline_plot([r["stage"] for r in rows], spans, wall, labels, path)
    sentence = _bound_by(rows)
    body = (f"<p>run <code>{html.escape(run_id)}</code>, {wall:.1f} s: <b>{html.escape(sentence)}</b></p>"
            + img(path, "stage timeline")
            + table(["stage", "rows in", "rows out", "workers", "busy s", "wait input s", "wait output s",
                     "setup s", "GPU busy"],
                    [[html.escape(r["stage"]), r["rows_in"], r["rows_out"], r["workers"], f"{r['busy_s']:.1f}",
                      f"{r['wait_input_s']:.1f}", f"{r['wait_output_s']:.1f}", f"{r['setup_s']:.1f}",
                      "" if r["gpu_busy_share"] is None else f"{r['gpu_busy_share']:.0%}"] for r in rows],
                    set(range(1, 9)))
            + '<p class="note">Busy: some worker of the stage was processing a batch. Waiting for output: idle '
              "while rows were queued for it (held back by backpressure, no free CPU/GPU or its workers still "
              "starting). Waiting for input: idle with nothing to do. The three add up to the run's wall time; "
              "the driver's own steps are start (preflight, models, Ray), commit (writing batches to the "
              "catalog), dedup and shards.</p>")
    return body
