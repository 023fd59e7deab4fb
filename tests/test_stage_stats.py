"""Where the time goes (issue 22): each stage's busy, waiting-for-input and waiting-for-output time.

The arithmetic on hand-made stamps (exact numbers), the stamps a real stage call leaves on its rows
(a batch that leaves no row included), and a real run: the demo's pipeline run, whose per-stage
seconds must add up to the run's wall time and whose rows must match what the catalog holds.
"""

from __future__ import annotations

import time

import pyarrow as pa
import pytest

from vidcorpus.stage_clock import decode, encode, stamp
from vidcorpus.stage_stats import StageStats, bound_by, subtract, union


def test_interval_union_and_subtraction():
    assert union([(3, 4), (0, 1), (0.5, 2), (2, 2.5), (5, 5)]) == [(0, 2.5), (3, 4)]
    assert subtract([(0, 10)], [(1, 2), (3, 4), (9, 12)]) == [(0, 1), (2, 3), (4, 9)]
    assert subtract([(0, 1), (5, 6)], []) == [(0, 1), (5, 6)]
    assert subtract([(0, 1), (2, 3)], [(-1, 4)]) == []


def _row(chain, source="s1", clip=None):
    """A committed row as the driver sees it: its stamps one line each, in order."""
    return {"source_id": source, "clip_id": clip, "error_class": None,
            "stage_times": "\n".join(encode(s) for s in chain)}


def test_stage_seconds_from_hand_made_stamps():
    # Run from t=100 to t=120. Two stages and the driver's commit:
    #   a: batch 1 [101, 103] on worker w1, batch 2 [102, 106] on worker w2 (side by side)
    #   b: batch [110, 112] takes batch 1's rows, [112, 113] batch 2's
    # Batch 1's rows are queued for b from 103 to 110, batch 2's from 106 to 112: b idles from 103
    # to 110 with input queued (waiting for output: held back), 100 to 103 with nothing to do.
    # The commit of both at [115, 116] had rows queued from 112 (b's first batch done).
    a1 = stamp("a", 101, 103, 2, 4, setup_s=1.5, worker="w1")
    a2 = stamp("a", 102, 106, 1, 1, worker="w2")
    b1 = stamp("b", 110, 112, 4, 4, worker="w3")
    b2 = stamp("b", 112, 113, 1, 1, worker="w3")
    stats = StageStats(start=100.0)
    rows = [_row([a1, b1], clip=f"c{i}") for i in range(4)] + [_row([a2, b2], source="s2", clip="c9")]
    carrier = {"source_id": None, "clip_id": None, "error_class": None,
               "stage_times": encode(stamp("a", 118, 119, 1, 0, worker="w1"))}  # a batch that left no row
    stats.add(pa.Table.from_pylist(rows + [carrier]), commit=(115.0, 116.0))
    got = {r.stage: r for r in stats.finish(end=120.0)}
    assert list(got) == ["a", "b", "commit"]
    a, b, c = got["a"], got["b"], got["commit"]
    # busy [101, 106] + [118, 119]; its input (the sources) queued from 100 until each batch took it:
    # idle with input queued only from 100 to 101
    assert (a.busy_s, a.wait_output_s, a.wait_input_s) == (6.0, 1.0, 13.0)
    assert (a.rows_in, a.rows_out, a.batches, a.workers, a.work_s, a.setup_s) == (4, 5, 3, 2, 7.0, 1.5)
    assert (b.busy_s, b.wait_output_s, b.wait_input_s) == (3.0, 7.0, 10.0)
    assert (b.rows_in, b.rows_out, b.batches, b.workers) == (5, 5, 2, 1)
    assert (c.busy_s, c.wait_output_s, c.wait_input_s) == (1.0, 3.0, 16.0)
    assert c.rows_in == 5  # the carrier row is not a row
    for r in (a, b, c):
        assert r.busy_s + r.wait_input_s + r.wait_output_s == pytest.approx(20.0) == r.wall_s
        assert r.gpu_busy_share is None
    assert b.busy == [(10.0, 13.0)] and b.held == [(3.0, 10.0)]  # offsets from the run's start, for the timeline
    assert bound_by(list(got.values())).startswith("bound by: a (busy 30% of the 20.0 s wall time")


