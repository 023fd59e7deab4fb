"""Crash and resume with real processes (issue 11): the driver SIGKILLed at named points of a run, and
Ray workers (a task and an actor) SIGKILLed mid-task.

The runs are the real pipeline on a local Ray, with tiny models. Hooks put in by the driver script
(stage subclasses defined in ``__main__``, which Ray ships to its workers by value) write a marker
file and wait at the named point, so the test kills exactly there:

- ``download``: inside the download stage (a Ray task);
- ``score``: inside the CLIP/aesthetic scorer (a Ray actor);
- ``commit``: inside the catalog transaction of a result batch (clips upserted, not committed);
- ``shard``: inside the shard writer (the tar's part file open, nothing published).

One work folder is killed at each point in turn and then run to the end; it must equal a run with
no driver kill: same clip ids and clip bytes, sources, failures, kept clips, shard members, shard
bytes, no duplicate rows, no orphan or partial shard files, no credential in any log or the catalog.
That second run has its own faults: one Ray task worker and one actor worker are SIGKILLed mid-task
(Ray retries the task, restarts the actor) and it must still finish with that same result.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vidcorpus.catalog.store import Catalog

SCRIPT = r"""
import logging, os, sys, time
from vidcorpus.jobs import pack_shards
from vidcorpus.jobs.curate import pipeline
from vidcorpus.catalog.store import Catalog
from vidcorpus.config import load_config
from vidcorpus.filters.clip_scores import ClipScoreStage
from vidcorpus.filters.technical import TechnicalStage
from vidcorpus.ingest.download import DownloadStage
from vidcorpus.shards import writer

work, inputs, points, marks = sys.argv[1], sys.argv[2], set(sys.argv[3].split("+")), sys.argv[4]
os.makedirs(marks, exist_ok=True)


