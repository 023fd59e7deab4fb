"""Shot splitting options and the two clip extraction modes, on media generated here with PyAV."""

from __future__ import annotations

import tracemalloc

import av
import numpy as np
import pytest

from vidcorpus.catalog.store import Catalog
from vidcorpus.config import SplitConfig, load_config
from vidcorpus.ids import source_id
from vidcorpus.ingest.extract import ExtractStage
from vidcorpus.ingest.split import detect_shots, plan_clips, seconds_to_frames
from vidcorpus.ingest.split_stage import SplitStage
from vidcorpus.media import probe_video
from vidcorpus.schemas import empty_row, rows_to_table
from vidcorpus.synth import _shot

FPS = 24
KEYINT = 12  # keyframes at 0, 12, 24, ...: the cuts below do not fall on them


def _encode(path, shots: list[np.ndarray], options: dict | None = None) -> str:
    with av.open(str(path), mode="w") as c:
        s = c.add_stream("libx264", rate=FPS)
        h, w = shots[0].shape[1:3]
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "23", **(options or {})}
        for shot in shots:
            for arr in shot:
                for p in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                    c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


FIXED_GOP = {"x264-params": f"keyint={KEYINT}:min-keyint={KEYINT}:scenecut=0:bframes=2"}


@pytest.fixture(scope="module")
def three_shots(tmp_path_factory):
    """Shots of 30, 36 and 30 frames (cuts at 30 and 66), fixed 12-frame GOP with B-frames."""
    path = tmp_path_factory.mktemp("media") / "three.mp4"
    return _encode(path, [_shot(0, 30, 1), _shot(1, 36, 2), _shot(2, 30, 3)], FIXED_GOP)


@pytest.fixture(scope="module")
def short_middle(tmp_path_factory):
    """Shots of 30, 10 and 30 frames: the middle one is shorter than half a second."""
    path = tmp_path_factory.mktemp("media") / "short.mp4"
    return _encode(path, [_shot(0, 30, 4), _shot(1, 10, 5), _shot(2, 30, 6)])


def _cfg(tmp_path, *overrides):
    return load_config(None, list(overrides), workdir=str(tmp_path / "work"))


def _source_row(path: str) -> dict:
    return empty_row(source_id=source_id(path), uri=path, media_type="video", source_path=path, **probe_video(path))


def _run(cfg, path: str, stages=(SplitStage, ExtractStage)) -> list[dict]:
    table = rows_to_table([_source_row(path)])
    for stage in stages:
        table = stage(cfg)(table)
    return sorted(table.to_pylist(), key=lambda r: r["first_frame"])


def _decode(src) -> list[av.VideoFrame]:
    with av.open(src) as c:
        return list(c.decode(video=0))


@pytest.mark.parametrize("detector", ["content", "adaptive", "histogram", "hash"])
def test_each_detector_finds_the_hard_cuts(three_shots, detector):
    shots = detect_shots(three_shots, SplitConfig(detectors=[detector]))
    starts = [a for a, _ in shots]
    assert starts[0] == 0 and shots[-1][1] == 95
    assert all(any(abs(a - cut) <= 1 for a in starts) for cut in (30, 66)), shots
    if detector != "hash":  # the hash detector also cuts inside the moving-ball shot (see docs/benchmarks.md)
        assert len(shots) == 3, shots


@pytest.mark.parametrize("backend,frame_skip", [("opencv", 0), ("pyav", 1)])
def test_backends_and_frame_skip_report_source_frame_numbers(three_shots, backend, frame_skip):
    shots = detect_shots(three_shots, SplitConfig(backend=backend, frame_skip=frame_skip, downscale=2))
    starts = [a for a, _ in shots]
    assert len(starts) == 3 and starts[0] == 0 and shots[-1][1] == 95
    assert abs(starts[1] - 30) <= frame_skip + 1 and abs(starts[2] - 66) <= frame_skip + 1, shots


def test_min_shot_seconds_merges_short_shots_and_transitions_are_still_dropped(short_middle):
    keep = detect_shots(short_middle, SplitConfig(min_shot_seconds=0.2, transition_max_seconds=0.1))
    assert [a for a, _ in keep] == [0, 30, 40], keep
    merged = detect_shots(short_middle, SplitConfig(min_shot_seconds=1.0, transition_max_seconds=0.1))
    assert len(merged) == 2, merged
    # default transition rule: a segment under half a second between two cuts is dropped
    dropped = detect_shots(short_middle, SplitConfig(min_shot_seconds=0.2))
    assert dropped == [(0, 29), (40, 69)], dropped
    assert seconds_to_frames(0.5, 24) == 12 and seconds_to_frames(0.5, 60) == 30


