"""`vidcorpus serve`'s reads at speed: a warm read connection that a waiting job still gets at once,
pages served from caches that a commit invalidates, the grid's two-pass order, and the index that
makes a clip's decision history a probe (catalog migration 15). Over a copy of the serve corpus's
catalog (tests/serve_corpus.py), so its commits change nothing the other serve tests read."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pytest
import requests

from serve_helpers import ThreadServer, card_ids
from vidcorpus.catalog.store import Catalog
from vidcorpus.serve import grid_queries
from vidcorpus.serve.app import CACHE_HEADER, ServeSettings, make_app
from vidcorpus.serve.server import media_roots

WRITE = {"X-Vidcorpus": "1"}

FLIP = """
import json, sys, time
from vidcorpus.catalog.store import Catalog
path, clip, recipe = sys.argv[1:4]
started = time.monotonic()
with Catalog(path, hold=False) as cat:   # a job's commit, as the pipeline driver opens the file
    cat.record_decisions("run-flip", [{"clip_id": clip, "recipe": recipe, "kept": False, "reason": "flipped"}])
print(json.dumps(time.monotonic() - started))
"""


@pytest.fixture()
def copied(serve_built, tmp_path) -> dict:
    """The serve corpus's catalog copied (closed files: the other servers' reads share no state with it)."""
    src = Path(serve_built["catalog"])
    dst = tmp_path / "catalog.duckdb"
    shutil.copy(src, dst)
    if Path(str(src) + ".wal").exists():
        shutil.copy(str(src) + ".wal", str(dst) + ".wal")
    with Catalog(str(dst), read_only=True) as cat:  # other serve tests may have labelled clips before the copy
        labelled = {r["clip_id"] for r in cat.query_dicts("SELECT DISTINCT clip_id FROM labels")}
    return {**serve_built, "catalog": str(dst),
            "unlabelled": [c["clip_id"] for c in serve_built["clips"] if c["clip_id"] not in labelled]}


@pytest.fixture()
def server(copied):
    app = make_app(ServeSettings(catalog=copied["catalog"], roots=media_roots(copied["workdir"], copied["catalog"])))
    srv = ThreadServer(app)
    srv.access, srv.app = app.state.access, app
    yield srv
    srv.stop()


def test_pages_keep_one_warm_connection_that_a_waiting_jobs_commit_gets_at_once(copied, server):
    """Page after page reads through one open connection (a fresh one per page made a grid page 4x
    slower at 1 M clips), yet a job that wants the file while the server sits idle gets it at once
    (a watcher closes the idle connection), and the next page shows what the job committed."""
    kept = next(c for c in copied["clips"] if c["kept"])
    opens = server.access.opens
    for _ in range(5):
        assert requests.get(server.url + "/", params={"decision": "kept"}, timeout=30).status_code == 200
        assert requests.get(f"{server.url}/clip/{kept['clip_id']}", timeout=30).status_code == 200
    assert server.access.opens - opens <= 1
    with Catalog(copied["catalog"], read_only=True) as cat:
        recipe = cat.query_dicts("SELECT recipe FROM clips_wide WHERE clip_id = ?", [kept["clip_id"]])[0]["recipe"]
    out = subprocess.run([sys.executable, "-c", FLIP, copied["catalog"], kept["clip_id"], recipe],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) < 5.0  # without the watcher it waits until the server lets go of the file
    page = requests.get(server.url + "/", params={"decision": "kept"}, timeout=30)
    assert kept["clip_id"] not in card_ids(page.text) and page.headers[CACHE_HEADER] == "miss"
    assert "flipped" in requests.get(f"{server.url}/clip/{kept['clip_id']}", timeout=30).text


def test_a_cached_grid_page_is_served_until_the_catalog_changes(copied, server):
    """The same grid query twice is one read of the catalog; a label (a commit) makes it read again."""
    get = lambda: requests.get(server.url + "/", params={"sort": "aesthetic", "desc": "1"}, timeout=30)  # noqa: E731
    first, second = get(), get()
    assert first.headers[CACHE_HEADER] == "miss" and second.headers[CACHE_HEADER] == "page"
    assert second.text == first.text
    clip = copied["unlabelled"][0]  # a clip labelled bad already would not change the count
    r = requests.post(server.url + "/api/labels", json={"clip_id": clip, "label": "bad", "reason": "static"},
                      headers=WRITE, timeout=30)
    assert r.status_code == 200, r.text
    third = get()
    assert third.headers[CACHE_HEADER] != "page" and _bad_labels(third.text) == _bad_labels(first.text) + 1
    # another page of the same query is answered from the grid's columns in memory (grid_index),
    # which the label's commit made the server read again
    other = requests.get(server.url + "/", params={"sort": "aesthetic", "desc": "1", "per_page": 2, "page": 2},
                         timeout=30)
    assert other.headers[CACHE_HEADER] == "index"
    assert card_ids(other.text) == card_ids(third.text)[2:4]
    # a free WHERE is DuckDB's: its order is kept, and a later page of it is a slice
    where = {"where": "aesthetic > 0", "sort": "aesthetic", "per_page": 2}
    assert requests.get(server.url + "/", params=where, timeout=30).headers[CACHE_HEADER] == "miss"
    later = requests.get(server.url + "/", params={**where, "page": 2}, timeout=30)
    assert later.headers[CACHE_HEADER] == "order"


def test_a_clip_page_is_rendered_once_until_a_label_changes_the_catalog(copied, server):
    """A clip page shown again in the same catalog state is the page rendered before; a label on it
    (a commit) makes the next one a fresh read that lists the label."""
    clip = copied["unlabelled"][1]
    get = lambda: requests.get(f"{server.url}/clip/{clip}", timeout=30)  # noqa: E731
    first, second = get(), get()
    assert first.headers[CACHE_HEADER] == "miss" and second.headers[CACHE_HEADER] == "page"
    assert second.text == first.text and "bad (cut_inside)" not in first.text
    r = requests.post(server.url + "/api/labels", json={"clip_id": clip, "label": "bad", "reason": "cut_inside"},
                      headers=WRITE, timeout=30)
    assert r.status_code == 200, r.text
    third = get()
    assert third.headers[CACHE_HEADER] == "miss" and "bad (cut_inside)" in third.text


def _bad_labels(html: str) -> int:
    """The grid's count of clips labelled bad (its summary line: "labels: good N bad M")."""
    found = re.search(r"labels:[^<]*?\bbad (\d+)", html)
    return int(found.group(1)) if found else 0


