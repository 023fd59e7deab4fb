"""The catalog as system of record (issue 3): migrations, the materialised wide table, per-run
funnels, read-only SQL, verify, snapshots on (moto) S3, and real concurrent processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from vidcorpus.catalog.schema import LATEST_VERSION, MIGRATIONS, wide_view_sql
from vidcorpus.catalog.store import Catalog, CatalogError
from vidcorpus.cli.app import app
from vidcorpus.config import load_config
from vidcorpus.jobs.pack_shards import write_pending_shards

from test_catalog_shards import _clip_rows

cli = CliRunner()


def _fragments(lo: int, hi: int, run: str = "r1", scorers=("aesthetic", "motion"), value: float = 0.0) -> dict:
    """Catalog rows for clips lo..hi-1 (two clips per source), as the Arrow fragments workers hand back."""
    ids = [f"{i // 2:016x}-{(i % 2) * 10:07d}-{(i % 2) * 10 + 9:07d}" for i in range(lo, hi)]
    srcs = sorted({i[:16] for i in ids})
    now = pa.scalar(time.time_ns() // 1000, pa.timestamp("us"))
    return {
        "sources": pa.table({"source_id": srcs, "uri": [f"https://h{int(s, 16) % 3}.example.com/{s}.mp4" for s in srcs],
                             "status": ["done"] * len(srcs), "duration_s": [20.0] * len(srcs)}),
        "clips": pa.table({"clip_id": ids, "source_id": [i[:16] for i in ids], "media_type": ["video"] * len(ids),
                           "duration_s": [float(1 + n % 12) for n in range(lo, hi)], "updated_at": [now] * len(ids)}),
        "scores": pa.table({"clip_id": [c for c in ids for _ in scorers], "scorer": [s for _ in ids for s in scorers],
                            "model": ["m"] * len(ids) * len(scorers), "version": ["1"] * len(ids) * len(scorers),
                            "value": [value + n % 10 for n in range(lo, hi) for _ in scorers],
                            "written_at": [now] * len(ids) * len(scorers)}),
        "decisions": pa.table({"clip_id": ids, "recipe": ["r@1"] * len(ids), "kept": [n % 10 >= 4 for n in range(lo, hi)],
                               "reason": [None if n % 10 >= 4 else "aesthetic<4" for n in range(lo, hi)],
                               "decided_at": [now] * len(ids)}),
    }


def _wide_equals_recompute(cat: Catalog) -> None:
    assert cat.verify(deep=True) == []
    scorers = [r[0] for r in cat.con.execute("SELECT DISTINCT scorer FROM scores").fetchall()]
    fresh = cat.query(f"SELECT * FROM ({wide_view_sql(scorers)}) ORDER BY clip_id").to_pylist()
    stored = cat.query(f"SELECT {', '.join(repr(c).replace(chr(39), chr(34)) for c in fresh[0])} FROM clips_wide "
                       "ORDER BY clip_id").to_pylist() if fresh else []
    assert stored == fresh


# -- schema ------------------------------------------------------------------------------------------
def test_migrations_from_an_older_schema_keep_data_and_materialise_the_wide_table(tmp_path):
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))  # a catalog as version 1 of the code left it
    con.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)")
    con.execute(MIGRATIONS[0][1])
    con.execute("INSERT INTO schema_version VALUES (1, now())")
    con.execute("INSERT INTO sources (source_id, uri, status) VALUES ('s1', 'https://a.example.com/1.mp4', 'done')")
    con.execute("INSERT INTO clips (clip_id, source_id, duration_s, run_id) VALUES ('s1-a', 's1', 6.0, 'r0'), "
                "('s1-b', 's1', 3.0, 'r0')")
    con.execute("INSERT INTO scores VALUES ('s1-a', 'aesthetic', 'm', '1', 4.0, 'r0', TIMESTAMP '2026-01-01'), "
                "('s1-a', 'aesthetic', 'm', '2', 6.5, 'r0', TIMESTAMP '2026-02-01'), "
                "('s1-b', 'motion', 'm', '1', 1.0, 'r0', TIMESTAMP '2026-01-01')")
    con.execute("INSERT INTO decisions VALUES ('s1-a', 'r@1', TRUE, NULL, 'r0', now()), "
                "('s1-b', 'r@1', FALSE, 'motion<2', 'r0', now())")
    con.execute("CREATE VIEW clips_wide AS " + wide_view_sql(["aesthetic", "motion"]).replace(", coalesce(s.scored, FALSE) AS scored", ""))
    con.close()
    with Catalog(path) as cat:
        assert cat.schema_version == LATEST_VERSION
        applied = [r[0] for r in cat.con.execute("SELECT version FROM schema_version ORDER BY 1").fetchall()]
        assert applied == sorted(v for v, _ in MIGRATIONS)
        kind = cat.con.execute("SELECT table_type FROM information_schema.tables WHERE table_name = 'clips_wide'").fetchall()
        assert kind == [("BASE TABLE",)]
        rows = cat.query_dicts("SELECT clip_id, aesthetic, motion, kept, reason, uri, scored, extract_mode "
                               "FROM clips_wide ORDER BY clip_id")
        assert rows == [
            {"clip_id": "s1-a", "aesthetic": 6.5, "motion": None, "kept": True, "reason": None,
             "uri": "https://a.example.com/1.mp4", "scored": True, "extract_mode": None},
            {"clip_id": "s1-b", "aesthetic": None, "motion": 1.0, "kept": False, "reason": "motion<2",
             "uri": "https://a.example.com/1.mp4", "scored": True, "extract_mode": None}]
        assert {r["stage"]: r["n"] for r in cat.funnel()}["kept"] == 1
        _wide_equals_recompute(cat)
    with Catalog(path) as cat:  # reopening applies nothing twice
        assert cat.con.execute("SELECT count(*) FROM schema_version").fetchall()[0][0] == len(MIGRATIONS)


def test_a_migration_merged_late_with_a_lower_number_is_still_applied(tmp_path, monkeypatch):
    from vidcorpus.catalog import schema, store

    path = tmp_path / "c.duckdb"
    Catalog(path).close()
    late = [(LATEST_VERSION - 1, "CREATE TABLE late_one (x INTEGER);")]
    monkeypatch.setattr(store, "MIGRATIONS", [m for m in schema.MIGRATIONS if m[0] != LATEST_VERSION - 1] + late)
    with duckdb.connect(str(path)) as con:  # as if the catalog never saw that version
        con.execute("DELETE FROM schema_version WHERE version = ?", [LATEST_VERSION - 1])
    with Catalog(path) as cat:
        assert cat.con.execute("SELECT count(*) FROM late_one").fetchall() == [(0,)]


# -- the materialised wide table ----------------------------------------------------------------------
def test_reingest_is_idempotent_and_the_wide_table_follows_every_write(tmp_path):
    cfg = load_config(None, [], workdir=str(tmp_path / "work"), **{"shards.max_samples": 1})
    rows = _clip_rows(tmp_path)
    with Catalog(cfg.catalog_path) as cat:
        cat.commit_results("run1", rows)
        cat.commit_results("run2", rows)  # the same rows again
        assert cat.con.execute("SELECT count(*) FROM clips_wide").fetchall() == [(3,)]
        assert cat.con.execute("SELECT count(*) FROM scores").fetchall() == [(3,)]
        _wide_equals_recompute(cat)
        time.sleep(0.01)
        # a re-run scorer (latest value wins), a new scorer (a new column), a new caption version,
        # a changed decision and shards
        for r in rows:
            r["scores"] = [{"scorer": "aesthetic", "model": "m", "version": "2", "value": 9.0},
                           {"scorer": "ocr_chars", "model": "tess", "version": "1", "value": 3.0}]
            r["captions"] = [{"version": "v2", "kind": "long", "text": "new " + r["clip_id"], "model": "m",
                              "prompt_version": "p2", "meta_json": "{}"}]
            r["kept"], r["reason"] = True, None
        cat.commit_results("run3", rows)
        wide = cat.query_dicts("SELECT aesthetic, ocr_chars, caption, short_caption, caption_version, kept, reason, run_id "
                               "FROM clips_wide ORDER BY clip_id")
        assert {(w["aesthetic"], w["ocr_chars"], w["caption_version"], w["kept"], w["run_id"]) for w in wide} == {
            (9.0, 3.0, "v2", True, "run3")}
        assert all(w["caption"].startswith("new ") for w in wide)
        written = write_pending_shards(cfg, cat, "run3", progress=False)
        assert len(written) == 3
        sharded = cat.query_dicts("SELECT w.shard_id, w.shard_url, s.url FROM clips_wide w JOIN shards s USING (shard_id)")
        assert len(sharded) == 3 and all(r["shard_url"] == r["url"] for r in sharded)
        assert cat.unsharded_kept() == []
        import datetime as dt

        cat.record_training("train1", "base", "kept", 2, 0.5, str(tmp_path / "ckpt"), [], "{}", dt.datetime(2026, 1, 1),
                            [(0, rows[0]["clip_id"]), (1, rows[0]["clip_id"])])
        funnel = {r["stage"]: r["n"] for r in cat.funnel()}
        assert (funnel["captioned"], funnel["sharded"], funnel["trained_on"]) == (3, 3, 1)
        _wide_equals_recompute(cat)
        # a source whose text changes on re-ingest updates its clips' rows
        rows[0]["text"] = "a better source text"
        cat.commit_results("run4", [rows[0]])
        assert cat.query_dicts("SELECT source_text FROM clips_wide WHERE clip_id = ?", [rows[0]["clip_id"]]) == [
            {"source_text": "a better source text"}]
        _wide_equals_recompute(cat)


def test_bulk_fragments_and_parquet_files_from_workers(tmp_path):
    import pyarrow.parquet as pq

    frags = _fragments(0, 300)
    pq.write_table(frags["scores"], tmp_path / "scores.parquet")
    with Catalog(tmp_path / "c.duckdb") as cat:
        counts = cat.commit_fragments("r1", {**frags, "scores": [str(tmp_path / "scores.parquet")]})
        assert counts == {"sources": 150, "clips": 300, "scores": 600, "decisions": 300}
        again = cat.commit_fragments("r1", _fragments(0, 300, value=100.0))  # re-scored: latest wins
        assert again["clips"] == 300
        assert cat.con.execute("SELECT count(*), min(aesthetic) FROM clips_wide").fetchall() == [(300, 100.0)]
        assert cat.con.execute("SELECT count(*) FROM scores").fetchall() == [(600,)]
        assert cat.con.execute("SELECT DISTINCT run_id FROM clips").fetchall() == [("r1",)]
        _wide_equals_recompute(cat)


def test_bad_scorer_name_writes_nothing(tmp_path):
    rows = _clip_rows(tmp_path)
    rows[0]["scores"].append({"scorer": "Bad Name", "model": "m", "version": "1", "value": 1.0})
    with Catalog(tmp_path / "c.duckdb") as cat:
        with pytest.raises(ValueError, match="Bad Name"):
            cat.commit_results("r1", rows)
        assert cat.con.execute("SELECT count(*) FROM clips").fetchall() == [(0,)]


def test_funnel_per_run_and_total(tmp_path):
    with Catalog(tmp_path / "c.duckdb") as cat:
        cat.commit_fragments("run-a", _fragments(0, 40, run="run-a"))
        cat.commit_fragments("run-b", _fragments(40, 60, run="run-b"))
        cat.record_failure("bad-1", "download", "timeout", "slow", "run-b", source_id="ffff")
        per = {(r["run_id"], r["stage"]): r["n"] for r in cat.query_dicts("SELECT * FROM funnel_by_run")}
        total = {r["stage"]: r for r in cat.funnel()}
        assert per[("run-a", "shots")] == 40 and per[("run-b", "shots")] == 20 and total["shots"]["n"] == 60
        assert per[("run-a", "kept")] == 24 and per[("run-b", "kept")] == 12 and total["kept"]["n"] == 36
        assert per[("run-a", "failed")] == 0 and per[("run-b", "failed")] == 1 and total["failed"]["n"] == 1
        assert per[("run-a", "sources")] == 20 and total["sources"]["n"] == 30
        assert [r["stage"] for r in cat.funnel("run-b")] == [
            "sources", "failed", "shots", "scored", "kept", "captioned", "sharded", "trained_on"]
        hours = cat.query_dicts("SELECT sum(duration_s) / 3600 AS h FROM clips WHERE run_id = 'run-b'")[0]["h"]
        assert {r["stage"]: r["hours"] for r in cat.funnel("run-b")}["shots"] == pytest.approx(hours)
    result = cli.invoke(app, ["catalog", "funnel", "--catalog", str(tmp_path / "c.duckdb"), "--by-run"])
    assert result.exit_code == 0 and "run-a" in result.output and "all runs" in result.output


# -- read-only SQL -------------------------------------------------------------------------------------
def test_sql_is_read_only_and_writes_every_format(tmp_path):
    path = tmp_path / "c.duckdb"
    with Catalog(path) as cat:
        cat.commit_fragments("r1", _fragments(0, 10))
    for stmt in ("DELETE FROM clips", "DROP TABLE clips", "CREATE TABLE x AS SELECT 1",
                 "UPDATE clips_wide SET kept = FALSE", "INSERT INTO runs (run_id) VALUES ('x')"):
        result = cli.invoke(app, ["sql", "--catalog", str(path), stmt])
        assert result.exit_code == 2, (stmt, result.output)
        assert "read-only" in result.output.lower() or "read only" in result.output.lower(), result.output
    with Catalog(path, read_only=True) as cat:
        assert cat.con.execute("SELECT count(*) FROM clips").fetchall() == [(10,)]
    q = "SELECT clip_id, aesthetic FROM clips_wide ORDER BY clip_id"
    js = json.loads(cli.invoke(app, ["sql", "--catalog", str(path), "--format", "json", q]).output)
    assert len(js) == 10 and js[0]["aesthetic"] == 0.0
    csv = cli.invoke(app, ["sql", "--catalog", str(path), "--format", "csv", q]).output.splitlines()
    assert csv[0] == '"clip_id","aesthetic"' and len(csv) == 11
    out = tmp_path / "x.parquet"
    assert cli.invoke(app, ["sql", "--catalog", str(path), "--format", "parquet", "-o", str(out), q]).exit_code == 0
    import pyarrow.parquet as pq

    assert pq.read_table(out).num_rows == 10


# -- verify --------------------------------------------------------------------------------------------
def _sharded_catalog(tmp_path):
    cfg = load_config(None, [], workdir=str(tmp_path / "work"), **{"shards.max_samples": 1})
    rows = _clip_rows(tmp_path, n=3, kept=(True, True, True))
    with Catalog(cfg.catalog_path) as cat:
        cat.commit_results("run1", rows)
        cat.mark_sources_done(r["source_id"] for r in rows)
        shards = write_pending_shards(cfg, cat, "run1", progress=False)
    return cfg, sorted(shards, key=lambda s: s["shard_id"])


def _verify(cfg) -> tuple[int, str]:
    r = cli.invoke(app, ["catalog", "verify", "--catalog", cfg.catalog_path, "--workdir", cfg.workdir])
    return r.exit_code, r.output


def test_verify_passes_a_sound_catalog_and_catches_each_planted_inconsistency(tmp_path):
    cfg, shards = _sharded_catalog(tmp_path)
    code, out = _verify(cfg)
    assert code == 0 and "consistent" in out, out

    def sql(*stmts):
        with duckdb.connect(cfg.catalog_path) as con:
            for s in stmts:
                con.execute(s)

    # a member row whose clip has no clips row
    sql("INSERT INTO shard_members VALUES ('" + shards[0]["shard_id"] + "', 'ghost-clip')")
    # shards.n not equal to its member count
    sql(f"UPDATE shards SET n = 5 WHERE shard_id = '{shards[1]['shard_id']}'")
    # a missing shard file, and one whose bytes changed (same size, other sha256)
    os.remove(shards[2]["url"])
    data = bytearray(Path(shards[0]["url"]).read_bytes())
    data[-1] ^= 0xFF
    Path(shards[0]["url"]).write_bytes(bytes(data))
    # an orphan tar in the shard folder
    orphan = Path(shards[1]["url"]).parent / "stray-shard.tar"
    orphan.write_bytes(b"x" * 512)
    # a score of a clip without a clips row, and a member row of a shard without a shards row
    sql("INSERT INTO scores VALUES ('ghost-2', 'aesthetic', 'm', '1', 1.0, 'x', now())",
        "INSERT INTO shard_members VALUES ('no-such-shard', 'ghost-3')")
    code, out = _verify(cfg)
    assert code == 1, out
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        problems = cat.verify(shard_roots=[cfg.url("shards")])
    found = {(p["check"], p["item"]) for p in problems}
    assert ("member_without_clip", "ghost-clip") in found
    assert ("shard_count_mismatch", shards[1]["shard_id"]) in found
    assert ("shard_missing", shards[2]["shard_id"]) in found
    assert ("shard_checksum_mismatch", shards[0]["shard_id"]) in found
    assert any(c == "orphan_shard_file" and i.endswith("stray-shard.tar") for c, i in found)
    assert ("orphan_row", "ghost-2") in found
    assert ("member_without_shard", "no-such-shard") in found
    for check in ("member_without_clip", "shard_count_mismatch", "shard_missing", "shard_checksum_mismatch",
                  "orphan_shard_file", "orphan_row", "member_without_shard"):
        assert check in out


def test_verify_deep_finds_a_stale_wide_table_and_rebuild_repairs_it(tmp_path):
    cfg, shards = _sharded_catalog(tmp_path)
    with duckdb.connect(cfg.catalog_path) as con:  # a write that bypassed the driver
        con.execute("UPDATE decisions SET kept = FALSE, reason = 'manual'")
    r = cli.invoke(app, ["catalog", "verify", "--catalog", cfg.catalog_path, "--workdir", cfg.workdir, "--deep"])
    assert r.exit_code == 1 and "wide_stale" in r.output
    r = cli.invoke(app, ["catalog", "verify", "--catalog", cfg.catalog_path, "--workdir", cfg.workdir, "--deep",
                         "--rebuild-wide"])
    assert r.exit_code == 0, r.output
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        assert cat.clip_ids_for("kept") == set()


# -- snapshots -----------------------------------------------------------------------------------------
@pytest.fixture()
def s3_credentials() -> dict:
    """Secret-looking credentials for the shared `s3` fixture: the tests check none is ever printed."""
    return {"AWS_ACCESS_KEY_ID": "AKIDSECRETVALUE1", "AWS_SECRET_ACCESS_KEY": "sekrit-key-do-not-print"}


def test_export_to_s3_and_query_the_snapshot_remotely(tmp_path, s3):
    import hashlib

    cfg, shards = _sharded_catalog(tmp_path)
    url = "s3://bucket/snapshots/main"
    r = cli.invoke(app, ["catalog", "export", url, "--catalog", cfg.catalog_path])
    assert r.exit_code == 0, r.output
    manifest = json.loads(s3.cat_file("bucket/snapshots/main/manifest.json"))
    assert manifest["schema_version"] == LATEST_VERSION
    assert {"clips", "scores", "clips_wide", "shards", "shard_members", "schema_version"} <= set(manifest["tables"])
    assert {v["name"] for v in manifest["views"]} >= {"funnel", "funnel_by_run", "failures_by_class"}
    for name, entry in manifest["tables"].items():
        blob = s3.cat_file(f"bucket/snapshots/main/{entry['file']}")
        assert hashlib.sha256(blob).hexdigest() == entry["sha256"] and len(blob) == entry["bytes"]
    assert manifest["tables"]["clips"]["rows"] == 3
    q = "SELECT clip_id, aesthetic, kept, shard_url FROM clips_wide ORDER BY clip_id"
    local = json.loads(cli.invoke(app, ["sql", "--catalog", cfg.catalog_path, "--format", "json", q]).output)
    remote = cli.invoke(app, ["sql", "--catalog", url, "--format", "json", q])
    assert remote.exit_code == 0, remote.output
    assert json.loads(remote.output) == local
    funnel = json.loads(cli.invoke(app, ["sql", "--catalog", url, "--format", "json",
                                         "SELECT stage, n FROM funnel ORDER BY step"]).output)
    assert {f["stage"]: f["n"] for f in funnel}["sharded"] == 3
    assert "sekrit" not in remote.output and "AKIDSECRET" not in r.output + remote.output
    # snapshots are read-only, and re-exporting replaces the previous snapshot's files
    dropped = cli.invoke(app, ["sql", "--catalog", url, "DROP VIEW clips"])
    assert dropped.exit_code == 2 and "read-only" in dropped.output
    with pytest.raises(CatalogError, match="read-only"):
        Catalog(url)
    with Catalog(cfg.catalog_path) as cat:
        cat.commit_fragments("run2", _fragments(100, 105))
        second = cat.export(url)
    assert second["snapshot_id"] != manifest["snapshot_id"]
    assert not s3.exists(f"bucket/snapshots/main/{manifest['snapshot_id']}")
    with Catalog(url, read_only=True) as snap:
        assert snap.query_dicts("SELECT count(*) AS n FROM clips")[0]["n"] == 8
        assert snap.verify(checksums=True) == []
    info = cli.invoke(app, ["catalog", "info", "--catalog", url])
    assert info.exit_code == 0 and "snapshot" in info.output


def test_export_to_a_local_folder_and_missing_snapshots_are_clear_errors(tmp_path):
    path = tmp_path / "c.duckdb"
    with Catalog(path) as cat:
        cat.commit_fragments("r1", _fragments(0, 20))
        cat.export(str(tmp_path / "snap"))
    r = cli.invoke(app, ["sql", "--catalog", str(tmp_path / "snap"), "--format", "json",
                         "SELECT count(*) AS n FROM clips_wide WHERE kept"])
    assert r.exit_code == 0 and json.loads(r.output) == [{"n": 12}]
    r = cli.invoke(app, ["sql", "--catalog", "s3://no-such-bucket-here/snap", "SELECT 1"])
    assert r.exit_code == 2


# -- concurrency, with real processes ------------------------------------------------------------------
WRITER = r"""
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from test_catalog_io import _fragments
from vidcorpus.catalog.store import Catalog
path, mode = sys.argv[1], sys.argv[2]
if mode == "batches":          # small commits, the file released between them (as the runner does)
    cat = Catalog(path, hold=False)
    seen_by_reader = Path(sys.argv[4])
    for k in range(25):
        cat.commit_fragments("w", _fragments(k * 20, (k + 1) * 20))
        print("COMMITTED", k, flush=True)
        deadline = time.time() + (20 if k in (4, 12, 20) else 0.05)
        # at three points, pause until a reader has seen this commit (a loaded box's reader backs
        # off for up to a second, so fixed short gaps alone may never let it in)
        while time.time() < deadline:
            time.sleep(0.01)
            if k in (4, 12, 20) and int(seen_by_reader.read_text() or 0) >= (k + 1) * 20:
                break
    cat.close()
    print("DONE", flush=True)
