"""`vidcorpus serve` under load (issue 25): bench/bench_serve.py, one JSON file per run."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from doc_tables.formats import fixed
from doc_tables.spec import Col, RenderError, Table

P95 = "p95"


def latency(seconds: float) -> str:
    """Whole milliseconds under a second, three figures of seconds above: 135 ms, 1.08 s, 14.8 s."""
    if seconds < 0.9995:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s" if seconds < 9.995 else f"{seconds:.1f} s"


def _runs(spec: Sequence[tuple[str, str, Sequence[str]]]) -> Callable[..., list[dict]]:
    """Rows from (file, label, headers in bold) triples, the files given in the same order."""
    def rows(*files: dict) -> list[dict]:
        out = []
        for d, (_name, label, bold) in zip(files, spec, strict=True):
            think = d["think_ms"] / 1000
            out.append({**d["pages"]["all"], "label": label, "cpu_ms": d["server_cpu_ms_per_page"],
                        "rss": d.get("server_peak_rss_mb"), "think": f"{think:g} s" if think else "0",
                        "load": f"{d['loadavg_before'][0]:.1f} / {d['loadavg_after'][0]:.1f}", "_bold": tuple(bold)})
        return out
    return rows


def serve_table(name: str, label_header: str, spec: Sequence[tuple[str, str, Sequence[str]]], *,
                think: bool = False, load: bool = True, longest: bool = False, rss: bool = False,
                thousands: bool = False, per_s: int = 1, cpu: str = "{:.1f} ms", p95_header: str = P95) -> Table:
    """One row per run file; which optional columns and number styles the section's table uses."""
    columns = [Col(label_header, "label")]
    if think:
        columns.append(Col("think", "think"))
    if load:
        columns.append(Col("load start / end", "load"))
    columns += [Col("pages", "n", "{:,}" if thousands else "{}"), Col("errors", "errors"),
                Col("pages/s", "per_s", fixed(per_s)), Col("p50", "p50_s", latency), Col(p95_header, "p95_s", latency),
                Col("p99", "p99_s", latency)]
    if longest:
        columns.append(Col("max", "max_s", latency))
    columns.append(Col("server CPU per page", "cpu_ms", cpu.format))
    if rss:
        columns.append(Col("peak RSS", "rss", (lambda v: f"{v:,.0f} MB") if thousands else (lambda v: f"{v:.0f} MB")))
    return Table(name, [f for f, _l, _b in spec], compact=True, rows=_runs(spec), columns=columns)


B = (P95,)
QUIET = [(f"serve_1m_50clients_think0_pass4_quiet_run{i}.json", str(i), (f"**{P95}**",)) for i in (1, 2, 3)]
PASS4 = [(f"serve_1m_50clients_think0_pass4_{f}.json", label, ()) for f, label in [
    ("before_run1", "before, run 1"), ("after_run1", "after, run 1"), ("before_run2", "before, run 2"),
    ("after_run2", "after, run 2"), ("after_run3", "after, run 3 (00:51, final code)"),
    ("before_run3", "before, run 3"),
    ("after_rt40", "after, `--request-threads 40` (anyio's default, as before)"),
    ("after_rt8", "after, `--request-threads 8` (the new default)")]]