def first(name):
    # True once per marker: the hooked call that creates it waits there to be killed
    try:
        fd = os.open(os.path.join(marks, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


class HookedDownload(DownloadStage):
    def __call__(self, batch):
        if "download" in points and first("download"):
            time.sleep(300)
        return super().__call__(batch)


class HookedTechnical(TechnicalStage):
    def __call__(self, batch):
        if "worker" in points and first("task-worker"):
            time.sleep(300)  # the test SIGKILLs this Ray worker; the task is retried
        return super().__call__(batch)


class HookedScore(ClipScoreStage):
    def __call__(self, batch):
        if "score" in points and first("score"):
            time.sleep(300)
        if "worker" in points and first("actor-worker"):
            time.sleep(300)  # the test SIGKILLs this actor; Ray Data restarts it and retries
        return super().__call__(batch)


stages = pipeline.pipeline_stages
swap = {DownloadStage: HookedDownload, TechnicalStage: HookedTechnical, ClipScoreStage: HookedScore}
pipeline.pipeline_stages = lambda: [swap.get(s, s) for s in stages()]

upsert = Catalog._upsert
def hooked_upsert(self, table, rows):
    n = upsert(self, table, rows)
    if "commit" in points and table == "clips" and first("commit"):
        time.sleep(300)  # inside the batch's transaction: clips written, not committed
    return n
Catalog._upsert = hooked_upsert

pack_shards._ray_ready = lambda: False  # shards are written by this process, so the kill lands in the writer
sample_of = writer.sample_of
def hooked_sample_of(*a, **kw):
    if "shard" in points and first("shard"):
        time.sleep(300)  # the tar's part file is open, the first sample not yet written
    return sample_of(*a, **kw)
writer.sample_of = hooked_sample_of

cfg = load_config(None, ["ray.num_cpus=2", "ingest.retries=0", "ray.commit_rows=2"], workdir=work, inputs=[inputs])
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)  # the run's lines, as the CLI shows them
s = pipeline.run_pipeline(cfg, progress=False)
print("DONE", s.rows_committed, flush=True)
"""
SECRET = "hunter2secretKey9876"


def _start(work: Path, inputs: str, points: str, marks: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_DEDUP_LOGS="0")
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(work), inputs, points, str(marks)],
                            stdout=open(log, "a"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _reap(proc: subprocess.Popen) -> None:
    """Kill what is left of the process group this test started (Ray's helpers after a SIGKILL)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def _wait_for(marker: Path, proc: subprocess.Popen, log: Path, timeout: float = 120) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if marker.exists() and marker.read_text():
            return int(marker.read_text())
        assert proc.poll() is None, f"the run ended before reaching {marker.name}:\n" + log.read_text()[-3000:]
        time.sleep(0.05)
    raise AssertionError(f"{marker.name} not reached in {timeout} s:\n" + log.read_text()[-3000:])


def _state(work: Path) -> dict:
    with Catalog(work / "catalog.duckdb", read_only=True) as cat:
        q = lambda sql: cat.con.execute(sql).fetchall()  # noqa: E731
        on_disk = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (work / "shards").rglob("*.tar")}
        return {
            "clips": {cid: p and hashlib.sha256(Path(p).read_bytes()).hexdigest()  # dropped clips: no file (issue 22)
                  for cid, p in q("SELECT clip_id, clip_path FROM clips")},
            "duplicates": q("SELECT (SELECT count(*) - count(DISTINCT clip_id) FROM clips) + "
                            "(SELECT count(*) - count(DISTINCT (clip_id, scorer)) FROM scores) + "
                            "(SELECT count(*) - count(DISTINCT (clip_id, version, kind)) FROM captions) + "
                            "(SELECT count(*) - count(DISTINCT clip_id) FROM shard_members)")[0][0],
            "sources": sorted(q("SELECT source_id, status, sha256 FROM sources")),
            "failures": sorted(q("SELECT item_id, stage, error_class FROM failures")),
            "kept": sorted(r[0] for r in q("SELECT clip_id FROM clips_wide WHERE kept")),
            "members": sorted(q("SELECT shard_id, clip_id FROM shard_members")),
            "shards": sorted(q("SELECT shard_id, sha256 FROM shards")),
            "shards_on_disk": sorted(on_disk.values()),
            "part_files": sorted(p.name for p in work.rglob("*.part*")),
            "secret_in_catalog": q(f"SELECT (SELECT count(*) FROM sources WHERE uri LIKE '%{SECRET}%') + "
                                   f"(SELECT count(*) FROM failures WHERE uri LIKE '%{SECRET}%' OR error LIKE '%{SECRET}%') + "
                                   f"(SELECT count(*) FROM runs WHERE config_json LIKE '%{SECRET}%')")[0][0],
        }


@pytest.mark.slow
def test_driver_killed_at_each_point_and_workers_killed_mid_task_end_as_an_uninterrupted_run(tmp_path, model_cache):
    from vidcorpus.config import ModelsConfig
    from vidcorpus.jobs.models import resolve_models
    from vidcorpus.synth import make_corpus

    resolve_models(ModelsConfig())  # build the tiny models once, outside the runs
    corpus = make_corpus(tmp_path / "corpus", n_videos=2, n_images=1, include_real=False)
    inputs = tmp_path / "sources.jsonl"  # plus a credentialed URL to a blocked address: a failure row
    inputs.write_text(Path(corpus["list"]).read_text() + json.dumps(
        {"url": f"http://admin:{SECRET}@169.254.169.254/v.mp4?X-Amz-Signature={SECRET}&X-Amz-Credential=AKIA{SECRET}",
         "text": "metadata service"}) + "\n")
    killed, other = tmp_path / "killed", tmp_path / "worker-kills"
    logs = []

    # The run with worker kills goes on beside the driver kills (its own local Ray): the runs mostly
    # wait on Ray scheduling and model setup, so this roughly halves the test's time.
    marks_w = tmp_path / "marks-worker"
    logs.append(tmp_path / "worker.log")
    with_workers = _start(other, str(inputs), "worker", marks_w, logs[-1])
    worker_kills = []
    try:
        for point in ("download", "score", "commit", "shard"):
            marks = tmp_path / f"marks-{point}"
            logs.append(tmp_path / f"killed-{point}.log")
            proc = _start(killed, str(inputs), point, marks, logs[-1])
            try:
                while True:  # while waiting, kill the other run's workers when they reach their marks
                    for name in ("task-worker", "actor-worker"):
                        m = marks_w / name
                        if name not in [w[0] for w in worker_kills] and m.exists() and m.read_text():
                            os.kill(int(m.read_text()), signal.SIGKILL)
                            worker_kills.append((name, int(m.read_text())))
                    if (marks / point).exists() and (marks / point).read_text():
                        break
                    assert proc.poll() is None, f"ended before {point}:\n" + logs[-1].read_text()[-3000:]
                    time.sleep(0.05)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
            finally:
                _reap(proc)
            assert "DONE" not in logs[-1].read_text()
            after = _state(killed)
            assert after["duplicates"] == 0
            assert after["shards"] == [] and after["shards_on_disk"] == [], point  # nothing published yet
            if point in ("download", "score", "commit"):
                assert "done" not in {s[1] for s in after["sources"]}, (point, after["sources"])
        for name in ("task-worker", "actor-worker"):
            if name not in [w[0] for w in worker_kills]:
                pid = _wait_for(marks_w / name, with_workers, logs[0])
                os.kill(pid, signal.SIGKILL)
                worker_kills.append((name, pid))
        logs.append(tmp_path / "resumed.log")
        proc = _start(killed, str(inputs), "none", tmp_path / "marks-none", logs[-1])
        for p in (with_workers, proc):
            try:
                rc = p.wait(timeout=240)
            finally:
                _reap(p)
            assert rc == 0, [log.read_text()[-3000:] for log in logs if log.exists()]
    finally:
        _reap(with_workers)
    assert [w[0] for w in worker_kills] == ["task-worker", "actor-worker"] or \
        sorted(w[0] for w in worker_kills) == ["actor-worker", "task-worker"]

    resumed, reference = _state(killed), _state(other)
    assert resumed["clips"] and resumed["kept"] and resumed["shards"]
    assert resumed["clips"] == reference["clips"], "same clip ids and the same clip bytes"
    for key in ("sources", "failures", "kept", "members", "shards"):
        assert resumed[key] == reference[key], key
    for s in (resumed, reference):
        assert s["duplicates"] == 0 and s["part_files"] == []
        assert s["shards_on_disk"] == sorted(sha for _id, sha in s["shards"]), "no orphan shard files"
        assert sorted({m[1] for m in s["members"]}) == s["kept"]
        assert s["secret_in_catalog"] == 0
    assert {f[2] for f in resumed["failures"]} >= {"blocked_address", "not_media"}
    for log in logs:  # the credential never reached a log either (the runs print their progress)
        assert SECRET not in log.read_text(), log.name
    assert "blocked_address" in "".join(str(f) for f in resumed["failures"])