def test_trim_frames_and_long_shot_windows_change_clip_ranges(tmp_path, three_shots):
    cfg = SplitConfig(trim_frames=3, max_clip_seconds=1.0)
    assert plan_clips([(0, 29), (30, 65), (66, 70)], 24, cfg)[0] == [(3, 26), (33, 47), (48, 62)]  # 66-70 trims away
    rows = _run(_cfg(tmp_path, "split.trim_frames=2"), three_shots, stages=(SplitStage,))
    assert [(r["first_frame"], r["last_frame"]) for r in rows] == [(2, 27), (32, 63), (68, 93)]
    for r in rows:
        assert r["clip_id"].endswith(f"-{r['first_frame']:07d}-{r['last_frame']:07d}")
        assert r["start_s"] == pytest.approx(r["first_frame"] / FPS)


def test_copy_mode_writes_keyframe_aligned_clips_with_their_true_range(tmp_path, three_shots):
    rows = _run(_cfg(tmp_path, "split.extract_mode=copy", "split.copy_max_lead_seconds=null"), three_shots)
    source = [f.to_ndarray(format="rgb24") for f in _decode(three_shots)]
    assert [r["error_class"] for r in rows] == [None] * 3
    for r, (shot_first, shot_last) in zip(rows, [(0, 29), (30, 65), (66, 95)]):
        assert r["extract_mode"] == "copy"
        assert r["first_frame"] % KEYINT == 0 and r["first_frame"] <= shot_first < r["first_frame"] + KEYINT
        assert r["last_frame"] <= shot_last
        assert r["clip_id"].endswith(f"-{r['first_frame']:07d}-{r['last_frame']:07d}")
        frames = _decode(r["clip_path"])
        assert frames[0].key_frame
        assert len(frames) == r["last_frame"] - r["first_frame"] + 1
        # copied packets decode to exactly the source's frames of the recorded range
        for k, frame in enumerate(frames):
            assert np.array_equal(frame.to_ndarray(format="rgb24"), source[r["first_frame"] + k])


def test_copy_mode_reencodes_shots_far_from_a_keyframe(tmp_path, three_shots):
    rows = _run(_cfg(tmp_path, "split.extract_mode=copy", "split.copy_max_lead_seconds=0.1"), three_shots)
    by_mode = {r["first_frame"]: r["extract_mode"] for r in rows}
    assert by_mode[0] == "copy"  # starts on a keyframe
    assert by_mode[30] == "precise" and by_mode[66] == "precise"  # 6 frames after a keyframe > 0.1 s