PASS3 = [
    ("serve_1m_50clients_think0_pass3_run1.json", "**50 clients, no pause**, run 1", B),
    ("serve_1m_50clients_think0_pass3_run2.json", "50 clients, no pause, run 2", B),
    ("serve_1m_50clients_think0_pass3_run3.json", "50 clients, no pause, run 3", B),
    ("serve_1m_50clients_think0_pass3_run4.json", "50 clients, no pause, run 4", B),
    ("serve_1m_50clients_think0_pass3_run5.json", "**50 clients, no pause**, run 5 (final code, 22:19)", B),
    ("serve_1m_50clients_think0_pool100k_pass3.json", "50 clients, no pause, clip pages from 100,000 clips", ()),
    ("serve_1m_50clients_think0_workers2_pass3_run1.json", "50 clients, no pause, `--workers 2`, run 1", ()),
    ("serve_1m_50clients_think0_workers2_pass3_run2.json", "50 clients, no pause, `--workers 2`, run 2", ()),
    ("serve_1m_50clients_think0_workers2_pass3_run3.json", "50 clients, no pause, `--workers 2`, run 3 (22:20)", ()),
    ("serve_1m_50clients_think1000_pass3.json", "**50 clients, 1 s pause**", B),
    ("serve_1m_1client_pass3.json", "1 client, no pause", ()),
    ("serve_1m_50clients_think0.json", "*second pass, for comparison: 50 clients, no pause*", ()),
]
WORKERS = [
    ("serve_1m_50clients_think0_quiet_w1_q1.json", "`--workers 1`, run 1", B),
    ("serve_1m_50clients_think0_quiet_w2_q1.json", "`--workers 2`, run 1", B),
    ("serve_1m_50clients_think0_quiet_w1_q2.json", "`--workers 1`, run 2", B),
    ("serve_1m_50clients_think0_quiet_w2_q2.json", "`--workers 2`, run 2", B),
    ("serve_1m_50clients_think0_quiet_w1_std1.json",
     "`--workers 1`, httptools and uvloop installed (uvicorn's auto choice)", B),
]
PASS2 = [
    ("serve_1m_50clients_think0.json", "**50 clients, no pause**", B),
    ("serve_1m_50clients_think1000_run3.json", "**50 clients, 1 s pause**, run 3", B),
    ("serve_1m_50clients_think1000_run2.json", "50 clients, 1 s pause, run 2", ()),
    ("serve_1m_50clients_think1000.json", "50 clients, 1 s pause, run 1 (all clients start at once)", ()),
    ("serve_1m_50clients_think1000_before.json",
     "50 clients, 1 s pause, **code before this pass** (same catalog and indexes)", ()),
    ("serve_1m_1client.json", "1 client, no pause", ()),
]


def _mb(nbytes: float) -> str:
    """Decimal megabytes, whole: 65 MB, 1,200 MB."""
    return f"{nbytes / 1e6:,.0f} MB"


def _grid_memory_rows(*files: dict) -> list[dict]:
    """One row per catalog: bench/bench_grid_memory.py's first read, a score's loads, every score both ways."""
    out = []
    for d in files:
        if d["scores"] != 15:
            raise RenderError(f"{d['db']}: {d['scores']} scores, the table's header says 15")
        first, one, every = d["first_read"], d["median_score"], d["all_scores"]
        out.append({"clips": f"{d['clips'] / 1e6:g} M",
                    "load": f"{d['load_1min_measure_start']:.1f} / {d['load_1min_measure_end']:.1f}",
                    "first": f"{latency(first['wall_s'])} wall, {latency(first['cpu_s'])} CPU",
                    "arrays": first["array_bytes"],
                    "one": f"{latency(one['column_and_ascending_wall_s'])} / {latency(one['descending_wall_s'])}",
                    "columns": every["columns_bytes"], "orders": every["orders_bytes"],
                    "total": every["total_array_bytes"],
                    "dropped": f"{len(every['orders_dropped'])} of {every['orders_wanted']}"})
    return out


GRID_MEMORY = ["grid_memory_1m.json", "grid_memory_10m.json"]

TABLES = [
    Table("serve_grid_memory", GRID_MEMORY, compact=True, rows=_grid_memory_rows, columns=[
        Col("clips", "clips"), Col("load start / end", "load"),
        Col("first read (ids, decisions, sources, reasons)", "first"), Col("arrays then", "arrays", _mb),
        Col("one score (median of the 15): column + ascending / descending", "one"),
        Col("15 scores both ways: + columns", "columns", lambda v: "+" + _mb(v)),
        Col("+ orders", "orders", lambda v: "+" + _mb(v)), Col("arrays in all", "total", _mb),
        Col("orders the 1 GiB budget dropped", "dropped")]),
    serve_table("serve_quiet", "run (quiet)", QUIET, load=False, longest=True, rss=True, thousands=True, per_s=0,
                cpu="{:.2f} ms", p95_header=f"**{P95}**"),
    serve_table("serve_pass4", "run (1 M clips, no pause, 50 clients), helper, under load", PASS4, rss=True,
                cpu="{:.2f} ms"),
    serve_table("serve_pass3", "run (1 M clips, third pass)", PASS3, think=True),
    serve_table("serve_workers_quiet", "run (1 M clips, no pause, 50 clients)", WORKERS, cpu="{:.2f} ms"),
    serve_table("serve_pass2", "run (1 M clips)", PASS2, think=True, cpu="{:.0f} ms"),
]
