"""Catalog at scale: bulk insert rate, file size and the latency of the audit queries.

A synthetic catalog of N clips (10 per source, 15 scorers each, long and short captions and a
shard for the kept ones, spread over 10 runs and 30 days) is written through the driver's own
bulk path (``Catalog.commit_fragments``, which also maintains the materialised ``clips_wide``).
Then each query runs ``--repeat`` times on a fresh read-only connection limited to ``--threads``
DuckDB threads; the median is reported. The reference in the same run is the pre-issue-3 design:
the wide view as a pivot over the long ``scores`` table (``wide_view_sql``), and a funnel counting
distinct clips in ``scores``; those run under ``--reference-timeout`` seconds each.

    python bench/bench_catalog.py --clips 100000            # quick check (about a minute)
    python bench/bench_catalog.py --clips 10000000 --json bench/results/catalog_10m_driver.json

Raw JSON only: docs/benchmarks.md's tables are rendered from it (bench/render_benchmarks.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

import duckdb

from vidcorpus.catalog import wide_table
from vidcorpus.catalog.schema import wide_view_sql
from vidcorpus.catalog.store import Catalog

SCORERS = ["aesthetic", "clip_text", "motion", "sharpness", "brightness", "contrast", "colorfulness", "text_area",
           "face_area", "watermark", "nsfw", "ocr_chars", "flow_var", "blur", "noise"]
RUNS = 10
T0 = dt.datetime(2026, 11, 1)


def _gen(lo: int, hi: int, n_total: int, scorers: list[str]) -> dict:
    """Arrow fragments for clips [lo, hi): what the Ray workers would hand the driver."""
    g = duckdb.connect()
    g.execute("SET threads = 2")
    run = f"(('run-' || lpad((i * {RUNS} // {n_total})::VARCHAR, 2, '0')))"
    when = f"(TIMESTAMP '{T0:%Y-%m-%d}' + to_seconds((i * 30 * 86400 // {n_total})::BIGINT))"
    base = f"FROM range({lo}, {hi}) t(i)"
    cid = "(substr(md5((i // 10)::VARCHAR), 1, 16) || '-' || lpad(((i % 10) * 100)::VARCHAR, 7, '0') || '-' || lpad(((i % 10) * 100 + 99)::VARCHAR, 7, '0'))"
    g.execute(f"CREATE TEMP TABLE c AS SELECT i, {cid} AS clip_id, substr(md5((i // 10)::VARCHAR), 1, 16) AS source_id, "
              f"{run} AS run_id, {when} AS ts, (hash(i) % 1000) / 1000.0 AS u {base}")
    out = {}
    out["sources"] = g.sql(
        "SELECT source_id, 'https://host' || lpad(((i // 10) % 20)::VARCHAR, 2, '0') || '.example.com/v/' || (i // 10) || '.mp4' AS uri, "
        "'a video' AS text, 'video' AS media_type, md5(source_id) AS sha256, 10000000 AS bytes, 1280 AS width, 720 AS height, "
        "24.0 AS fps, 2400 AS n_frames, 100.0 AS duration_s, 'done' AS status, run_id, ts AS updated_at "
        "FROM c WHERE i % 10 = 0").to_arrow_table()
    out["clips"] = g.sql(
        "SELECT clip_id, source_id, 'video' AS media_type, (i % 10) * 100 AS first_frame, (i % 10) * 100 + 99 AS last_frame, "
        "(i % 10) * 10.0 AS start_s, (i % 10) * 10.0 + 2 + u * 16 AS end_s, 2 + u * 16 AS duration_s, 100 AS n_frames, "
        "24.0 AS fps, 1280 AS width, 720 AS height, 's3://b/clips/' || clip_id || '.mp4' AS clip_path, "
        "'s3://b/clips/' || clip_id || '.jpg' AS first_frame_path, run_id, ts AS updated_at, 'copy' AS extract_mode FROM c"
    ).to_arrow_table()
    names = "[" + ",".join(f"'{s}'" for s in scorers) + "]"
    out["scores"] = g.sql(
        f"SELECT clip_id, unnest({names}) AS scorer, 'm' AS model, '1' AS version, "
        f"(hash(i, unnest(range({len(scorers)})))) % 10000 / 1000.0 AS value, run_id, ts AS written_at FROM c"
    ).to_arrow_table()
    # kept: aesthetic >= 4 (its value is computed the same way: scorer index 0)
    g.execute("CREATE TEMP TABLE k AS SELECT c.*, (hash(i, 0::BIGINT) % 10000 / 1000.0) >= 4 AS kept FROM c")
    out["decisions"] = g.sql(
        "SELECT clip_id, 'bench@1' AS recipe, kept, CASE WHEN kept THEN NULL ELSE 'aesthetic<4' END AS reason, run_id, "
        "ts AS decided_at FROM k").to_arrow_table()
    out["captions"] = g.sql(
        "SELECT clip_id, 'v1' AS version, unnest(['long', 'short']) AS kind, 'a caption of clip ' || clip_id AS text, "
        "'vlm' AS model, 'p1' AS prompt_version, '{}' AS meta_json, run_id, ts AS written_at FROM k WHERE kept"
    ).to_arrow_table()
    out["shards"] = g.sql(
        "SELECT 'video-720p-16x9-f128-' || lpad((i // 640)::VARCHAR, 8, '0') AS shard_id, "
        "'s3://b/shards/video-720p-16x9-f128-' || lpad((i // 640)::VARCHAR, 8, '0') || '.tar' AS url, "
        "md5((i // 640)::VARCHAR) AS sha256, 0 AS bytes, count(*) AS n, 'video-720p-16x9-f128' AS bucket, "
        "'v1' AS caption_version, any_value(run_id) AS run_id, any_value(ts) AS created_at FROM k WHERE kept GROUP BY i // 640"
    ).to_arrow_table()
    out["shard_members"] = g.sql(
        "SELECT 'video-720p-16x9-f128-' || lpad((i // 640)::VARCHAR, 8, '0') AS shard_id, clip_id FROM k WHERE kept"
    ).to_arrow_table()
    g.close()
    return out


def _direct_load(con, n_total: int, scorers: list[str], batch: int = 960_000) -> None:
    """Fill only what the queries read (sources, clips_wide, shards, shard_members, train_samples)
    with the same values as ``_gen`` (batches a multiple of 640: whole shards), straight in SQL: for query latency at sizes the shared
    machine cannot load through the driver in the time at hand. Not a measure of insert rate."""
    run = f"(('run-' || lpad((i * {RUNS} // {n_total})::VARCHAR, 2, '0')))"
    when = f"(TIMESTAMP '{T0:%Y-%m-%d}' + to_seconds((i * 30 * 86400 // {n_total})::BIGINT))"
    cid = ("(substr(md5((i // 10)::VARCHAR), 1, 16) || '-' || lpad(((i % 10) * 100)::VARCHAR, 7, '0') || '-' || "
           "lpad(((i % 10) * 100 + 99)::VARCHAR, 7, '0'))")
    sid = "substr(md5((i // 10)::VARCHAR), 1, 16)"
    uri = "'https://host' || lpad(((i // 10) % 20)::VARCHAR, 2, '0') || '.example.com/v/' || (i // 10) || '.mp4'"
    kept = "((hash(i, 0::BIGINT) % 10000 / 1000.0) >= 4)"
    shard = "'video-720p-16x9-f128-' || lpad((i // 640)::VARCHAR, 8, '0')"
    cols = ", ".join(f'(hash(i, {k}::BIGINT) % 10000 / 1000.0) AS "{n}"' for k, n in enumerate(scorers))
    for lo in range(0, n_total, batch):
        hi = min(lo + batch, n_total)
        base = f"FROM range({lo}, {hi}) t(i)"
        con.begin()
        con.execute(f"INSERT INTO sources (source_id, uri, text, media_type, sha256, duration_s, status, run_id, updated_at) "
                    f"SELECT {sid}, {uri}, 'a video', 'video', md5({sid}), 100.0, 'done', {run}, {when} {base} WHERE i % 10 = 0")
        con.execute(
            f"INSERT INTO clips_wide BY NAME SELECT {cid} AS clip_id, {sid} AS source_id, 'video' AS media_type, "
            f"(i % 10) * 100 AS first_frame, (i % 10) * 100 + 99 AS last_frame, (i % 10) * 10.0 AS start_s, "
            f"(i % 10) * 10.0 + 2 + (hash(i) % 1000) / 1000.0 * 16 AS end_s, 2 + (hash(i) % 1000) / 1000.0 * 16 AS duration_s, "
            f"100 AS n_frames, 24.0 AS fps, 1280 AS width, 720 AS height, 's3://b/clips/' || {cid} || '.mp4' AS clip_path, "
            f"'s3://b/clips/' || {cid} || '.jpg' AS first_frame_path, {run} AS run_id, {when} AS updated_at, "
            f"'copy' AS extract_mode, {uri} AS uri, 'a video' AS source_text, md5({sid}) AS source_sha256, 'bench@1' AS recipe, "
            f"{kept} AS kept, CASE WHEN {kept} THEN NULL ELSE 'aesthetic<4' END AS reason, "
            f"CASE WHEN {kept} THEN 'a caption of clip ' || {cid} END AS caption, "
            f"CASE WHEN {kept} THEN 'a caption of clip ' || {cid} END AS short_caption, "
            f"CASE WHEN {kept} THEN 'v1' END AS caption_version, CASE WHEN {kept} THEN {shard} END AS shard_id, "
            f"CASE WHEN {kept} THEN 's3://b/shards/' || {shard} || '.tar' END AS shard_url, TRUE AS scored, "
            f"{kept} AS captioned, i % 100 = 0 AS trained, {cols} {base}")
        con.execute(f"INSERT INTO shards SELECT {shard}, 's3://b/shards/' || {shard} || '.tar', md5((i // 640)::VARCHAR), 0, "
                    f"count(*), 'video-720p-16x9-f128', 'v1', any_value({run}), any_value({when}) {base} WHERE {kept} "
                    f"GROUP BY i // 640")
        con.execute(f"INSERT INTO shard_members SELECT {shard}, {cid} {base} WHERE {kept}")
        con.execute(f"INSERT INTO train_samples SELECT 'train-1', (i // 4)::INTEGER, {cid} {base} WHERE i % 100 = 0")
        con.commit()
        print(f"{hi:>10} clips (direct)", flush=True)


BENCH_RECIPE = """name: bench
version: 1
description: the synthetic catalog's decisions (kept = aesthetic >= 4), so reports draw its threshold
missing: drop
predicates:
  - {score: aesthetic, op: ">=", value: 4}
