"""`vidcorpus serve`: the grid, the clip page, playback from files and shards, labels, and the
safety rules, over a real small catalog (tests/serve_corpus.py) served by uvicorn on loopback."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from html import unescape
from pathlib import Path

import pytest
import requests

from serve_helpers import ThreadServer, card_ids
from vidcorpus.catalog.store import Catalog
from vidcorpus.serve.access import release_file
from vidcorpus.serve.app import ServeSettings, make_app
from vidcorpus.serve.server import media_roots

WRITE = {"X-Vidcorpus": "1"}


@pytest.fixture(scope="module")
def built(serve_built) -> dict:
    return serve_built


def _settings(built: dict, **kw) -> ServeSettings:
    return ServeSettings(catalog=built["catalog"], roots=media_roots(built["workdir"], built["catalog"]),
                         who="tester", **kw)


@pytest.fixture(scope="module")
def server(built):
    srv = ThreadServer(make_app(_settings(built)))
    yield srv
    srv.stop()


def _table_counts(path: str) -> dict[str, int]:
    with Catalog(path, read_only=True) as cat:
        names = [r["table_name"] for r in cat.query_dicts(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'")]
        return {n: cat.query_dicts(f'SELECT count(*) AS n FROM "{n}"')[0]["n"] for n in names}


def test_grid_filters_by_decision_reason_source_score_and_where(built, server):
    clips = built["clips"]
    get = lambda **p: requests.get(server.url + "/", params=p, timeout=30)  # noqa: E731
    r = get()
    assert r.status_code == 200 and sorted(card_ids(r.text)) == sorted(c["clip_id"] for c in clips)
    dropped = sorted(c["clip_id"] for c in clips if c["kept"] is False)
    assert dropped and sorted(card_ids(get(decision="dropped").text)) == dropped
    reason = next(c["reason"] for c in clips if c["kept"] is False)
    assert card_ids(get(reason=reason).text) == [c["clip_id"] for c in clips if c["reason"] == reason]
    source = clips[0]["source_id"]
    assert card_ids(get(source=source).text) == [c["clip_id"] for c in clips if c["source_id"] == source]
    with Catalog(built["catalog"], read_only=True) as cat:
        rows = cat.query_dicts("SELECT clip_id, aesthetic FROM clips_wide WHERE aesthetic IS NOT NULL "
                               "ORDER BY aesthetic DESC, clip_id")
        long_ = [r["clip_id"] for r in cat.query_dicts(
            "SELECT clip_id FROM clips_wide WHERE kept AND duration_s > 1.2 ORDER BY clip_id")]
    assert card_ids(get(sort="aesthetic", desc="1").text)[:len(rows)] == [r["clip_id"] for r in rows]
    mid = rows[len(rows) // 2]["aesthetic"]
    above = sorted(r["clip_id"] for r in rows if r["aesthetic"] >= mid)
    assert sorted(card_ids(get(min_aesthetic=mid).text)) == above
    assert card_ids(get(where="kept AND duration_s > 1.2").text) == long_
    page = get(per_page=2, page=2)
    assert card_ids(page.text) == sorted(c["clip_id"] for c in clips)[2:4] and 'id="next"' in page.text


def test_clip_page_shows_captions_scores_thresholds_decisions_and_timeline(built, server):
    clip = next(c for c in built["clips"] if c["kept"] is False)
    html = unescape(requests.get(f"{server.url}/clip/{clip['clip_id']}", timeout=30).text)
    assert f"dropped: {clip['reason']}" in html
    threshold = clip["reason"].replace("<", ">=")  # "motion<8" fails the recipe's "motion>=8"
    assert f"<td>{threshold}</td>" in html
    assert "demo_v1@1" in html and 'id="timeline"' in html
    siblings = [c["clip_id"] for c in built["clips"] if c["source_id"] == clip["source_id"]]
    for other in siblings:  # every clip of the source is on its timeline
        assert f'href="/clip/{other}"' in html
    kept = next(c for c in built["clips"] if c["kept"] and c["media_type"] == "video")
    page = requests.get(f"{server.url}/clip/{kept['clip_id']}", timeout=30).text
    assert "<td>v1</td><td>long</td>" in page and "<td>v1</td><td>short</td>" in page  # both captions
    assert requests.get(f"{server.url}/clip/0000000000000000-0000000-0000001", timeout=30).status_code == 404


def test_clips_play_from_their_file_and_from_their_verified_shard_member(built, server):
    sharded = {m: s for s in built["shards"] for m in s["members"]}
    clip = next(c for c in built["clips"] if c["clip_id"] in sharded and c["media_type"] == "video")
    data = Path(clip["clip_path"]).read_bytes()
    url = f"{server.url}/media/clip/{clip['clip_id']}"
    whole = requests.get(url, params={"from": "file"}, timeout=30)
    assert whole.status_code == 200 and whole.content == data and whole.headers["content-type"] == "video/mp4"
    from_shard = requests.get(url, params={"from": "shard"}, timeout=30)
    assert from_shard.status_code == 200 and from_shard.content == data
    part = requests.get(url, params={"from": "shard"}, headers={"Range": "bytes=100-299"}, timeout=30)
    assert part.status_code == 206 and part.content == data[100:300]
    assert part.headers["content-range"] == f"bytes 100-299/{len(data)}"
    tail = requests.get(url, headers={"Range": "bytes=-50"}, timeout=30)
    assert tail.status_code == 206 and tail.content == data[-50:]
    assert requests.get(url, headers={"Range": f"bytes={len(data)}-"}, timeout=30).status_code == 416
    image = next(c for c in built["clips"] if c["media_type"] == "image")
    img = requests.get(f"{server.url}/media/clip/{image['clip_id']}", params={"from": "shard"}, timeout=30)
    assert img.status_code == 200 and img.content == Path(image["clip_path"]).read_bytes()


def test_a_clip_dropped_before_encoding_plays_as_a_preview_of_its_source_frames(built, server):
    """Filter before you encode leaves dropped clips without a file; an auditor still watches them:
    the server renders them from the source, when the source lies inside the served folders."""
    import av

    dropped = [c for c in built["clips"] if c["media_type"] == "video" and not c["clip_path"]]
    assert dropped, "the corpus has a video clip the recipe dropped before encoding"
    clip = dropped[0]
    url = f"{server.url}/media/clip/{clip['clip_id']}"
    refused = requests.get(url, timeout=60)  # the sources lie outside the workdir: not read
    assert refused.status_code == 404 and "source lies outside" in refused.text
    corpus = str(Path(built["workdir"]).parent / "corpus")
    srv = ThreadServer(make_app(ServeSettings(catalog=built["catalog"], who="tester",
                                              roots=media_roots(built["workdir"], built["catalog"], [corpus]))))
    try:
        got = requests.get(f"{srv.url}/media/clip/{clip['clip_id']}", timeout=120)
        part = requests.get(f"{srv.url}/media/clip/{clip['clip_id']}", headers={"Range": "bytes=0-99"}, timeout=60)
    finally:
        srv.stop()
    assert got.status_code == 200 and got.headers["content-type"] == "video/mp4"
    assert part.status_code == 206 and part.content == got.content[:100]
    with Catalog(built["catalog"], read_only=True) as cat:
        [row] = cat.query_dicts("SELECT first_frame, last_frame, clip_path FROM clips_wide WHERE clip_id = ?",
                                [clip["clip_id"]])
    import io

    with av.open(io.BytesIO(got.content)) as c:
        n = sum(1 for _ in c.decode(video=0))
    assert n == row["last_frame"] - row["first_frame"] + 1  # every frame of the clip (it is under 10 s)
    assert row["clip_path"] is None  # a preview is not an extraction: the catalog is unchanged


def test_a_shard_that_no_longer_matches_its_checksum_is_not_served(built, server):
    shard = next(s for s in built["shards"] if len(s["members"]) > 1)
    path = Path(shard["url"])
    original = path.read_bytes()
    assert hashlib.sha256(original).hexdigest() == shard["sha256"]
    url = f"{server.url}/media/clip/{shard['members'][0]}"
    try:
        path.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))  # one byte of tar padding changed
        os.utime(path, (1, 1))
        r = requests.get(url, params={"from": "shard"}, timeout=30)
        assert r.status_code == 404 and "does not match its catalog checksum" in r.text
    finally:
        path.write_bytes(original)
    assert requests.get(url, params={"from": "shard"}, timeout=30).status_code == 200


def test_labels_are_catalog_rows_that_a_restarted_server_shows(built, server):
    clip = next(c for c in built["clips"] if c["kept"] and c["media_type"] == "video")["clip_id"]
    r = requests.post(server.url + "/api/labels", json={"clip_id": clip, "label": "bad", "reason": "text_overlay"},
                      headers=WRITE, timeout=30)
    assert r.status_code == 200, r.text
    with Catalog(built["catalog"], read_only=True) as cat:  # the server keeps no file open between requests
        rows = cat.query_dicts("SELECT clip_id, label, reason, who, origin, recipe FROM labels WHERE clip_id = ?",
                               [clip])
        assert cat.verify(checksums=True) == []
    assert rows == [{"clip_id": clip, "label": "bad", "reason": "text_overlay", "who": "tester", "origin": "browse",
                     "recipe": "demo_v1@1"}]
    fresh = ThreadServer(make_app(_settings(built)))
    try:
        page = requests.get(f"{fresh.url}/clip/{clip}", timeout=30).text
        assert "bad (text_overlay) by tester" in page
    finally:
        fresh.stop()


def test_bad_labels_and_cross_site_writes_are_refused_and_write_nothing(built, server):
    before = _table_counts(built["catalog"])
    clip = built["clips"][0]["clip_id"]
    post = lambda body, headers=WRITE: requests.post(server.url + "/api/labels", json=body,  # noqa: E731
                                                     headers=headers, timeout=30)
    assert post({"clip_id": clip, "label": "good"}, headers={}).status_code == 403  # no write header
    assert post({"clip_id": clip, "label": "meh"}).status_code == 400
    assert post({"clip_id": "../../etc/passwd", "label": "good"}).status_code == 400
    r = post({"clip_id": "0000000000000000-0000000-0000001", "label": "good"})
    assert r.status_code == 400 and "no clip" in r.text
    assert _table_counts(built["catalog"]) == before
    sneaky = "x'); DELETE FROM clips; --"  # a parameter, so stored as text
    assert post({"clip_id": clip, "label": "good", "reason": sneaky}).status_code == 200
    assert _table_counts(built["catalog"]) == {**before, "labels": before["labels"] + 1}
    with Catalog(built["catalog"], read_only=True) as cat:
        assert cat.query_dicts("SELECT reason FROM labels WHERE clip_id = ? ORDER BY labeled_at DESC LIMIT 1",
                               [clip]) == [{"reason": sneaky}]


ATTACKS = ["1; DELETE FROM clips", "clip_id; DROP TABLE clips", "x') OR 1=1; DELETE FROM labels; --",
           "../../../../etc/passwd"]


def test_sql_writes_and_path_traversal_through_every_parameter_are_refused(built, server):
    before = _table_counts(built["catalog"])
    for attack in ATTACKS:
        for key in ("sort", "source", "decision", "reason", "page", "per_page", "min_aesthetic", f"min_{attack}"):
            r = requests.get(server.url + "/", params={key: attack}, timeout=30)
            assert r.status_code in (200, 400), (key, attack, r.status_code)
            if r.status_code == 200:  # a value that is only ever a parameter: matched nothing
                assert card_ids(r.text) == [], (key, attack)
    for where in ["TRUE); DELETE FROM clips; SELECT (1", "clip_id IN (SELECT * FROM read_csv('/etc/passwd'))",
                  "(SELECT count(*) FROM (COPY clips TO '/tmp/x.csv')) > 0", "kept; ATTACH '/tmp/evil.db'"]:
        r = requests.get(server.url + "/", params={"where": where}, timeout=30)
        assert r.status_code == 400 and 'id="error"' in r.text, where
    for path in ["/clip/..%2F..%2Fetc%2Fpasswd", "/clip/A'B", "/media/clip/..%2Fcatalog.duckdb",
                 "/media/still/%2Fetc%2Fpasswd", "/media/clip/x?from=../../etc"]:
        r = requests.get(server.url + path, timeout=30)
        assert r.status_code in (400, 404) and "root:" not in r.text, path
    assert _table_counts(built["catalog"]) == before


def test_files_outside_the_served_folders_are_not_served(built, tmp_path):
    srv = ThreadServer(make_app(ServeSettings(catalog=built["catalog"], roots=[str(tmp_path)])))
    try:
        clip = built["clips"][0]["clip_id"]
        r = requests.get(f"{srv.url}/media/clip/{clip}", timeout=30)
        assert r.status_code == 404 and "outside the served folders" in r.text
    finally:
        srv.stop()


def test_a_token_guards_every_request(built):
    srv = ThreadServer(make_app(_settings(built, token="s3cret")))
    try:
        assert requests.get(srv.url + "/", timeout=30).status_code == 401
        assert requests.get(srv.url + "/media/clip/" + built["clips"][0]["clip_id"], timeout=30).status_code == 401
        s = requests.Session()
        assert s.get(srv.url + "/", params={"token": "s3cret"}, timeout=30).status_code == 200
        assert s.get(srv.url + "/", timeout=30).status_code == 200  # the cookie it set
        assert requests.get(srv.url + "/", headers={"Authorization": "Bearer s3cret"}, timeout=30).status_code == 200
        assert requests.get(srv.url + "/", params={"token": "wrong"}, timeout=30).status_code == 401
    finally:
        srv.stop()


def test_only_loopback_host_names_are_answered_on_loopback(server):
    """A page on another site that rebinds its name to 127.0.0.1 gets nothing."""
    assert requests.get(server.url + "/", headers={"Host": "evil.example"}, timeout=30).status_code == 400
    assert requests.get(server.url + "/", headers={"Host": "localhost:8765"}, timeout=30).status_code == 200


def test_a_non_loopback_bind_without_a_token_refuses_to_start(built):
    cli = [sys.executable, "-m", "vidcorpus.cli", "serve", "--catalog", built["catalog"], "--port", "1"]
    r = subprocess.run([*cli, "--host", "0.0.0.0"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "VIDCORPUS_SERVE_TOKEN": ""})
    assert r.returncode == 2 and "--token" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "vidcorpus.cli", "serve", "-w", str(Path(built["workdir"]) / "nope")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no catalog" in r.stderr and "Traceback" not in r.stderr


JOB = """
import json, sys, time
from vidcorpus.catalog.store import Catalog
cat = Catalog(sys.argv[1], hold=False)   # as the pipeline driver opens it
time.sleep(1.5)                          # the readers are in full swing by now
waits = []
for _ in range(6):
    started = time.monotonic()
    with cat.transaction() as con:
        con.execute("UPDATE runs SET status = status WHERE run_id = 'run-a'")
    waits.append(time.monotonic() - started)
    time.sleep(0.3)