def test_a_stage_first_seen_late_is_listed_where_the_chains_put_it():
    """A caption actor's set-up batch shows caption and caption_align before any chain shows the
    read-ahead (caption_read) that comes before caption: the table still lists it before caption."""
    setup = [stamp("caption", 1, 5, 0, 0, worker="w"), stamp("caption_align", 5, 6, 0, 0, worker="w")]
    batch = [stamp("split", 2, 3, 1, 1, worker="t"), stamp("caption_read", 3, 7, 1, 1, worker="w"),
             stamp("caption", 7, 9, 1, 1, worker="w"), stamp("caption_align", 9, 10, 1, 1, worker="w")]
    stats = StageStats(start=0.0)
    stats.add_chain(setup, carrier=True)
    stats.add_chain(batch)
    assert [r.stage for r in stats.finish(end=10.0)] == ["split", "caption_read", "caption", "caption_align"]


def test_gpu_share_is_per_gpu_over_the_wall_time():
    stats = StageStats(start=0.0)
    for i, gpu in enumerate(("h:gpu0", "h:gpu1")):
        s = stamp("caption", 1, 9, 8, 8, gpu=gpu, gpu_busy_s=6.0, worker=f"w{i}")
        stats.add([_row([s], clip=f"c{i}")])
    (row,) = stats.finish(end=10.0)
    assert row.gpu_busy_share == pytest.approx(12.0 / (10.0 * 2))


def test_a_stage_call_stamps_its_rows_and_a_batch_that_leaves_none_still_reports_its_time():
    from vidcorpus import events
    from vidcorpus.config import load_config
    from vidcorpus.schemas import empty_row, rows_to_table
    from vidcorpus.stage import Stage

    class Split(Stage):
        name = "split"

        def process_row(self, row):
            if row["source_id"] == "gone":
                return []
            return [dict(row, clip_id=f"{row['source_id']}-{i}") for i in range(2)]

    class Score(Stage):
        name = "score"

        def process_row(self, row):
            time.sleep(0.01)
            return row

    cfg = load_config(None, [])
    t0 = time.time()
    first = Split(cfg)(rows_to_table([empty_row(source_id="gone")]))  # every shot trimmed away
    assert first.num_rows == 1 and events.is_carrier(first.to_pylist()[0])
    batch = pa.concat_tables([first, rows_to_table([empty_row(source_id="a")])])
    mid = Split(cfg)(batch)
    out = Score(cfg)(mid).to_pylist()
    clips = [r for r in out if r["clip_id"]]
    assert [r["clip_id"] for r in clips] == ["a-0", "a-1"]
    for r in clips:  # each clip's chain: the split batch it came from, then the score batch
        chain = decode(r["stage_times"])
        assert [s["stage"] for s in chain] == ["split", "score"]
        split, score = chain
        assert t0 <= split["start"] <= split["end"] <= score["start"] <= score["end"] <= time.time()
        assert (split["rows_in"], split["rows_out"], score["rows_in"], score["rows_out"]) == (1, 2, 2, 2)
        assert score["end"] - score["start"] >= 0.02 and score["gpu"] is None
    (carrier,) = [r for r in out if not r["clip_id"]]
    assert [(s["stage"], s["rows_in"], s["rows_out"]) for s in decode(carrier["stage_times"])] == [("split", 1, 0)]
    stats = StageStats(start=t0)
    stats.add(pa.Table.from_pylist(out))
    got = {r.stage: r for r in stats.finish()}
    assert (got["split"].batches, got["split"].rows_in, got["split"].rows_out) == (2, 2, 2)
    assert (got["score"].batches, got["score"].rows_in) == (1, 2)


PIPELINE = ["download", "probe", "split", "technical", "motion", "clip", "decide", "extract", "caption",
            "caption_align"]  # filter before you encode: extract after decide; captions after dedup