def test_precise_mode_target_size_and_fps(tmp_path, three_shots):
    rows = _run(_cfg(tmp_path, "split.clip_short_side=96", "split.clip_fps=8"), three_shots)
    assert [r["extract_mode"] for r in rows] == ["precise"] * 3
    for r in rows:
        info = probe_video(r["clip_path"])
        assert (info["width"], info["height"], info["fps"]) == (160, 96, 8)
        n_src = r["last_frame"] - r["first_frame"] + 1
        assert len(_decode(r["clip_path"])) == -(-n_src * 8 // FPS)
        assert (r["clip_width"], r["clip_height"], r["clip_fps"]) == (160, 96, 8)
        assert r["clip_frames"] == len(_decode(r["clip_path"]))
    # the catalog, its buckets and the technical scores describe the clip file, not the source
    from vidcorpus.filters.technical import TechnicalStage
    from vidcorpus.schemas import rows_to_table
    from vidcorpus.shards.buckets import bucket_of

    scored = TechnicalStage(_cfg(tmp_path))(rows_to_table(rows)).to_pylist()
    for r in scored:
        values = {s["scorer"]: s["value"] for s in r["scores"]}
        assert (values["width"], values["height"], values["fps"]) == (160, 96, 8)
    with Catalog(tmp_path / "c.duckdb") as cat:
        cat.commit_results("run1", rows)
        clips = cat.query_dicts("SELECT * FROM clips_wide ORDER BY first_frame")
        [src] = cat.query_dicts("SELECT width, height, fps FROM sources")
    assert [(c["width"], c["height"], c["fps"]) for c in clips] == [(160, 96, 8)] * 3
    assert [c["n_frames"] for c in clips] == [r["clip_frames"] for r in rows]
    assert (src["width"], src["fps"]) != (160, 8)  # the source keeps its own geometry
    assert all(bucket_of(c).startswith("video-tiny-") for c in clips)


def test_catalog_clip_rows_carry_their_extract_mode(tmp_path, three_shots):
    rows = _run(_cfg(tmp_path, "split.extract_mode=copy", "split.copy_max_lead_seconds=0.1"), three_shots)
    with Catalog(tmp_path / "c.duckdb") as cat:
        cat.commit_results("run1", rows)
        got = dict(cat.con.execute("SELECT first_frame, extract_mode FROM clips").fetchall())
        wide = cat.con.execute("SELECT count(*) FROM clips_wide WHERE extract_mode = 'precise'").fetchall()[0][0]
    assert got == {0: "copy", 30: "precise", 66: "precise"} and wide == 2


def _long_video(path, seconds: int, cuts_s: list[int]) -> str:
    """A tiny-resolution video generated and encoded frame by frame (never held whole)."""
    rng = np.random.default_rng(0)
    bounds = [0, *[c * FPS for c in cuts_s], seconds * FPS]
    with av.open(str(path), mode="w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = 160, 96, "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "20"}
        for a, b in zip(bounds, bounds[1:]):
            tex = np.kron(rng.integers(0, 256, (6, 20, 3), dtype=np.uint8), np.ones((16, 16, 1), np.uint8))
            for t in range(b - a):
                arr = np.ascontiguousarray(np.roll(tex, t % 320, axis=1)[:, :160])
                for p in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                    c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


def test_long_video_is_split_and_copied_with_bounded_memory(tmp_path):
    path = _long_video(tmp_path / "long.mp4", 150, [60, 100])  # 3600 frames, 166 MB as raw RGB
    cfg = _cfg(tmp_path, "split.extract_mode=copy", "split.copy_max_lead_seconds=null")
    # a short source first: the lazy imports (torch where installed, scenedetect, cv2) and the thread
    # pools are not the stream's memory, whichever tests ran before this one
    warm = SplitStage(cfg)(rows_to_table([_source_row(_long_video(tmp_path / "warm.mp4", 2, []))]))
    ExtractStage(cfg)(warm)
    tracemalloc.start()
    try:
        split = SplitStage(cfg)(rows_to_table([_source_row(path)]))
        _, peak_split = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        rows = ExtractStage(cfg)(split).to_pylist()
        _, peak_extract = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    raw = 3600 * 160 * 96 * 3
    # streamed, far below the video: one clip's packets at a time (copy); the split's batched reader
    # holds a few batches of up to 16 frames with their HSV planes (ingest/detect_batches.py: about
    # 9 MB of these 160x96 frames, whose detection frames are not shrunk), whatever the length
    assert peak_split < raw / 10 and peak_extract < raw / 20, (peak_split, peak_extract)
    # 60 s, 40 s and 50 s shots cut into windows of at most 20 s: 3 + 2 + 3 clips
    ranges = sorted((r["first_frame"], r["last_frame"]) for r in split.to_pylist())
    starts = [a for a, _ in ranges]
    assert len(ranges) == 8 and ranges[-1][1] == 3599, ranges
    assert any(abs(a - 1440) <= 1 for a in starts) and any(abs(a - 2400) <= 1 for a in starts), starts
    assert all(b - a + 1 <= 20 * FPS for a, b in ranges)
    assert [r["error_class"] for r in rows] == [None] * 8 and {r["extract_mode"] for r in rows} == {"copy"}


@pytest.mark.parametrize("overrides", [(), ("split.clip_fps=8",)])
def test_precise_clips_have_keyframes_where_scorers_sample_and_seeking_decodes_them(tmp_path, three_shots,
                                                                                      overrides):
    from vidcorpus.frame_seek import decode_frames_seeking
    from vidcorpus.media import uniform_indices

    rows = _run(_cfg(tmp_path, *overrides), three_shots)
    for r in rows:
        data = open(r["clip_path"], "rb").read()
        with av.open(r["clip_path"]) as c:
            s = c.streams.video[0]
            keys = sorted(round(float(p.pts * s.time_base * s.average_rate)) for p in c.demux(s)
                          if p.is_keyframe and p.pts is not None)
        wanted = uniform_indices(r["clip_frames"], 3)  # filters.frames_per_clip = 3
        assert set(wanted) <= set(keys), (wanted, keys)
        frames = [f.to_ndarray(format="rgb24") for f in _decode(r["clip_path"])]
        got = decode_frames_seeking(data, wanted)
        assert got is not None and all(np.array_equal(got[i], frames[i]) for i in wanted)
    off = _run(_cfg(tmp_path, "split.keyframes_at_samples=false"), three_shots)
    with av.open(off[0]["clip_path"]) as c:
        assert sum(p.is_keyframe for p in c.demux(video=0)) < 3  # only the first (x264 scene cuts aside)


def test_seeking_decoder_matches_sequential_decoding_on_a_single_keyframe_clip(three_shots):
    from vidcorpus.frame_seek import decode_frames_seeking

    data = open(three_shots, "rb").read()
    frames = [f.to_ndarray(format="rgb24") for f in _decode(three_shots)]
    wanted = [0, 5, 17, len(frames) - 1]
    got = decode_frames_seeking(data, wanted)
    assert got is not None and all(np.array_equal(got[i], frames[i]) for i in wanted)


def test_precise_clips_are_byte_identical_when_extracted_again(tmp_path, three_shots):
    """A rerun must reproduce clips byte for byte (x264's macroblock tree did not, in one process)."""
    import hashlib

    digests = []
    for k in range(3):
        rows = _run(_cfg(tmp_path / f"run{k}"), three_shots)
        digests.append({r["clip_id"]: hashlib.sha256(open(r["clip_path"], "rb").read()).hexdigest() for r in rows})
    assert len(digests[0]) == 3 and digests[0] == digests[1] == digests[2]


@pytest.mark.parametrize("overrides", [("filters.still_size=96",), ("split.clip_fps=8", "filters.still_size=0"),
                                       ("split.clip_fps=8",)])
def test_precise_extraction_writes_stills_of_the_frames_scorers_sample(tmp_path, three_shots, overrides):
    """The stills file holds the K sampled frames of the clip as written (same positions as the
    scorer's uniform_indices), shrunk to filters.still_size, within JPEG and H.264 coding error."""
    import cv2

    from vidcorpus.media import uniform_indices
    from vidcorpus.stills import decode_stills

    cfg = _cfg(tmp_path, *overrides)
    rows = _run(cfg, three_shots)
    assert len(rows) == 3 and not any(r["error_class"] for r in rows)
    if cfg.filters.still_size == 0:
        assert all(r["stills_path"] is None for r in rows)
        assert not list((tmp_path / "work").rglob("*.stills.jpg"))
        return
    for r in rows:
        assert r["stills_path"].endswith(f"{r['clip_id']}.stills.jpg")
        w, h = r["clip_width"], r["clip_height"]
        stills = decode_stills(open(r["stills_path"], "rb").read(), 3, w / h)
        side = min(cfg.filters.still_size, min(w, h))
        assert min(stills[0].shape[:2]) == side
        frames = [f.to_ndarray(format="rgb24") for f in _decode(r["clip_path"])]
        assert len(frames) == r["clip_frames"]
        small = [cv2.resize(f, stills[0].shape[1::-1], interpolation=cv2.INTER_AREA).astype(np.int16) for f in frames]
        for still, i in zip(stills, uniform_indices(r["clip_frames"], 3)):
            err = [np.abs(still.astype(np.int16) - f).mean() for f in small]
            assert err[i] < 4.0, (err[i], r["clip_id"])  # coding error only (blocky textures, crf 20, q95)
            assert int(np.argmin(err)) == i or err[int(np.argmin(err))] == pytest.approx(err[i], abs=0.5)


def test_copy_mode_clips_have_no_stills(tmp_path, three_shots):
    rows = _run(_cfg(tmp_path, "split.extract_mode=copy"), three_shots)
    copied = [r for r in rows if r["extract_mode"] == "copy"]
    assert copied and all(r["stills_path"] is None for r in copied)
