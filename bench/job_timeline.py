"""When things happened in a measured job (bench/gpu_node_job.py): the host's CPU use sampled from
outside, and the catalog's own timestamps read back after the job.

Why: a job's rate alone cannot say what bound it. Run 3 of the GPU-node job did an hour of footage
in 470 s while the per-stage CPU costs measured on the dev machine add up to a third of that; only a
timeline tells whether the cores sat idle (scheduling, a stage starved of input, the driver) or were
saturated (the stages cost more there), and when the caption actors finished setting up and the
first captions landed.
"""

from __future__ import annotations

import threading
import time


class HostCpu(threading.Thread):
    """The host's CPU busy share every ``every_s`` (psutil.cpu_percent over the interval, all cores)."""

    def __init__(self, every_s: float = 1.0):
        super().__init__(daemon=True)
        import psutil

        self.psutil, self.every = psutil, every_s
        self.samples: list[tuple[float, float]] = []  # (t, busy % of all cores)
        self.stop = threading.Event()

    def run(self) -> None:
        self.psutil.cpu_percent(interval=None)  # the first call only sets the reference
        while not self.stop.wait(self.every):
            self.samples.append((time.time(), self.psutil.cpu_percent(interval=None)))

    def result(self, t0: float, t1: float, bucket_s: float = 30.0) -> dict:
        s = [(t - t0, p) for t, p in self.samples if t0 <= t <= t1]
        if not s:
            return {"samples": 0}
        busy = [p for _, p in s]
        buckets: dict[int, list[float]] = {}
        for t, p in s:
            buckets.setdefault(int(t // bucket_s), []).append(p)
        return {"samples": len(s), "every_s": self.every, "cores": self.psutil.cpu_count(),
                "busy_mean_pct": round(sum(busy) / len(busy), 1),
                "share_of_samples_90pct_busy": round(sum(p >= 90 for p in busy) / len(busy), 3),
                "bucket_s": bucket_s,
                "busy_pct_by_bucket": [round(sum(v) / len(v), 1) for _, v in sorted(buckets.items())]}


class TreeCpu(threading.Thread):
    """CPU seconds of one process and all its descendants, sampled every ``every_s`` (psutil).

    Why: on a shared machine the host's busy share mixes in other jobs; this counts only the measured
    side (a Ray driver with its raylet and workers, or video2dataset with its ffmpeg children). Each
    process's last reading is kept (user + system, with its reaped children's), so a worker that exits
    between samples loses at most one interval. A process's reaped children are not added (they
    were sampled themselves while they ran), so nothing counts twice.
    """

    def __init__(self, pid: int, every_s: float = 0.5):
        super().__init__(daemon=True)
        import psutil

        self.psutil, self.pid, self.every = psutil, pid, every_s
        self.last: dict[tuple[int, float], float] = {}  # (pid, create time) -> CPU seconds
        self.names: dict[tuple[int, float], str] = {}
        self.samples: list[tuple[float, float]] = []  # (t, tree CPU seconds so far)
        self.stop = threading.Event()

    def _read(self) -> None:
        try:
            root = self.psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except self.psutil.Error:
            return
        for p in procs:
            try:
                t, key = p.cpu_times(), (p.pid, p.create_time())
                self.last[key] = t.user + t.system
                title = (p.cmdline()[:1] or [p.name()])[0].rsplit("/", 1)[-1][:40]
                if key not in self.names or "IDLE" not in title:  # a Ray worker's title names its task
                    self.names[key] = title
            except self.psutil.Error:
                continue
        self.samples.append((time.time(), sum(self.last.values())))

    def run(self) -> None:
        while not self.stop.wait(self.every):
            self._read()

    def result(self, t0: float, t1: float, cores: int, bucket_s: float = 10.0) -> dict:
        """Total CPU seconds, their share of ``cores`` x the wall time, and that share per bucket."""
        self.stop.set()
        s = [(t - t0, c) for t, c in self.samples if t0 <= t <= t1 + self.every]
        if not s:
            return {"samples": 0}
        total, wall = s[-1][1], max(t1 - t0, 1e-9)
        by_bucket: dict[int, float] = {}
        prev = 0.0
        for t, c in s:
            by_bucket[int(t // bucket_s)] = by_bucket.get(int(t // bucket_s), 0.0) + c - prev
            prev = c
        by_name: dict[str, float] = {}
        for key, c in self.last.items():
            by_name[self.names.get(key, "?")] = by_name.get(self.names.get(key, "?"), 0.0) + c
        top = dict(sorted(((k, round(v, 1)) for k, v in by_name.items()), key=lambda kv: -kv[1])[:12])
        return {"cpu_s": round(total, 1), "cpu_s_by_process": top, "cores": cores, "busy_share_of_cores": round(total / (wall * cores), 3),
                "bucket_s": bucket_s,
                "busy_share_by_bucket": [round(v / (bucket_s * cores), 2) for _, v in sorted(by_bucket.items())]}


def catalog_timeline(con, bucket_s: float = 30.0) -> dict:
    """Counts per ``bucket_s`` from the pipeline run's start, read from the catalog's timestamps:
    clips committed, decisions, captions written, sources done; when each model stage set up
    (its events row), the first and last caption; and each stage's busy seconds per bucket (the
    runner's stage_intervals). ``con``: a DuckDB connection to the job's catalog."""
    q = lambda sql, *a: con.execute(sql, list(a)).fetchall()  # noqa: E731
    runs = q("SELECT run_id, started_at FROM runs WHERE kind = 'pipeline' ORDER BY started_at LIMIT 1")
    if not runs:
        return {"note": "no pipeline run in the catalog"}
    run_id, start = runs[0]
    since = "epoch(CAST({col} AS TIMESTAMP)) - epoch(CAST(? AS TIMESTAMP))"

    def series(table: str, col: str, where: str = "TRUE") -> dict:
        rows = q(f"SELECT floor(({since.format(col=col)}) / ?) AS b, count(*) FROM {table} "
                 f"WHERE {col} IS NOT NULL AND {where} GROUP BY b ORDER BY b", start, bucket_s)
        return {str(int(b * bucket_s)): n for b, n in rows}

    def first_last(table: str, col: str) -> list:
        (a, b), = q(f"SELECT min({since.format(col=col)}), max({since.format(col=col)}) FROM {table} "
                    f"WHERE {col} IS NOT NULL", start, start)
        return [None if a is None else round(a, 1), None if b is None else round(b, 1)]

    out = {"run_id": run_id, "bucket_s": bucket_s, "seconds_from": "the pipeline run's started_at",
           "clips_committed": series("clips", "updated_at"),
           "decisions": series("decisions", "decided_at"),
           "captions_written": series("captions", "written_at"),
           "sources_done": series("sources", "updated_at", "status = 'done'"),
           "first_last_clip_s": first_last("clips", "updated_at"),
           "first_last_caption_s": first_last("captions", "written_at")}
    out["setup_events"] = [
        {"stage": st, "count": n, "first_s": round(a, 1), "last_s": round(b, 1)}
        for st, n, a, b in q(f"SELECT stage, count, {since.format(col='first_at')}, {since.format(col='last_at')} "
                             "FROM events WHERE run_id = ? AND kind = 'setup' ORDER BY stage", start, start, run_id)]
    out["other_events"] = [
        {"stage": st, "kind": k, "count": n, "message": m[:200]}
        for st, k, n, m in q("SELECT stage, kind, count, message FROM events WHERE run_id = ? AND kind <> 'setup' "
                             "ORDER BY count DESC LIMIT 20", run_id)]
    busy: dict[str, dict[str, float]] = {}
    for stage, start_s, end_s in q("SELECT stage, start_s, end_s FROM stage_intervals WHERE run_id = ? "
                                   "AND state = 'busy'", run_id):
        t = start_s
        while t < end_s:  # split each busy interval over the buckets it spans
            b = int(t // bucket_s)
            upto = min(end_s, (b + 1) * bucket_s)
            row = busy.setdefault(stage, {})
            row[str(b * int(bucket_s))] = round(row.get(str(b * int(bucket_s)), 0.0) + upto - t, 1)
            t = upto
    out["stage_busy_s_by_bucket"] = busy
    return out