def _plain_order(con, q: grid_queries.GridQuery, scores: list[str], limit: int, offset: int) -> list[str]:
    where, params = q.sql(scores)
    return [r[0] for r in con.execute(f"SELECT clip_id FROM clips_wide WHERE {where} ORDER BY {q.order(scores)} "
                                      "LIMIT ? OFFSET ?", [*params, limit, offset]).fetchall()]


def test_the_two_pass_grid_order_equals_one_sort_with_ties_and_missing_scores():
    """The grid bounds its top-N by the last wanted row's key; ties at the bound and clips without
    the score (sorted last) must come out exactly as a plain ORDER BY puts them."""
    con = duckdb.connect()
    con.execute("CREATE TABLE clips_wide (clip_id VARCHAR PRIMARY KEY, source_id VARCHAR, kept BOOLEAN, "
                "reason VARCHAR, duration_s DOUBLE, aesthetic DOUBLE, motion DOUBLE)")
    rnd = random.Random(7)
    con.executemany("INSERT INTO clips_wide VALUES (?, ?, ?, ?, ?, ?, ?)", [
        (f"c{i:04d}", f"s{i % 7}", rnd.random() < 0.6, None, rnd.choice([1.0, 2.0, 2.5]),
         None if rnd.random() < 0.2 else rnd.choice([1.0, 2.0, 3.0, 4.5]), rnd.choice([0.5, 1.5, None]))
        for i in range(300)])
    scores = ["aesthetic", "motion"]
    for sort in ("aesthetic", "motion", "duration_s", "clip_id"):
        for descending in (False, True):
            for decision, ranges in (("", {}), ("kept", {"motion": (1.0, None)})):
                q = grid_queries.GridQuery(sort=sort, descending=descending, decision=decision, ranges=ranges)
                for limit, offset in ((48, 0), (48, 48), (7, 200), (48, 290)):
                    assert grid_queries.ordered_ids(con, q, scores, limit, offset) == _plain_order(
                        con, q, scores, limit, offset), (sort, descending, decision, limit, offset)


