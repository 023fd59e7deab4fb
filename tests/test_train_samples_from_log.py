"""Recording a training run reads its sample log with DuckDB: ``train_samples`` is filled straight
from the per-rank Parquet parts (the driver never holds the run's history) and stays exact, at a
few thousand samples and across a resume that trained later steps again on other clips."""

from __future__ import annotations

import datetime as dt
import random
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa

from vidcorpus.catalog.store import Catalog
from vidcorpus.jobs.train import log_stats, sample_files
from vidcorpus.train.sample_log import SampleLog, list_parts

CLIPS = [f"{i:016x}-0000000-0000009" for i in range(300)]


def _catalog(path: Path) -> Catalog:
    now = pa.scalar(time.time_ns() // 1000, pa.timestamp("us"))
    cat = Catalog(path)
    cat.commit_fragments("ingest", {
        "sources": pa.table({"source_id": [c[:16] for c in CLIPS], "uri": [f"https://e.com/{c[:16]}.mp4" for c in CLIPS],
                             "status": ["done"] * len(CLIPS)}),
        "clips": pa.table({"clip_id": CLIPS, "source_id": [c[:16] for c in CLIPS], "media_type": ["video"] * len(CLIPS),
                           "duration_s": [2.0] * len(CLIPS), "updated_at": [now] * len(CLIPS)})})
    return cat


def _train(run: Path, steps: range, clips: list[str], every: int, seed: int, logs: dict) -> dict[int, float]:
    """Two ranks' sample logs over ``steps`` (two clips per rank and step, a part every ``every``
    steps), as the loop writes them; returns each step's loss."""
    rng = random.Random(seed)
    losses = {}
    for rank in (0, 1):
        log = logs.setdefault(rank, SampleLog(str(run), rank))
        for step in steps:
            losses[step] = 1.0 / (step + 1)
            log.add(step, rng.sample(clips, 2), losses[step])
            if (step + 1) % every == 0:
                log.flush(step + 1)
    return losses


def _recorded(cat: Catalog) -> tuple[set, set, int]:
    rows = {(r["step"], r["clip_id"]) for r in cat.query_dicts("SELECT step, clip_id FROM train_samples WHERE run_id = 'r1'")}
    trained = {r["clip_id"] for r in cat.query_dicts("SELECT clip_id FROM clips_wide WHERE trained")}
    [n] = cat.query_dicts("SELECT count(*) AS n FROM train_samples")
    return rows, trained, n["n"]


def _record(cat: Catalog, run: Path, steps: int) -> list[dict]:
    files = sample_files(SimpleNamespace(run_dir=str(run), steps=steps))
    cat.record_training("r1", "base", "kept", steps, 0.1, str(run / "checkpoints"), [], "{}", dt.datetime(2026, 1, 1),
                        None, files=files)
    return files


def test_train_samples_come_exactly_from_the_sample_log_files(tmp_path):
    run, logs = tmp_path / "run", {}
    losses = _train(run, range(0, 500), CLIPS[:100], every=250, seed=0, logs=logs)  # 4,000 samples in 8 parts
    losses |= _train(run, range(500, 1000), CLIPS[100:], every=250, seed=0, logs=logs)
    written = {(s, k) for p in list_parts(str(run)) for s, k in zip(*_read(p.url))}
    assert len(list_parts(str(run))) == 8 and sum(len(_read(p.url)[0]) for p in list_parts(str(run))) == 4000

    with _catalog(tmp_path / "catalog.duckdb") as cat:
        for _ in range(2):  # recording the same run again (a rerun) adds nothing
            files = _record(cat, run, 1000)
            rows, trained, n = _recorded(cat)
            assert rows == written and n == len(written)  # distinct (step, clip) pairs, each once
            assert trained == {k for _s, k in written}
            assert sum(f["rows"] for f in files) == 4000
            assert cat.verify(deep=True) == []

        # resumed from step 500 and trained steps 500..749 again, on the first 20 clips only; the
        # parts past step 500 were dropped by the resume (train/sample_log.py)
        for p in list_parts(str(run)):
            if p.end > 500:
                Path(p.url).unlink()
        for log in logs.values():
            log.flushed = 500
        _train(run, range(500, 750), CLIPS[:20], every=125, seed=1, logs=logs)
        _record(cat, run, 750)
        now = {(s, k) for p in list_parts(str(run)) for s, k in zip(*_read(p.url))}
        rows, trained, n = _recorded(cat)
        assert rows == now and n == len(now) and max(s for s, _k in rows) == 749
        assert trained == {k for _s, k in now}  # clips trained only at the replaced steps are no longer trained
        assert trained == set(CLIPS[:100])
        assert cat.verify(deep=True) == []

    stats_losses, distinct = log_stats(sample_files(SimpleNamespace(run_dir=str(run), steps=750)))
    assert stats_losses == [losses[s] for s in range(750)]  # one per step, in step order
    assert distinct == len({k for _s, k in now})


def _read(url: str) -> tuple[list[int], list[str]]:
    import pyarrow.parquet as pq

    t = pq.read_table(url)
    return t["step"].to_pylist(), t["clip_id"].to_pylist()