else:                          # big transactions, to be killed inside one
    cat = Catalog(path)
    k = 0
    while True:
        frags = _fragments(k * 20000, (k + 1) * 20000, scorers=("aesthetic", "motion", "blur"))
        t = time.time()
        print("BEGIN", k, flush=True)
        cat.commit_fragments("w", frags)
        print("COMMITTED", k, round(time.time() - t, 2), flush=True)
        k += 1
"""


def _writer(path: Path, mode: str, log: Path, seen_by_reader: Path | None = None) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), mode, str(Path(__file__).parent),
                             str(seen_by_reader)],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)


def test_readers_work_while_a_writer_commits(tmp_path):
    path = tmp_path / "c.duckdb"
    Catalog(path).close()
    seen_by_reader = tmp_path / "seen"
    seen_by_reader.write_text("0")
    proc = _writer(path, "batches", tmp_path / "w.log", seen_by_reader)
    seen: list[tuple[int, int, int]] = []
    try:
        while proc.poll() is None:
            with Catalog(path, read_only=True, lock_timeout_s=30) as cat:
                seen.append(cat.con.execute("SELECT (SELECT count(*) FROM clips), (SELECT count(*) FROM scores), "
                                            "(SELECT count(*) FROM clips_wide WHERE scored)").fetchall()[0])
            seen_by_reader.write_text(str(seen[-1][0]))
            time.sleep(0.01)
        assert proc.wait(timeout=60) == 0, (tmp_path / "w.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "DONE" in (tmp_path / "w.log").read_text()
    during = [s for s in seen if 0 < s[0] < 500]
    assert len(during) >= 3, seen  # readers got in between the commits
    for clips, scores, wide in seen:  # every read saw whole batches only
        assert clips % 20 == 0 and scores == 2 * clips and wide == clips, seen
    assert [s[0] for s in seen] == sorted(s[0] for s in seen)
    with Catalog(path, read_only=True) as cat:
        assert cat.con.execute("SELECT count(*) FROM clips").fetchall() == [(500,)]


HOLDER = r"""
import sys, time
from vidcorpus.catalog.store import Catalog
with Catalog(sys.argv[1], read_only=True) as cat:
    n = cat.con.execute("SELECT count(*) FROM clips").fetchall()[0][0]
    print("HELD", n, flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_waiting_writer_goes_before_new_readers(tmp_path):
    """Writer preference: a writer that finds the file held marks itself; readers that come
    while the mark is fresh wait for it, so dashboards re-opening the catalog back to back cannot
    keep a run's commit out (57 s measured without this). A stale mark is ignored."""
    import threading

    from vidcorpus.catalog.file_lock import WRITER_MARK_STALE_S

    path = tmp_path / "c.duckdb"
    mark = Path(str(path) + ".writer-waiting")
    writer = Catalog(path, hold=False)
    writer.commit_fragments("seed", _fragments(0, 20))
    log = tmp_path / "holder.log"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), "3"], stdout=open(log, "w"),
                              stderr=subprocess.STDOUT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    try:
        deadline = time.time() + 60
        while "HELD" not in log.read_text():
            assert holder.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.01)
        took: list[float] = []

        def commit():
            t = time.monotonic()
            writer.commit_fragments("w", _fragments(20, 40))
            took.append(time.monotonic() - t)

        thread = threading.Thread(target=commit)
        thread.start()
        deadline = time.time() + 2.5  # inside the holder's 3 s (a loaded box may take a second to get here)
        while not mark.exists() and time.time() < deadline:
            time.sleep(0.01)
        assert mark.exists()  # the blocked writer announced itself
        late = subprocess.run([sys.executable, "-c", HOLDER, str(path), "0"], capture_output=True, text=True,
                              timeout=60, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        assert late.stdout.split() == ["HELD", "40"], late.stdout + late.stderr  # it let the writer in first
        thread.join(timeout=30)
        assert holder.wait(timeout=30) == 0, log.read_text()
    finally:
        if holder.poll() is None:
            holder.kill()
    assert 1.0 <= took[0] < 8, took  # it waited for the holding reader, not longer
    assert not mark.exists()  # removed once the writer had the file
    writer.close()
    # A mark left by a writer that died waiting does not hold readers up.
    mark.touch()
    os.utime(mark, (time.time() - WRITER_MARK_STALE_S - 1,) * 2)
    t = time.monotonic()
    Catalog(path, read_only=True).close()
    assert time.monotonic() - t < 1.0


def test_a_writer_killed_mid_commit_leaves_whole_batches(tmp_path):
    path = tmp_path / "c.duckdb"
    log = tmp_path / "w.log"
    proc = _writer(path, "big", log)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and "BEGIN 2" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            time.sleep(0.02)
        took = float(log.read_text().split("COMMITTED 1 ")[1].split()[0])
        time.sleep(took / 2)  # half-way into the third transaction (the second took `took` seconds)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = log.read_text().split()
    committed = lines.count("COMMITTED")
    assert " ".join(lines[-2:]) == f"BEGIN {committed}", lines  # killed inside a transaction
    with Catalog(path) as cat:  # opens (replaying the log) and stays consistent
        clips, scores, wide = cat.con.execute("SELECT (SELECT count(*) FROM clips), (SELECT count(*) FROM scores), "
                                              "(SELECT count(*) FROM clips_wide WHERE scored)").fetchall()[0]
        assert clips % 20000 == 0 and committed <= clips // 20000 <= committed + 1
        assert scores == 3 * clips and wide == clips
        assert cat.verify() == []
        cat.commit_fragments("again", _fragments(0, 20000))  # and writable
