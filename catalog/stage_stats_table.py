"""The catalog's side of "where the time goes": each run's per-stage rows and timeline intervals.

The driver writes them once at the end of a run (``write``: replaces the run's rows, so writing
again is idempotent); `vidcorpus report` and SQL users read them by run_id (``read``).
"""

from __future__ import annotations

import datetime as dt

import duckdb

COLUMNS = ("run_id", "stage", "step", "rows_in", "rows_out", "batches", "workers", "wall_s", "busy_s",
           "wait_input_s", "wait_output_s", "work_s", "setup_s", "gpu_busy_share", "bound_by", "written_at")


def write(cat, run_id: str, rows) -> int:
    """Replace ``run_id``'s stage rows and intervals with ``rows`` (vidcorpus.stage_stats.StageRow)."""
    rows = list(rows)
    top = max(rows, key=lambda r: r.busy_s).stage if rows else None
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    with cat.transaction() as con:
        con.execute("DELETE FROM stage_stats WHERE run_id = ?", [run_id])
        con.execute("DELETE FROM stage_intervals WHERE run_id = ?", [run_id])
        for r in rows:
            d = r.as_dict()
            con.execute(f"INSERT INTO stage_stats ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                        [run_id] + [d[c] for c in COLUMNS[1:-2]] + [r.stage == top, now])
            spans = [(run_id, r.stage, state, a, b) for state, ivs in (("busy", r.busy), ("wait_output", r.held))
                     for a, b in ivs]
            if spans:
                con.executemany("INSERT INTO stage_intervals VALUES (?, ?, ?, ?, ?)", spans)
    return len(rows)


def latest_run_with_stats(cat) -> str | None:
    try:
        got = cat.query_dicts("SELECT s.run_id FROM stage_stats s JOIN runs r USING (run_id) "
                              "ORDER BY r.started_at DESC LIMIT 1")
    except duckdb.Error:  # a catalog (or snapshot) from before the table existed
        return None
    return got[0]["run_id"] if got else None


def read(cat, run_id: str) -> tuple[list[dict], dict[str, list[tuple[str, float, float]]]]:
    """(the run's stage rows in pipeline order, {stage: [(state, start_s, end_s)]}); empty when none."""
    try:
        rows = cat.query_dicts("SELECT * EXCLUDE (written_at) FROM stage_stats WHERE run_id = ? ORDER BY step",
                               [run_id])
        spans = cat.query_dicts("SELECT stage, state, start_s, end_s FROM stage_intervals WHERE run_id = ? "
                                "ORDER BY stage, start_s", [run_id])
    except duckdb.Error:  # a catalog (or snapshot) from before the tables existed
        return [], {}
    out: dict[str, list[tuple[str, float, float]]] = {}
    for s in spans:
        out.setdefault(s["stage"], []).append((s["state"], s["start_s"], s["end_s"]))
    return rows, out