def test_a_clips_decision_history_is_an_index_probe(copied):
    """Migration 15: the clip page's `decisions WHERE clip_id = ?` uses an index, not a scan of every
    decision (the composite primary key does not serve it)."""
    clip = copied["clips"][0]["clip_id"]
    with Catalog(copied["catalog"], read_only=True) as cat:
        plan = cat.con.execute("EXPLAIN ANALYZE SELECT recipe, kept, reason FROM decisions WHERE clip_id = ?",
                               [clip]).fetchall()[0][1]
        indexes = {r[0] for r in cat.con.execute("SELECT index_name FROM duckdb_indexes()").fetchall()}
    assert "Index Scan" in plan
    assert {"decisions_by_clip", "embeddings_by_clip", "dropped_segments_by_source", "clips_wide_by_source"} <= indexes
    verify = subprocess.run([sys.executable, "-m", "vidcorpus.cli", "catalog", "verify", "--catalog",
                             copied["catalog"]], capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_two_worker_processes_serve_labels_and_let_a_jobs_commit_in(copied):
    """`serve --workers 2`: two processes on one port (each about one core: a page's Python holds its
    process's GIL). A label written through one is on the clip page whichever answers, a job's
    commit gets the file from both within a request's time, and stopping the server stops both."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "vidcorpus.cli", "serve", "--catalog", copied["catalog"],
                             "--port", str(port), "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if requests.get(url + "/", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "the server did not start"
            time.sleep(0.3)
        kept = next(c for c in copied["clips"] if c["kept"])
        clip = copied["unlabelled"][2]
        for _ in range(6):  # connections land on either worker
            assert requests.get(url + "/", params={"decision": "kept"}, timeout=30).status_code == 200
            assert requests.get(f"{url}/clip/{clip}", timeout=30).status_code == 200
        r = requests.post(url + "/api/labels", json={"clip_id": clip, "label": "bad", "reason": "static"},
                          headers=WRITE, timeout=60)
        assert r.status_code == 200, r.text
        for _ in range(6):
            assert "bad (static)" in requests.get(f"{url}/clip/{clip}", timeout=30).text
        with Catalog(copied["catalog"], read_only=True) as cat:
            recipe = cat.query_dicts("SELECT recipe FROM clips_wide WHERE clip_id = ?", [kept["clip_id"]])[0]["recipe"]
        out = subprocess.run([sys.executable, "-c", FLIP, copied["catalog"], kept["clip_id"], recipe],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) < 5.0
        for _ in range(6):
            page = requests.get(url + "/", params={"decision": "kept"}, timeout=30)
            assert page.status_code == 200 and kept["clip_id"] not in card_ids(page.text)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    with pytest.raises(requests.ConnectionError):  # no worker left behind on the port
        requests.get(url + "/", timeout=5)


def test_a_large_catalogs_grid_columns_load_in_the_background(copied, monkeypatch):
    """Above SYNC_MAX_CLIPS the first page of a sort is DuckDB's (at 10 M clips reading and sorting
    its column in the request took seconds) while a background thread loads it; later pages of the
    query come from memory, with the same clips."""
    from vidcorpus.serve import cached_reads

    monkeypatch.setattr(cached_reads, "SYNC_MAX_CLIPS", 0)  # the serve corpus is small: call it large
    app = make_app(ServeSettings(catalog=copied["catalog"], roots=media_roots(copied["workdir"], copied["catalog"])))
    srv = ThreadServer(app)
    try:
        params = {"sort": "aesthetic", "desc": "1", "min_aesthetic": "0", "per_page": 3}
        first = requests.get(srv.url + "/", params=params, timeout=30)
        assert first.headers[CACHE_HEADER] == "miss"
        deadline, made, tries = time.monotonic() + 30, None, 0
        while made != "index":  # another page of the query (never one rendered before), until loaded
            assert time.monotonic() < deadline, "the grid's columns never loaded"
            time.sleep(0.2)
            tries += 1
            made = requests.get(srv.url + "/", params={**params, "page": 2, "try": tries},
                                timeout=30).headers[CACHE_HEADER]
        again = requests.get(srv.url + "/", params={**params, "page": 1, "try": 0}, timeout=30)
        assert again.headers[CACHE_HEADER] == "index" and card_ids(again.text) == card_ids(first.text)
        assert requests.get(srv.url + "/", params={"sort": "nope; DROP TABLE clips"}, timeout=30).status_code == 400
    finally:
        srv.stop()


def _loaded_from_memory(app) -> bool:
    """Whether this catalog state's sources' timelines and decision history are loaded (serve/timelines.py,
    serve/decision_history.py: in the background once the grid's columns are)."""
    with app.state.access.read():
        stamp = app.state.access.stamp
    return all(app.state.reads.columns.peek(stamp, key) for key in ("grid", "timelines", "decisions"))


def _wait_loaded(srv, app, clip: str) -> None:
    deadline, tries = time.monotonic() + 60, 0
    while not _loaded_from_memory(app):
        assert time.monotonic() < deadline, "the timelines and decisions never loaded"
        tries += 1  # a grid page loads the columns, a clip page asks for the rest (never a page rendered before)
        assert requests.get(srv.url + "/", params={"try": tries}, timeout=30).status_code == 200
        assert requests.get(f"{srv.url}/clip/{clip}", params={"try": tries}, timeout=30).status_code == 200
        time.sleep(0.2)


def test_a_clip_page_from_memory_is_fresh_after_a_jobs_commit(copied):
    """Once loaded, a clip page's timeline and decision history come from memory kept per catalog state
    (equal to the probes: tests/test_serve_clip_memory.py); a job's commit makes the next page show it.
    The handlers run in the configured thread pool (--request-threads)."""
    by_source: dict[str, list[dict]] = {}
    for c in copied["clips"]:
        by_source.setdefault(c["source_id"], []).append(c)
    siblings = next(cs for cs in by_source.values() if len(cs) >= 2 and any(c["kept"] for c in cs))
    flipped = next(c for c in siblings if c["kept"])
    other = next(c for c in siblings if c is not flipped)
    app = make_app(ServeSettings(catalog=copied["catalog"], roots=media_roots(copied["workdir"], copied["catalog"]),
                                 request_threads=2))
    srv = ThreadServer(app)
    try:
        assert app.state.request_threads == 2
        _wait_loaded(srv, app, other["clip_id"])
        page = requests.get(f"{srv.url}/clip/{other['clip_id']}", params={"v": 1}, timeout=30).text
        assert f'href="/clip/{flipped["clip_id"]}"' in page and "flipped" not in page
        with Catalog(copied["catalog"], read_only=True) as cat:
            recipe = cat.query_dicts("SELECT recipe FROM clips_wide WHERE clip_id = ?",
                                     [flipped["clip_id"]])[0]["recipe"]
        out = subprocess.run([sys.executable, "-c", FLIP, copied["catalog"], flipped["clip_id"], recipe],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        _wait_loaded(srv, app, other["clip_id"])  # the new state's, from memory again
        page = requests.get(f"{srv.url}/clip/{other['clip_id']}", params={"v": 2}, timeout=30).text
        assert "dropped: flipped" in page  # the sibling's span on the source's timeline
        history = requests.get(f"{srv.url}/clip/{flipped['clip_id']}", params={"v": 2}, timeout=30).text
        assert f"<td>{recipe}</td><td>dropped</td><td>flipped</td>" in history
        # many requests at once through the two threads: all answered
        with ThreadPoolExecutor(12) as pool:
            codes = list(pool.map(lambda i: requests.get(f"{srv.url}/clip/{siblings[i % 2]['clip_id']}",
                                                         params={"n": i}, timeout=60).status_code, range(24)))
        assert codes == [200] * 24
    finally:
        srv.stop()


def test_the_default_thread_pool_runs_eight_requests_at_once(copied, server):
    assert requests.get(server.url + "/favicon.ico", timeout=30).status_code == 204
    assert server.app.state.request_threads == 8
