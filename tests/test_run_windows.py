"""The runner feeds a run's inputs to Ray Data in windows and commits each window while the run goes on.

With one Ray Dataset over the whole input, the first clip reached the driver only after the CPU
stages had run over (nearly) all of it, and sources were marked done only at the end: a driver
killed mid-run redid the whole run. Here a run crashes as its last window starts; every window
before it but one (two may be in flight) must already be committed and done, and the rerun
processes only the rest.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.slow
def test_early_windows_are_committed_and_done_before_the_last_input_starts(tmp_path, model_cache, monkeypatch):
    import ray

    from vidcorpus import runner
    from vidcorpus.catalog.store import Catalog
    from vidcorpus.config import load_config
    from vidcorpus.synth import make_corpus

    corpus = make_corpus(tmp_path / "corpus", n_videos=1, n_images=2, broken=False, include_real=False)
    n_sources = len(Path(corpus["list"]).read_text().splitlines())
    assert n_sources >= 3
    cfg = load_config(None, ["ray.num_cpus=2", "ray.window_sources=1"], workdir=str(tmp_path / "work"),
                      inputs=[corpus["list"]])

    events: list[tuple[str, set[str]]] = []
    build, mark_done, commit = runner.build_dataset, Catalog.mark_sources_done, Catalog.commit_results
    crash = {"on_window": n_sources - 1}

    def recording_build(cfg, sources, *a, **kw):
        ids = {s["source_id"] for s in sources}
        events.append(("start", ids))
        if crash["on_window"] is not None and len([e for e in events if e[0] == "start"]) > crash["on_window"]:
            raise RuntimeError("driver crashed as the last window started")
        return build(cfg, sources, *a, **kw)

    def recording_done(self, ids):
        ids = set(ids)
        events.append(("done", ids))
        return mark_done(self, ids)

    def recording_commit(self, run_id, rows, *a, **kw):
        rows = list(rows)
        events.append(("commit", {r["source_id"] for r in rows if r.get("clip_id") and not r.get("error_class")}))
        return commit(self, run_id, rows, *a, **kw)

    monkeypatch.setattr(runner, "build_dataset", recording_build)
    monkeypatch.setattr(Catalog, "mark_sources_done", recording_done)
    monkeypatch.setattr(Catalog, "commit_results", recording_commit)
    ray.shutdown()
    try:
        with pytest.raises(RuntimeError, match="last window started"):
            runner.run_pipeline(cfg, progress=False, log=lambda _m: None)
        starts = [e[1] for e in events if e[0] == "start"]
        assert len(starts) == n_sources and all(len(s) == 1 for s in starts), "one source per window, in order"
        last = next(iter(starts[-1]))
        before_last = events[:events.index(("start", starts[-1]))]
        # At most two windows are in flight (they may end out of order): when the last one starts,
        # every window but one before it has been committed and marked done.
        done = set().union(*[ids for kind, ids in before_last if kind == "done"])
        committed = set().union(*[ids for kind, ids in before_last if kind == "commit"])
        assert len(done) >= n_sources - 2 and last not in done, (done, starts)
        assert done <= committed, "a window's clips are committed before its sources are marked done"
        with Catalog(cfg.catalog_path, read_only=True) as cat:
            status = dict(cat.con.execute("SELECT source_id, status FROM sources").fetchall())
            clips = dict(cat.con.execute("SELECT source_id, count(*) FROM clips GROUP BY 1").fetchall())
        assert all(status[s] == "done" and clips.get(s, 0) > 0 for s in done)
        # the window in flight may have ended (and been marked done) before the crash reached the driver
        done_at_crash = {s for s, st in status.items() if st == "done"}
        assert last not in status, "the last window never ran"

        # The rerun processes only what the crash left undone, and ends with every source done once.
        events.clear()
        crash["on_window"] = None
        summary = runner.run_pipeline(cfg, progress=False, log=lambda _m: None)
        rerun = set().union(*[e[1] for e in events if e[0] == "start"])
        assert rerun == set().union(*starts) - done_at_crash and summary.sources_skipped == len(done_at_crash)
        assert summary.failures == 0
        with Catalog(cfg.catalog_path, read_only=True) as cat:
            q = lambda sql: cat.con.execute(sql).fetchone()[0]  # noqa: E731
            assert q("SELECT count(*) FROM sources WHERE status = 'done'") == n_sources
            assert q("SELECT count(*) - count(DISTINCT clip_id) FROM clips") == 0
            after = dict(cat.con.execute("SELECT source_id, count(*) FROM clips GROUP BY 1").fetchall())
            assert all(after[s] == clips[s] for s in done_at_crash)
            assert q("SELECT count(*) FROM failures") == 0
            assert q("SELECT count(*) FROM shard_members") == q("SELECT count(*) FROM clips_wide WHERE kept") > 0
    finally:
        ray.shutdown()