print(json.dumps(waits))
"""


def test_back_to_back_page_loads_never_starve_a_running_jobs_commits(built, server):
    """Eight clients reloading the grid without pause keep a read connection open all the time; a
    job's commit must still get in at once (the server stops joining the open connection while a
    job waits, and closes it when the requests in flight are done)."""
    import json
    import threading

    job = subprocess.Popen([sys.executable, "-c", JOB, built["catalog"]], stdout=subprocess.PIPE, text=True)
    statuses: list[int] = []

    import time

    stop_at = time.monotonic() + 20  # without the hand-over the job gets in only when the clients stop

    def browse():
        with requests.Session() as s:
            while job.poll() is None and time.monotonic() < stop_at:
                statuses.append(s.get(server.url + "/", params={"sort": "aesthetic"}, timeout=60).status_code)

    clients = [threading.Thread(target=browse) for _ in range(8)]
    for t in clients:
        t.start()
    out, _ = job.communicate(timeout=120)
    for t in clients:
        t.join(timeout=60)
    waits = json.loads(out)
    assert job.returncode == 0 and len(waits) == 6
    assert max(waits) < 2.0, waits  # without the hand-over a commit waits until the clients stop
    assert len(statuses) > 20 and set(statuses) == {200}


def test_an_exported_snapshot_is_browsed_read_only(built, tmp_path):
    release_file(built["catalog"])  # the module's server (this process) keeps its read connection warm
    with Catalog(built["catalog"], read_only=True) as cat:
        cat.export(str(tmp_path / "snap"))
    srv = ThreadServer(make_app(ServeSettings(catalog=str(tmp_path / "snap"),
                                              roots=media_roots(built["workdir"], built["catalog"]))))
    try:
        html = requests.get(srv.url + "/", params={"decision": "dropped"}, timeout=30).text
        assert sorted(card_ids(html)) == sorted(c["clip_id"] for c in built["clips"] if c["kept"] is False)
        clip = next(c for c in built["clips"] if c["clip_path"])  # one with a file (dropped clips have none)
        page = requests.get(f"{srv.url}/clip/{clip['clip_id']}", timeout=30).text
        assert 'id="labeler"' not in page  # nothing to write to
        r = requests.post(srv.url + "/api/labels", json={"clip_id": clip["clip_id"], "label": "good"},
                          headers=WRITE, timeout=30)
        assert r.status_code == 503 and "snapshot" in r.text
        media = requests.get(f"{srv.url}/media/clip/{clip['clip_id']}", timeout=30)
        assert media.status_code == 200 and media.content == Path(clip["clip_path"]).read_bytes()
        bad = requests.get(srv.url + "/", params={"where": "clip_id IN (SELECT * FROM read_csv('/etc/passwd'))"},
                           timeout=30)
        assert bad.status_code == 400
    finally:
        srv.stop()


def test_a_snapshot_on_s3_is_browsed_and_its_clips_play(built, s3):
    release_file(built["catalog"])
    with Catalog(built["catalog"], read_only=True) as cat:
        cat.export("s3://bucket/serve-snapshot")
    srv = ThreadServer(make_app(ServeSettings(catalog="s3://bucket/serve-snapshot",
                                              roots=media_roots(built["workdir"], built["catalog"]))))
    try:
        html = requests.get(srv.url + "/", params={"sort": "duration_s", "desc": "1"}, timeout=30).text
        with Catalog(built["catalog"], read_only=True) as cat:
            expected = [r["clip_id"] for r in cat.query_dicts(
                "SELECT clip_id FROM clips_wide ORDER BY duration_s DESC NULLS LAST, clip_id")]
        assert card_ids(html) == expected
        clip = next(c for c in built["clips"] if c["media_type"] == "video" and c["clip_path"])
        r = requests.get(f"{srv.url}/media/clip/{clip['clip_id']}", headers={"Range": "bytes=0-63"}, timeout=30)
        assert r.status_code == 206 and r.content == Path(clip["clip_path"]).read_bytes()[:64]
    finally:
        srv.stop()


def test_the_clip_page_lists_its_nearest_clips_by_embedding(built, server):
    import numpy as np

    from vidcorpus.filters.dedup import read_embeddings

    with Catalog(built["catalog"], read_only=True) as cat:
        index = cat.query_dicts("SELECT clip_id, url FROM embeddings")
    ids, mat, _ = read_embeddings(index)
    assert len(ids) >= 3
    mat = mat / np.linalg.norm(mat, axis=1, keepdims=True)
    clip = ids[0]
    sims = mat @ mat[0]
    expected = [ids[i] for i in np.argsort(-sims) if ids[i] != clip][:8]
    html = requests.get(f"{server.url}/clip/{clip}", timeout=30).text
    near = html.split('id="near"')[1].split("</ol>")[0]
    assert re.findall(r'href="/clip/([0-9a-z-]+)"', near) == expected


HOLDER = """
import sys, time
from vidcorpus.catalog.store import Catalog
cat = Catalog(sys.argv[1], hold=False)
with cat.transaction() as con:          # a job's commit that takes a while
    con.execute("UPDATE runs SET status = status WHERE run_id = 'run-a'")
    print("holding", flush=True)
    time.sleep(2.0)
print("done", flush=True)
"""


def test_a_label_given_during_a_jobs_commit_waits_for_it_and_is_kept(built, server):
    import time

    clip = built["clips"][1]["clip_id"]
    job = subprocess.Popen([sys.executable, "-c", HOLDER, built["catalog"]], stdout=subprocess.PIPE, text=True)
    try:
        assert job.stdout.readline().strip() == "holding"
        started = time.monotonic()
        r = requests.post(server.url + "/api/labels", json={"clip_id": clip, "label": "bad", "reason": "static"},
                          headers=WRITE, timeout=60)
        waited = time.monotonic() - started
        assert r.status_code == 200, r.text
        assert job.wait(timeout=30) == 0
        assert waited > 0.5  # it waited for the commit instead of failing or writing beside it
    finally:
        job.kill()
    with Catalog(built["catalog"], read_only=True) as cat:
        assert cat.query_dicts("SELECT label, reason FROM labels WHERE clip_id = ? ORDER BY labeled_at DESC LIMIT 1",
                               [clip]) == [{"label": "bad", "reason": "static"}]