@pytest.mark.slow
def test_the_stages_of_a_real_run_add_up_to_its_wall_time(demo, tmp_path):
    """The demo's pipeline run (Ray, tiny models): every stage's busy + waiting seconds is the run's
    wall time, the rows each stage saw are the rows the catalog holds, and the report draws them."""
    from vidcorpus.catalog.store import Catalog
    from vidcorpus.jobs.report.build import build_report

    summary = demo["summary"]
    with Catalog(demo["config"].catalog_path, read_only=True) as cat:
        rows = cat.query_dicts("SELECT * FROM stage_stats WHERE run_id = ? ORDER BY step", [summary.run_id])
        spans = cat.query_dicts("SELECT * FROM stage_intervals WHERE run_id = ?", [summary.run_id])
        run = cat.query_dicts("SELECT epoch(finished_at) - epoch(started_at) AS s FROM runs WHERE run_id = ?",
                              [summary.run_id])[0]
        sources = cat.query_dicts("SELECT count(*) AS n FROM sources WHERE run_id = ?", [summary.run_id])[0]["n"]
        captioned = cat.query_dicts("SELECT count(*) AS n FROM captions WHERE run_id = ? AND kind = 'long'",
                                    [summary.run_id])[0]["n"]
    names = [r["stage"] for r in rows]
    assert names[0] == "start" and [n for n in names if n in PIPELINE] == PIPELINE
    assert {"commit", "shards"} <= set(names[len(PIPELINE) + 1:])
    by = {r["stage"]: r for r in rows}
    wall = rows[0]["wall_s"]
    # the run's wall time, measured by the driver around the whole run (and by the catalog's run row)
    assert abs(wall - summary.seconds) <= max(1.0, 0.02 * summary.seconds)
    assert run["s"] - 1.0 <= wall <= summary.seconds + 1.0
    for r in rows:
        assert r["wall_s"] == wall
        assert r["busy_s"] + r["wait_input_s"] + r["wait_output_s"] == pytest.approx(wall, rel=1e-6), r
        assert min(r["busy_s"], r["wait_input_s"], r["wait_output_s"]) >= 0
        assert r["work_s"] >= r["busy_s"] - 1e-6 and r["workers"] >= 1
        assert r["gpu_busy_share"] is None  # a CPU run
        mine = [s for s in spans if s["stage"] == r["stage"] and s["state"] == "busy"]
        assert all(0 <= s["start_s"] < s["end_s"] <= wall + 1e-6 for s in mine)
        assert sum(s["end_s"] - s["start_s"] for s in mine) >= r["busy_s"] - 1e-6
    for name in PIPELINE:
        assert by[name]["busy_s"] > 0 and by[name]["batches"] >= 1, name
    assert by["clip"]["setup_s"] > 0 and by["caption"]["setup_s"] > 0  # models load inside the first batch
    # rows: every source of the run entered the first stage, every committed row left the last
    # (the sources this run processed: a later test's run over the shared demo may retry one, so the
    # sources table's run_id is not this run's for all of them)
    assert sources <= by["download"]["rows_in"] == summary.sources_seen - summary.sources_skipped
    assert by["split"]["rows_out"] == by["extract"]["rows_in"]
    # the stream ends at extraction; the caption actors get the kept clips after dedup, committed apart
    assert by["extract"]["rows_out"] == summary.rows_committed
    assert by["caption"]["rows_in"] == by["caption_align"]["rows_out"] == captioned > 0
    assert by["commit"]["rows_in"] == summary.rows_committed + captioned
    assert [r["stage"] for r in rows if r["bound_by"]] == [max(rows, key=lambda r: r["busy_s"])["stage"]]

    report = build_report(demo["config"].catalog_path, tmp_path / "report", run=summary.run_id)
    page = report.index.read_text()
    assert "Where the time goes" in page and "bound by: " in page
    assert (tmp_path / "report" / "plots" / "stage_timeline.png").stat().st_size > 0


def test_gpu_meter_averages_nvml_readings_over_the_batch_and_says_none_without_nvml(monkeypatch):
    """The meter's arithmetic and its fallback, with NVML's reading replaced (no GPU here)."""
    import torch

    from vidcorpus import gpu_busy

    readings = iter([40.0, 60.0] * 100)
    monkeypatch.setattr(torch.cuda, "utilization", lambda index=None: next(readings))
    monkeypatch.setattr(gpu_busy, "_unavailable", False)
    t0 = time.time()
    with gpu_busy.GpuBusyMeter(0, interval_s=0.01) as meter:
        time.sleep(0.2)
    elapsed = time.time() - t0  # the batch's duration as seen from outside (longer on a busy machine)
    assert len(meter.samples) >= 4
    mean = sum(meter.samples) / len(meter.samples)
    assert 40.0 <= mean <= 60.0 and 0.2 * mean / 100 <= meter.busy_s <= elapsed * mean / 100

    def no_nvml(index=None):
        raise ModuleNotFoundError("pynvml")

    monkeypatch.setattr(torch.cuda, "utilization", no_nvml)
    with gpu_busy.GpuBusyMeter(0, interval_s=0.01) as meter:
        time.sleep(0.05)
    assert meter.busy_s is None and gpu_busy._unavailable  # measured nothing: says so, and stops trying
    assert gpu_busy.current_device() is None  # this process has no CUDA device (or gave up on NVML)
