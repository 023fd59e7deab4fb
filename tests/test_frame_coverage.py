"""Every frame accounted for (issue 21, case 6): clips and dropped segments with reasons cover each source.

The videos are generated here with PyAV, as in test_split_extract.py.
"""

from __future__ import annotations

import random

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from vidcorpus.catalog.coverage import uncovered_frames
from vidcorpus.catalog.store import Catalog
from vidcorpus.config import SplitConfig, load_config
from vidcorpus.ids import source_id
from vidcorpus.ingest.extract import ExtractStage
from vidcorpus.ingest.segments import DroppedSegment, ShotSplit, uncovered
from vidcorpus.ingest.split import detect_segments
from vidcorpus.ingest.split_stage import SplitStage
from vidcorpus.media import probe_video
from vidcorpus.schemas import empty_row, rows_to_table
from vidcorpus.synth import _shot

FPS = 24
W, H = 320, 192


def _encode(path, frames: np.ndarray) -> str:
    with av.open(str(path), mode="w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "23"}
        for arr in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


def _moving_stripes(n: int, period: int = 40, speed: int = 3) -> np.ndarray:
    """Plain grey stripes (a sine across the width) scrolling sideways: its luma histogram shifts on every
    frame, which made PySceneDetect's histogram detector cut every third of a second."""
    xs = np.arange(W)
    rows = [127.5 + 127 * np.sin(2 * np.pi * (xs + speed * t) / period) for t in range(n)]
    return np.stack([np.broadcast_to(r[None, :, None], (H, W, 3)) for r in rows]).astype(np.uint8)


@pytest.fixture(scope="module")
def two_shots(tmp_path_factory) -> str:
    """96 frames, one hard cut at frame 48: moving shapes, then plain moving stripes."""
    frames = np.concatenate([_shot(0, 48, 3), _moving_stripes(48)])
    return _encode(tmp_path_factory.mktemp("media") / "two_shots.mp4", frames)


def _cfg(tmp_path, *overrides):
    return load_config(None, list(overrides), workdir=str(tmp_path / "work"))


def _split_and_extract(cfg, path: str) -> list[dict]:
    row = empty_row(source_id=source_id(path), uri=path, media_type="video", source_path=path, **probe_video(path))
    table = rows_to_table([row])
    for stage in (SplitStage, ExtractStage):
        table = stage(cfg)(table)
    return sorted(table.to_pylist(), key=lambda r: r["first_frame"])


def _commit(tmp_path, run_id: str, rows: list[dict], name: str = "c.duckdb") -> Catalog:
    cat = Catalog(tmp_path / name)
    cat.commit_results(run_id, rows)
    cat.mark_sources_done({r["source_id"] for r in rows})
    return cat


def test_two_shot_video_keeps_both_shots_whole(two_shots):
    """Before the fix the stripes 'cut' every 8 frames and the splitter dropped 48-88 as transitions."""
    found = detect_segments(two_shots, SplitConfig(), fps=FPS)
    assert found.shots == [(0, 47), (48, 95)], found
    assert found.dropped == [] and found.n_frames == 96


def test_two_shot_video_clips_cover_every_frame_and_verify_is_clean(tmp_path, two_shots):
    rows = _split_and_extract(_cfg(tmp_path), two_shots)
    assert [(r["first_frame"], r["last_frame"]) for r in rows] == [(0, 47), (48, 95)]
    assert [r["error_class"] for r in rows] == [None, None]
    assert [r["clip_frames"] for r in rows] == [48, 48]
    with _commit(tmp_path, "run1", rows) as cat:
        [src] = cat.query_dicts("SELECT split_frames FROM sources")
        assert src["split_frames"] == 96
        assert cat.query_dicts("SELECT * FROM dropped_segments") == []
        assert cat.verify() == []


def test_trims_are_recorded_as_dropped_rows_and_cover_the_source(tmp_path, two_shots):
    rows = _split_and_extract(_cfg(tmp_path, "split.trim_frames=2"), two_shots)
    assert [(r["first_frame"], r["last_frame"]) for r in rows] == [(2, 45), (50, 93)]
    with _commit(tmp_path, "run1", rows) as cat:
        dropped = cat.query_dicts("SELECT first_frame, last_frame, reason, detector, start_s, end_s "
                                  "FROM dropped_segments ORDER BY first_frame")
        assert [(d["first_frame"], d["last_frame"], d["reason"]) for d in dropped] == [
            (0, 1, "trimmed"), (46, 47, "trimmed"), (48, 49, "trimmed"), (94, 95, "trimmed")]
        assert {d["detector"] for d in dropped} == {"split"}
        assert dropped[1]["start_s"] == pytest.approx(46 / FPS) and dropped[1]["end_s"] == pytest.approx(48 / FPS)
        assert cat.verify() == []


def test_resplitting_a_source_replaces_its_earlier_dropped_rows(tmp_path, two_shots):
    """The same source split again (other settings, another run) leaves no stale segment behind."""
    trimmed = _split_and_extract(_cfg(tmp_path / "a", "split.trim_frames=2"), two_shots)
    whole = _split_and_extract(_cfg(tmp_path / "b"), two_shots)
    with _commit(tmp_path, "run1", trimmed) as cat:
        cat.commit_results("run2", whole)
        assert cat.query_dicts("SELECT * FROM dropped_segments") == []
        cat.commit_results("run2", whole)  # and a rerun of the same batch duplicates nothing
        assert cat.query_dicts("SELECT count(*) AS n FROM clips")[0]["n"] == 4  # run1's trimmed clips stay rows
        assert cat.verify() == []


def test_transition_between_two_cuts_is_a_dropped_row(tmp_path):
    """A 10-frame segment between two cuts (under split.transition_max_seconds) is dropped with its reason."""
    path = _encode(tmp_path / "short.mp4", np.concatenate([_shot(0, 30, 4), _shot(1, 10, 5), _shot(2, 30, 6)]))
    rows = _split_and_extract(_cfg(tmp_path), path)
    assert [(r["first_frame"], r["last_frame"]) for r in rows] == [(0, 29), (40, 69)]
    with _commit(tmp_path, "run1", rows) as cat:
        assert cat.query_dicts("SELECT first_frame, last_frame, reason FROM dropped_segments") == [
            {"first_frame": 30, "last_frame": 39, "reason": "transition"}]
        assert cat.verify() == []


def test_a_detector_can_report_its_own_transition_spans(tmp_path, two_shots, monkeypatch):
    """A detector that sees dissolves itself hands them over as dropped segments with its reason and name."""
    import vidcorpus.ingest.split_stage as split_stage

    found = ShotSplit(shots=[(0, 40), (56, 95)], n_frames=96,
                      dropped=[DroppedSegment(41, 55, "dissolve", "transnetv2")])
    monkeypatch.setattr(split_stage, "detect_segments", lambda *a, **k: found)
    rows = _split_and_extract(_cfg(tmp_path), two_shots)
    with _commit(tmp_path, "run1", rows) as cat:
        assert cat.query_dicts("SELECT first_frame, last_frame, reason, detector FROM dropped_segments") == [
            {"first_frame": 41, "last_frame": 55, "reason": "dissolve", "detector": "transnetv2"}]
        assert cat.verify() == []


def test_verify_reports_frames_in_no_clip_and_no_dropped_row(tmp_path, two_shots):
    """What the bug left behind: frames 48-88 in no row. `catalog verify` names the source and exits 1."""
    from vidcorpus.cli.app import app

    rows = _split_and_extract(_cfg(tmp_path, "split.trim_frames=2"), two_shots)
    with _commit(tmp_path, "run1", rows, name="catalog.duckdb") as cat:
        cat.con.execute("DELETE FROM dropped_segments WHERE first_frame = 46")
        cat.con.execute("DELETE FROM clips WHERE first_frame = 50")
        cat.con.execute("DELETE FROM clips_wide WHERE first_frame = 50")
        sid = rows[0]["source_id"]
        assert uncovered_frames(cat) == {sid: {"n_frames": 96, "gaps": [(46, 47), (50, 93)]}}
    result = CliRunner().invoke(app, ["catalog", "verify", "--catalog", str(tmp_path / "catalog.duckdb")],
                                terminal_width=200)
    assert result.exit_code == 1, result.output
    assert "frames_uncovered" in result.output and sid in result.output
    assert "46 of 96 frames" in result.output and "46-47, 50-93" in result.output


def test_sql_gaps_agree_with_the_python_definition(tmp_path):
    """Random clips and dropped segments (overlapping, touching, past the end): SQL and Python find the same gaps."""
    rng = random.Random(7)
    sources, clips, dropped, expected = [], [], [], {}
    for k in range(40):
        sid = f"{k:016x}"
        n = rng.randint(1, 60)
        ivs = []
        for j in range(rng.randint(0, 6)):
            a = rng.randint(0, n + 3)
            ivs.append((a, a + rng.randint(0, 15)))
        for j, (a, b) in enumerate(ivs):
            if j % 2:
                dropped.append({"source_id": sid, "first_frame": a, "last_frame": b, "reason": "trimmed"})
            else:
                clips.append({"clip_id": f"{sid}-{a:07d}-{b:07d}", "source_id": sid, "media_type": "video",
                              "first_frame": a, "last_frame": b})
        sources.append({"source_id": sid, "media_type": "video", "status": "done", "split_frames": n})
        gaps = uncovered(n, ivs)
        if gaps:
            expected[sid] = {"n_frames": n, "gaps": gaps}
    with Catalog(tmp_path / "c.duckdb") as cat:
        with cat.transaction():
            cat._upsert("sources", sources)
            cat._upsert("clips", clips)
            cat._upsert("dropped_segments", dropped)
        assert uncovered_frames(cat) == expected
        assert len(expected) > 10  # the random set has gaps of every kind to find


def test_uncovered_ranges():
    assert uncovered(10, []) == [(0, 9)]
    assert uncovered(10, [(0, 9)]) == []
    assert uncovered(10, [(0, 3), (2, 5), (8, 12)]) == [(6, 7)]
    assert uncovered(10, [(3, 4)]) == [(0, 2), (5, 9)]
    assert uncovered(96, [(0, 47), (89, 95)]) == [(48, 88)]


def test_footage_report_accounts_for_every_frame(tmp_path, two_shots):
    from vidcorpus.jobs.report.footage import footage_rows

    rows = _split_and_extract(_cfg(tmp_path, "split.trim_frames=2"), two_shots)
    with _commit(tmp_path, "run1", rows) as cat:
        got = footage_rows(cat)
        assert [(r["destination"], r["reason"], r["frames"]) for r in got] == [
            ("undecided clips", "", 88), ("dropped when splitting", "trimmed (split)", 8)]
        assert sum(r["share"] for r in got) == pytest.approx(1.0)
        assert got[1]["hours"] == pytest.approx(8 / FPS / 3600)
        cat.con.execute("DELETE FROM dropped_segments WHERE first_frame = 0")
        lost = footage_rows(cat)[-1]
        assert lost["destination"].startswith("in no row") and lost["frames"] == 2


@pytest.mark.slow
def test_demo_accounts_for_every_frame_of_every_video(demo):
    """Through the whole pipeline: every done video source records its split, and verify finds no gap."""
    from vidcorpus.catalog.coverage import coverage_problems

    with Catalog(demo["config"].catalog_path, read_only=True) as cat:
        sources = cat.query_dicts("SELECT uri, split_frames, n_frames FROM sources "
                                  "WHERE media_type = 'video' AND status = 'done'")
        assert sources and all(s["split_frames"] for s in sources), sources
        assert coverage_problems(cat) == []
    real = demo["truth"].get("real")
    if real:  # bikes.mp4: 250 frames, all in clips (hard cuts only)
        [bikes] = [s for s in sources if s["uri"].endswith("bikes.mp4")]
        assert bikes["split_frames"] == 250


def test_a_source_whose_every_shot_is_trimmed_away_is_done_with_its_frames_accounted_for(tmp_path, model_cache):
    """A 12-frame video under split.trim_frames=7 yields no clip. It used to yield no row at all: never
    recorded, never done, so every rerun split it again. Now it is one done source whose 12 frames are a
    too_short dropped row, and a second `vidcorpus run` processes nothing."""
    import ray

    from vidcorpus.cli.app import app

    media = tmp_path / "media"
    media.mkdir()
    _encode(media / "tiny.mp4", _shot(0, 12, 3))
    args = ["run", str(media), "--workdir", str(tmp_path / "work"), "--no-progress", "--set", "split.trim_frames=7"]
    try:
        first = CliRunner().invoke(app, args, terminal_width=200)
        assert first.exit_code == 0, first.output
        with Catalog(tmp_path / "work" / "catalog.duckdb", read_only=True) as cat:
            assert cat.query_dicts("SELECT status, split_frames FROM sources") == [{"status": "done", "split_frames": 12}]
            assert cat.query_dicts("SELECT first_frame, last_frame, reason FROM dropped_segments") == [
                {"first_frame": 0, "last_frame": 11, "reason": "too_short"}]
            assert cat.query_dicts("SELECT count(*) AS n FROM clips") == [{"n": 0}]
            assert cat.query_dicts("SELECT count(*) AS n FROM failures") == [{"n": 0}]
            assert cat.verify() == []
        second = CliRunner().invoke(app, args, terminal_width=200)
        assert second.exit_code == 0, second.output
        assert "0 sources to process, 1 already done" in second.output
    finally:
        ray.shutdown()