"""


RUNS_SQL = ("INSERT OR IGNORE INTO runs (run_id, kind, status, started_at, finished_at) SELECT DISTINCT run_id, "
            "'pipeline', 'succeeded', min(updated_at), max(updated_at) FROM sources GROUP BY run_id")


def _direct_report_tables(con, n_total: int, scorers: list[str], batch: int = 960_000, resume: bool = False) -> None:
    """With ``--report``: also fill what ``vidcorpus report`` reads beyond clips_wide, with the same
    values: clips (frames 0..999 of each source, all covered), decisions, long and short captions of
    kept clips, a caption-QA score per kept clip (long ``scores`` rows), the recipe, and each
    source's fps and split frame count. In plain SQL, batch by batch. With ``scorers``, the long
    ``scores`` table also gets every clip's row for each of them, equal to its clips_wide column:
    shaped as the driver's commit path writes it (15 rows a clip, 150 M at 10 M clips). ``resume``
    goes on after the last whole batch of a fill that stopped (each batch is one transaction)."""
    start = 0
    if resume:
        start = con.execute("SELECT count(*) FROM clips").fetchone()[0]
    else:
        con.execute("INSERT INTO recipes VALUES ('bench@1', 'bench', '1', md5(?), ?, 'bench', 'run-00', ?)",
                    [BENCH_RECIPE, BENCH_RECIPE, T0])
        con.execute("UPDATE sources SET fps = 24.0, split_frames = 1000")
        con.execute(RUNS_SQL)
    for lo in range(start, n_total, batch):
        hi = min(lo + batch, n_total)
        w = f"FROM clips_wide WHERE rowid >= {lo} AND rowid < {hi}"  # in the order _direct_load wrote
        con.begin()
        con.execute("INSERT INTO clips BY NAME SELECT clip_id, source_id, media_type, first_frame, last_frame, start_s, "
                    "end_s, duration_s, n_frames, fps, width, height, clip_path, first_frame_path, run_id, updated_at, "
                    f"extract_mode {w}")
        con.execute(f"INSERT INTO decisions BY NAME SELECT clip_id, recipe, kept, reason, run_id, updated_at AS decided_at {w}")
        con.execute("INSERT INTO captions BY NAME SELECT clip_id, 'v1' AS version, unnest(['long', 'short']) AS kind, "
                    "caption AS text, 'vlm' AS model, 'p1' AS prompt_version, '{\"degenerate\": false}' AS meta_json, "
                    f"run_id, updated_at AS written_at {w} AND kept")
        if scorers:  # the wide columns back into long rows, as commit_fragments would have written them
            names = ", ".join(f"'{n}'" for n in scorers)
            values = ", ".join(f'"{n}"' for n in scorers)
            con.execute(f"INSERT INTO scores BY NAME SELECT clip_id, unnest([{names}]) AS scorer, 'm' AS model, '1' AS version, "
                        f"unnest([{values}]) AS value, run_id, updated_at AS written_at {w}")
        con.execute("INSERT INTO scores BY NAME SELECT clip_id, 'caption_clip' AS scorer, 'clip' AS model, 'v1/p1' AS version, "
                    f"(hash(clip_id) % 1000) / 1000.0 AS value, run_id, updated_at AS written_at {w} AND kept")
        con.commit()
        print(f"{hi:>10} clips (direct, report tables)", flush=True)


def _queries(sample_clip: str) -> dict[str, str]:
    last_week = (T0 + dt.timedelta(days=23)).strftime("%Y-%m-%d")
    return {
        "funnel": "SELECT * FROM funnel ORDER BY step",
        "funnel of one run": "SELECT * FROM funnel_by_run WHERE run_id = 'run-05' ORDER BY step",
        "audit (issue's question)": (
            "SELECT kept, reason, count(*) AS clips, round(sum(duration_s) / 3600, 2) AS hours FROM clips_wide "
            "WHERE duration_s BETWEEN 5 AND 10 AND uri LIKE 'https://host03.example.com/%' "
            f"AND updated_at >= TIMESTAMP '{last_week}' AND (aesthetic >= 5 OR NOT kept) GROUP BY ALL ORDER BY clips DESC"),
        "recipe what-if": (
            "SELECT count(*) FILTER (WHERE aesthetic >= 5 AND clip_text >= 2.5 AND motion BETWEEN 0.5 AND 9) AS would_keep, "
            "sum(duration_s) FILTER (WHERE aesthetic >= 5 AND clip_text >= 2.5 AND motion BETWEEN 0.5 AND 9) / 3600 AS hours, "
            "count(*) AS clips FROM clips_wide WHERE duration_s BETWEEN 2 AND 20"),
        "wide: top kept clips": "SELECT * FROM clips_wide WHERE kept AND aesthetic >= 5 ORDER BY aesthetic DESC LIMIT 100",
        "wide: one clip": f"SELECT * FROM clips_wide WHERE clip_id = '{sample_clip}'",
        "training shard selection": (
            "SELECT sh.url, sh.sha256, count(*) FROM shards sh JOIN shard_members m USING (shard_id) "
            "JOIN (SELECT clip_id FROM clips_wide WHERE shard_id IS NOT NULL AND (kept AND aesthetic >= 9)) w "
            "ON w.clip_id = m.clip_id GROUP BY sh.url, sh.sha256 ORDER BY sh.url"),
    }


def _reference_queries(wide_sql: str) -> dict[str, str]:
    return {
        "REFERENCE funnel 'scored' (count distinct clips in scores)": "SELECT count(DISTINCT clip_id) FROM scores",
        "REFERENCE wide: top kept clips (pivot view)":
            f"SELECT * FROM ({wide_sql}) WHERE kept AND aesthetic >= 5 ORDER BY aesthetic DESC LIMIT 100",
        "REFERENCE recipe what-if (pivot view)": (
            f"SELECT count(*) FILTER (WHERE aesthetic >= 5 AND clip_text >= 2.5 AND motion BETWEEN 0.5 AND 9) AS would_keep, "
            f"count(*) AS clips FROM ({wide_sql}) WHERE duration_s BETWEEN 2 AND 20"),
    }


def _time(path: str, sql: str, threads: int, repeat: int, timeout: float | None = None) -> dict:
    times, rows = [], None
    for _ in range(repeat):
        con = duckdb.connect(path, read_only=True)
        con.execute(f"SET threads = {threads}")
        timer = threading.Timer(timeout, con.interrupt) if timeout else None
        t = time.perf_counter()
        try:
            if timer:
                timer.start()
            rows = len(con.execute(sql).fetchall())
        except duckdb.InterruptException:
            con.close()
            return {"median_s": None, "timed_out_after_s": timeout}
        finally:
            if timer:
                timer.cancel()
        times.append(time.perf_counter() - t)
        con.close()
    return {"median_s": statistics.median(times), "all_s": times, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=100_000, help="Clips per commit_fragments transaction.")
    ap.add_argument("--scorers", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2, help="DuckDB threads for the queries.")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--reference-timeout", type=float, default=120.0)
    ap.add_argument("--memory-limit", default="10GB", help="DuckDB memory_limit of the writer.")
    ap.add_argument("--db", default="/tmp/bench-catalog/catalog.duckdb")
    ap.add_argument("--direct", action="store_true",
                    help="Fill only the tables the queries read, in SQL (query latency only; see _direct_load).")
    ap.add_argument("--report", action="store_true",
                    help="With --direct: also fill what `vidcorpus report` reads (see _direct_report_tables).")
    ap.add_argument("--score-rows", action="store_true",
                    help="With --report: also write every clip's long scores rows (15 a clip, as a real run does).")
    ap.add_argument("--report-batch", type=int, default=960_000,
                    help="Clips per transaction of the --report fill (smaller holds less memory with --score-rows).")
    ap.add_argument("--report-resume", action="store_true",
                    help="With --direct --report and --skip-load: go on with a --report fill that stopped part-way.")
    ap.add_argument("--fill-only", action="store_true", help="Build the catalog and stop (no queries).")
    ap.add_argument("--skip-load", action="store_true",
                    help="Measure an existing --db (e.g. a load that was stopped part-way: its batches are whole).")
    ap.add_argument("--json", default=None, help="Write the results here too.")
    args = ap.parse_args()

    scorers = SCORERS[:args.scorers]
    db = Path(args.db)
    db.parent.mkdir(parents=True, exist_ok=True)
    if not args.skip_load:
        for p in (db, Path(str(db) + ".wal")):
            p.unlink(missing_ok=True)
    load_before = os.getloadavg()
    gen_s = ins_s = 0.0
    long_rows = 0
    cat = Catalog(db)
    cat.con.execute("SET threads = 2")
    cat.con.execute(f"SET memory_limit = '{args.memory_limit}'")
    if args.direct and args.report_resume:
        t = time.perf_counter()
        _direct_report_tables(cat.con, args.clips, scorers if args.score_rows else [], args.report_batch, resume=True)
        ins_s = time.perf_counter() - t
    elif args.direct and not args.skip_load:  # --skip-load measures the file as it is
        t = time.perf_counter()
        wide_table.sync_columns(cat.con, scorers)
        _direct_load(cat.con, args.clips, scorers)
        if args.report:
            _direct_report_tables(cat.con, args.clips, scorers if args.score_rows else [], args.report_batch)
        ins_s = time.perf_counter() - t
    for lo in range(0, 0 if args.skip_load or args.direct else args.clips, args.batch):
        t = time.perf_counter()
        frags = _gen(lo, min(lo + args.batch, args.clips), args.clips, scorers)
        gen_s += time.perf_counter() - t
        long_rows += sum(f.num_rows for f in frags.values())
        t = time.perf_counter()
        cat.commit_fragments("bench", frags)
        ins_s += time.perf_counter() - t
        print(f"{min(lo + args.batch, args.clips):>10} clips  insert {ins_s:7.1f} s  ({(lo + args.batch) / ins_s:,.0f} clips/s)",
              flush=True)
    t = time.perf_counter()
    cat.con.execute("CHECKPOINT")
    ckpt_s = time.perf_counter() - t
    sample = cat.con.execute("SELECT clip_id FROM clips_wide WHERE kept LIMIT 1 OFFSET 12345").fetchall()
    sample = sample[0][0] if sample else ""
    counts = dict(cat.con.execute("SELECT 'clips', count(*) FROM clips UNION ALL SELECT 'scores', count(*) FROM scores "
                                  "UNION ALL SELECT 'clips_wide', count(*) FROM clips_wide").fetchall())
    scorer_list = [r[0] for r in cat.con.execute("SELECT DISTINCT scorer FROM scores ORDER BY 1").fetchall()]
    cat.close()
    if args.fill_only:
        print(json.dumps({"clips": args.clips, "counts": counts, "insert_s": ins_s, "checkpoint_s": ckpt_s,
                          "file_bytes": os.path.getsize(db)}))
        return
    if args.skip_load:
        args.clips = counts["clips"]
        ins_s = float("nan")
    if args.direct:
        args.clips = counts["clips_wide"]
    size = os.path.getsize(db) + (os.path.getsize(str(db) + ".wal") if os.path.exists(str(db) + ".wal") else 0)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # runner-sized commits (64 clips with all their rows) on the full catalog: the second of two
    # commits with the file held, and the second of two opening and closing the file around each
    commit = {}
    for hold in (() if args.direct else (True, False)):
        c = Catalog(db, hold=hold)
        for k in range(2):
            lo = args.clips + (0 if hold else 1000) + 64 * k
            frags = _gen(lo, lo + 64, args.clips, scorers)
            t = time.perf_counter()
            c.commit_fragments("bench-commit", frags)
            commit["held" if hold else "open_per_commit"] = time.perf_counter() - t
        c.close()

    results = {}
    for name, sql in _queries(sample).items():
        results[name] = {"sql": sql, **_time(str(db), sql, args.threads, args.repeat)}
        print(f"{name:45s} {results[name]['median_s']:.3f} s", flush=True)
    wide_sql = wide_view_sql(scorer_list)
    for name, sql in ({} if args.direct else _reference_queries(wide_sql)).items():
        results[name] = {"sql": sql if "pivot" not in name else sql.replace(wide_sql, "<pivot view>"),
                         **_time(str(db), sql, args.threads, 1, args.reference_timeout)}
        m = results[name]["median_s"]
        print(f"{name:45s} {'timeout' if m is None else f'{m:.3f} s'}", flush=True)
    out = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, duckdb {duckdb.__version__}, Python {platform.python_version()}",
        "load_before": load_before, "load_after": os.getloadavg(),
        "command": "python " + " ".join(sys.argv),
        "clips": args.clips, "scorers": len(scorers), "counts": counts, "long_rows_written": long_rows,
        "generate_s": gen_s, "insert_s": ins_s, "checkpoint_s": ckpt_s,
        "clips_per_s": args.clips / ins_s, "rows_per_s": long_rows / ins_s, "skip_load": args.skip_load,
        "direct": args.direct,
        "file_bytes": size, "bytes_per_clip": size / args.clips, "peak_rss_mb": peak_rss_mb,
        "commit_64_clips_s": commit, "queries": results,
    }
    print(json.dumps({k: v for k, v in out.items() if k != "queries"}, indent=1, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
