"""Duplicate scoring across a run's windows: one read of the catalog per run, the scores of run_dedup.

The runner scores duplicates each time a window of sources is whole. `run_dedup` reads every
embedding Parquet file and every clip's rank scores on each call; `DedupIndex` reads them once and
then only what the run commits. These tests hold the index to `run_dedup`'s rows window by window
and count the reads. The embeddings are designed vectors (dedup's input is vectors, whichever model
made them), so that the duplicate groups are known; the CLIP-made path is covered in test_filters.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

DIM = 32
MODEL = "tiny-clip"


def _unit(v):
    v = np.asarray(v, np.float64)
    return (v / np.linalg.norm(v)).astype(np.float32)


def _vectors(seed=0):
    """Named unit vectors: independent random ones, and near copies (cosine about 0.98) of some."""
    rng = np.random.default_rng(seed)
    base = {k: _unit(rng.standard_normal(DIM)) for k in ("o1", "o2", "o3", "o4", "a", "x", "c", "d")}
    near = lambda k: _unit(base[k] + 0.2 * _unit(rng.standard_normal(DIM)))  # noqa: E731
    return base | {"n1": near("o1"), "b": near("o2"), "a2": near("a")}


def _row(clip, emb, aesthetic, sha=None, source=None):
    from vidcorpus.schemas import empty_row

    source = source or f"src{clip}"
    return empty_row(
        source_id=source, uri=f"file:///{source}.mp4", media_type="video", clip_id=f"{source}-{clip}",
        first_frame=0, last_frame=47, start_s=0.0, end_s=2.0, width=64, height=64,
        clip_path=f"/clips/{clip}.mp4", first_frame_path=f"/clips/{clip}.jpg",
        scores=[{"scorer": "aesthetic", "model": "a", "version": "1", "value": float(aesthetic)},
                {"scorer": "clip_text", "model": MODEL, "version": "1", "value": 0.3},
                {"scorer": "duration_s", "model": "", "version": "1", "value": 2.0}],
        embedding=emb.tolist(), embedding_model=MODEL, content_sha256=sha or f"sha-{clip}")


def _scenario():
    """(rows of an earlier run, the windows of this run): an exact pair split across windows whose
    better copy comes second, a better near copy of an earlier clip in a later window, and an
    earlier clip re-processed with a new aesthetic (its rank changes)."""
    v = _vectors()
    earlier = [_row("o1", v["o1"], 6.0), _row("o2", v["o2"], 3.0), _row("o3", v["o3"], 5.0),
               _row("o4", v["o4"], 2.0, source="srco4")]
    windows = [
        [_row("a", v["a"], 4.0), _row("x1", v["x"], 3.0, sha="sha-x"), _row("n1", v["n1"], 5.0)],
        [_row("x2", v["x"], 7.0, sha="sha-x"), _row("b", v["b"], 8.0), _row("c", v["c"], 1.0)],
        [_row("a2", v["a2"], 3.0), _row("o4", v["o4"], 9.0, source="srco4"), _row("d", v["d"], 2.0)],
    ]
    return earlier, windows


def _commit(cat, run_id, rows, root, seq):
    from vidcorpus.filters.dedup import write_embedding_batch

    index = write_embedding_batch(root, run_id, seq, rows)
    cat.commit_results(run_id, rows)
    cat.commit_embeddings(run_id, index)
    return [r["clip_id"] for r in index], index


def _key(rows):
    return sorted(((r["model"], r["clip_id"], r["scorer"]), r["value"]) for r in rows)


def _same_rows(got, want):
    """The same (model, clip, scorer) rows; dup_exact equal, dup_sim equal to float32 rounding (a
    matrix product's last bit depends on how many rows it multiplies at once, as in run_dedup)."""
    got, want = _key(got), _key(want)
    assert [k for k, _ in got] == [k for k, _ in want]
    for (k, a), (_, b) in zip(got, want):
        assert a == b if k[2] == "dup_exact" else abs(a - b) < 1e-6, (k, a, b)


def _dup_scores(cat):
    rows = cat.query_dicts("SELECT clip_id, scorer, arg_max(value, written_at) AS value FROM scores "
                           "WHERE scorer LIKE 'dup_%' GROUP BY ALL")
    return {(r["clip_id"], r["scorer"]): r["value"] for r in rows}


@pytest.mark.parametrize("floor", [0.5, -1.0])
def test_index_over_windows_gives_run_dedups_rows(tmp_path, floor):
    from vidcorpus.catalog.store import Catalog
    from vidcorpus.filters.dedup import DedupIndex, run_dedup

    earlier, windows = _scenario()
    # two catalogs fed the same commits: one scored by run_dedup after each window (what the
    # runner did), one by the index
    cats = {k: Catalog(tmp_path / f"{k}.duckdb") for k in ("fresh", "index")}
    for k, cat in cats.items():
        _commit(cat, "run0", earlier, str(tmp_path / k / "emb"), 0)
        run_dedup(cat, "run0", None, floor)
    index = DedupIndex(floor, "run1")
    run_clips = []
    for w, rows in enumerate(windows):
        new = {}
        for k, cat in cats.items():
            new[k], rows_index = _commit(cat, "run1", rows, str(tmp_path / k / "emb"), w + 1)
            if k == "index":
                index.committed([r["clip_id"] for r in rows], rows_index)
        run_clips += new["fresh"]
        want = run_dedup(cats["fresh"], "run1", new["fresh"], floor)
        got = index.score(cats["index"], "run1", new["index"])
        _same_rows(got, want)
    assert index.loads == 1
    fresh, incr = _dup_scores(cats["fresh"]), _dup_scores(cats["index"])
    assert fresh.keys() == incr.keys() and all(abs(fresh[k] - incr[k]) < 1e-6 for k in fresh)

    d = {c.split("-", 1)[1]: {s: incr[(c, s)] for s in ("dup_exact", "dup_sim")}
         for c in {c for c, _ in incr}}
    # the exact pair split across windows: the better copy (x2) arrived second and turned x1 into
    # the duplicate; the better near copy b (second window) turned the earlier run's o2 into one; o4,
    # re-processed with aesthetic 9 (was 2), now ranks first of all: nothing better, dup_sim 0
    assert d["x1"]["dup_exact"] == 1.0 and d["x2"]["dup_exact"] == 0.0 and d["x1"]["dup_sim"] > 0.999
    assert d["o2"]["dup_sim"] > 0.9 and d["b"]["dup_sim"] < 0.9
    assert d["n1"]["dup_sim"] > 0.9 and d["o1"]["dup_sim"] < 0.9
    assert d["a2"]["dup_sim"] > 0.9 and d["a"]["dup_sim"] < 0.9 and d["o4"]["dup_sim"] == 0.0

    # one run_dedup over the final catalog agrees where the scores matter: exact copies everywhere,
    # dup_sim at and above the floor (below it a clip scored in an earlier window is not re-scored
    # by a later far-away clip); with floor -1 every clip is re-scored every window: all agree
    once = {(r["clip_id"], r["scorer"]): r["value"]
            for r in run_dedup(cats["fresh"], "check", None, floor)}
    for (clip, scorer), value in once.items():
        if scorer == "dup_exact":
            assert incr[(clip, scorer)] == value, clip
        elif value >= floor:
            assert abs(incr[(clip, scorer)] - value) < 1e-6, clip
        else:
            assert incr[(clip, scorer)] < floor, clip
    if floor == -1.0:
        assert all(abs(incr[k] - v) < 1e-6 for k, v in once.items())
    for cat in cats.values():
        cat.close()


def test_index_reads_the_catalog_again_when_another_run_writes_embeddings(tmp_path):
    from vidcorpus.catalog.store import Catalog
    from vidcorpus.filters.dedup import DedupIndex, run_dedup

    earlier, windows = _scenario()
    cat = Catalog(tmp_path / "cat.duckdb")
    _commit(cat, "run0", earlier, str(tmp_path / "emb"), 0)
    index = DedupIndex(0.5, "run1")
    new, rows_index = _commit(cat, "run1", windows[0], str(tmp_path / "emb"), 1)
    index.score(cat, "run1", new)
    # a second writer commits a better near copy of b while this run goes on, then b arrives
    b = next(r for r in windows[1] if r["clip_id"].endswith("-b"))
    copy = _unit(np.asarray(b["embedding"]) + 0.1 * _vectors(1)["a"])
    _commit(cat, "run2", [_row("bb", copy, 9.5, source="other")], str(tmp_path / "emb"), 0)
    new, rows_index = _commit(cat, "run1", windows[1], str(tmp_path / "emb"), 2)
    index.committed(new, rows_index)
    got = index.score(cat, "run1", new)
    assert index.loads == 2  # noticed, and read again
    _same_rows(got, run_dedup(cat, "check", new, 0.5))  # dup scores do not change the ranking
    assert next(r["value"] for r in got if r["clip_id"] == b["clip_id"] and r["scorer"] == "dup_sim") > 0.9
    cat.close()


def test_a_run_reads_the_catalogs_embeddings_once_not_once_per_window(tmp_path, monkeypatch):
    """The runner's commit loop (RunCommitter) over four groups of sources: every embedding Parquet file
    (the catalog's and the run's own) is read once, and the catalog's rank scores fetched once."""
    import pyarrow.parquet as pq

    from vidcorpus.jobs.curate import pipeline
    from vidcorpus.catalog.store import Catalog
    from vidcorpus.config import load_config
    from vidcorpus.schemas import rows_to_table

    cfg = load_config(None, ["filters.dedup_floor=0.5"], workdir=str(tmp_path / "work"))
    rng = np.random.default_rng(1)
    earlier = [_row(f"e{i}", _unit(rng.standard_normal(DIM)), i % 7) for i in range(40)]
    cat = Catalog(cfg.catalog_path, hold=False)
    for i in range(4):  # the catalog before the run: four Parquet files
        _commit(cat, "run0", earlier[10 * i:10 * i + 10], cfg.url("embeddings"), i)
    before = {r["url"] for r in cat.query_dicts("SELECT DISTINCT url FROM embeddings")}
    # four windows of three clips, each in two result batches; the last has an exact copy of e0
    clips = [_row(f"w{i}", _unit(rng.standard_normal(DIM)), 5.0) for i in range(11)]
    clips.append(_row("copy", np.asarray(earlier[0]["embedding"], np.float32), 9.0, sha=earlier[0]["content_sha256"]))

    from vidcorpus.jobs.curate.commit import RunCommitter

    reads: Counter = Counter()
    read_table = pq.read_table

    def counting(source, *a, **kw):
        reads[getattr(source, "path", None) or getattr(source, "name", None) or str(source)] += 1
        return read_table(source, *a, **kw)

    full_score_reads = []
    latest = Catalog.latest_scores

    def counting_latest(self, clip_ids=None):
        if clip_ids is None or len(clip_ids) >= len(earlier):
            full_score_reads.append(len(clip_ids or []))
        return latest(self, clip_ids)

    monkeypatch.setattr(pq, "read_table", counting)
    monkeypatch.setattr(Catalog, "latest_scores", counting_latest)
    summary = pipeline.RunSummary(run_id="run1")
    committer = RunCommitter(cfg, cat, "run1", summary)
    for w in range(4):  # four groups of whole sources, each committed in two batches
        part = clips[3 * w:3 * w + 3]
        committer.add(rows_to_table(part[:2]))
        committer.add(rows_to_table(part[2:]))
        committer.close_group()
    committer.finish()
    monkeypatch.undo()

    files = {r["url"] for r in cat.query_dicts("SELECT DISTINCT url FROM embeddings")}
    assert len(files) == len(before) + 8
    assert sum(reads.values()) == len(files), reads  # each file once, the catalog's included
    assert len(reads) == len(files) and max(reads.values()) == 1
    assert len(full_score_reads) == 1, full_score_reads  # the catalog's rank scores: once per run
    d = _dup_scores(cat)
    assert {c for c, _ in d} >= {r["clip_id"] for r in clips}
    assert d[(earlier[0]["clip_id"], "dup_exact")] == 1.0 and d[(clips[-1]["clip_id"], "dup_exact")] == 0.0
    assert {c for c, s in d if s == "dup_exact" and d[(c, s)] == 1.0} == {earlier[0]["clip_id"]}
    cat.close()
