"""The scorers' source decode leaves out the non-reference frames nobody reads (issue 22, lever 2):
the frames handed out are those of a full decode at the same indices, fewer frames are decoded,
and the scores do not change."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from test_containers import _encode as encode_video  # libx264 at its defaults, 24 fps
from vidcorpus.config import load_config
from vidcorpus.frame_index import FrameCursor, index_of
from vidcorpus.frame_seek import to_rgb
from vidcorpus.ids import source_id
from vidcorpus.media import probe_video
from vidcorpus.schemas import empty_row, rows_to_table

FPS = 24  # test_containers' rate
SHOT_FRAMES = 40


def _frames() -> np.ndarray:
    """Four shots of scrolling random texture."""
    rng = np.random.default_rng(3)
    shots = []
    for _shot in range(4):
        tex = np.kron(rng.integers(0, 256, (9, 20, 3), dtype=np.uint8), np.ones((16, 16, 1), np.uint8))
        shots += [np.roll(tex, 3 * t, axis=1)[:144, :256] for t in range(SHOT_FRAMES)]
    return np.stack(shots)


def _encode(path: Path, fmt: str = "mp4") -> str:
    """libx264 with its default settings (preset medium: three B-frames, b-pyramid on; one keyframe)."""
    return encode_video(path, fmt, frames=_frames())


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> str:
    return _encode(tmp_path_factory.mktemp("skip") / "bframes.mp4")


@pytest.fixture(scope="module")
def keyed(tmp_path_factory) -> str:
    """The same frames with a keyframe at each shot (``media.encode_video``: x264 veryfast, B-frames
    and b-pyramid on), so that a cursor started mid-file seeks."""
    from vidcorpus.media import encode_video as encode_with_keyframes

    path = str(tmp_path_factory.mktemp("skip") / "keyed.mp4")
    encode_with_keyframes(_frames(), FPS, path, keyframes=range(0, 4 * SHOT_FRAMES, SHOT_FRAMES))
    assert index_of(path).keyframes == (0, 40, 80, 120)
    return path


def _non_reference_packets(path: str) -> int:
    """Packets whose every NAL unit has nal_ref_idc 0 (length-prefixed H.264 as MP4 stores it)."""
    count = 0
    with av.open(path) as c:
        stream = c.streams.video[0]
        size = (stream.codec_context.extradata[4] & 3) + 1
        for p in c.demux(stream):
            data, refs, i = bytes(p), [], 0
            while i + size < len(data):
                n = int.from_bytes(data[i:i + size], "big")
                refs.append(data[i + size] >> 5 & 3)
                i += size + n
            count += bool(refs) and not any(refs)
    return count


def _decode_all(path: str) -> list[np.ndarray]:
    with av.open(path) as c:
        return [to_rgb(f) for f in c.decode(video=0)]


def _split(cfg, path: str) -> list[dict]:
    from vidcorpus.ingest.split_stage import SplitStage

    row = empty_row(source_id=source_id(path), uri=path, media_type="video", source_path=path, **probe_video(path))
    return sorted(SplitStage(cfg)(rows_to_table([row])).to_pylist(), key=lambda r: r["first_frame"])


def _technical_frames(cfg, rows, monkeypatch, batches: int = 1) -> tuple[dict, int]:
    """{(clip_id, j): RGB} of every frame the technical stage scored, and the frames decoded."""
    from vidcorpus import source_frames
    from vidcorpus.filters.technical import TechnicalStage

    seen: dict = {}
    real = getattr(TechnicalStage._score_source_frames, "__wrapped__", TechnicalStage._score_source_frames)

    def recording(self, row, frames):
        seen.update({(row["clip_id"], j): f for j, f in frames.items()})
        return real(self, row, frames)

    recording.__wrapped__ = real  # a second call records into its own dict only
    monkeypatch.setattr(TechnicalStage, "_score_source_frames", recording)
    source_frames._CURSOR.clear()
    stage = TechnicalStage(cfg)
    step = -(-len(rows) // batches)
    for k in range(0, len(rows), step):  # later batches continue the same decoder
        out = stage(rows_to_table(rows[k:k + step])).to_pylist()
        assert not any(r["error_class"] for r in out), [r["error"] for r in out]
    return seen, source_frames.frames_decoded()


@pytest.mark.parametrize("source", ["video", "keyed"])
def test_the_test_sources_have_non_reference_frames(source, request):
    assert _non_reference_packets(request.getfixturevalue(source)) >= 40  # b-pyramid's leaf B-frames: 1 in 3 or more


@pytest.mark.parametrize("source,batches", [("video", 1), ("video", 4), ("keyed", 4)])
def test_technical_stage_gets_full_decode_frames_and_decodes_fewer(tmp_path, monkeypatch, request, source, batches):
    video = request.getfixturevalue(source)
    cfg = load_config(None, [], workdir=str(tmp_path / "w"))
    rows = _split(cfg, video)
    assert len(rows) == 4
    full = _decode_all(video)
    seen, decoded = _technical_frames(cfg, rows, monkeypatch, batches)
    first = {r["clip_id"]: r["first_frame"] for r in rows}
    assert len(seen) > 4 * 8  # every clip's samples, motion pairs and stills
    for (clip, j), frame in seen.items():
        assert np.array_equal(frame, full[first[clip] + j]), (clip, j)
    # every frame a scorer asked for came (the last clip's last frames included)
    from vidcorpus.filters.motion_frames import motion_frame_indices
    from vidcorpus.filters.source_scoring import still_indices, technical_indices
    from vidcorpus.source_frames import with_geometry

    for r in rows:
        g = with_geometry(r, cfg.split)
        asked = {*technical_indices(g, cfg), *still_indices(g, cfg), *motion_frame_indices(g, cfg)}
        assert {j for c, j in seen if c == r["clip_id"]} == asked
    # the decoder left frames out: fewer decoded than the source has
    assert decoded < len(full) - 20, (decoded, len(full))

    off = load_config(None, ["filters.skip_unread_frames=false"], workdir=str(tmp_path / "off"))
    seen_off, decoded_off = _technical_frames(off, rows, monkeypatch, batches)
    assert decoded_off == len(full)
    assert seen_off.keys() == seen.keys()


def _scores(rows: list[dict]) -> dict:
    return {r["clip_id"]: sorted((s["scorer"], s["model"], s["value"]) for s in r["scores"]) for r in rows}


def test_technical_and_motion_scores_unchanged_by_skipping(tmp_path, video):
    from vidcorpus import source_frames
    from vidcorpus.filters.motion import MotionStage
    from vidcorpus.filters.technical import TechnicalStage

    out = {}
    for name, sets in (("off", ["filters.skip_unread_frames=false"]), ("on", [])):
        cfg = load_config(None, sets, workdir=str(tmp_path / name))
        rows = _split(cfg, video)
        source_frames._CURSOR.clear()
        scored = MotionStage(cfg)(TechnicalStage(cfg)(rows_to_table(rows))).to_pylist()
        assert all(not r["error_class"] and r["extract_mode"] == "deferred" for r in scored)
        out[name] = _scores(scored)
        # the motion stage alone (no hand-over from the technical stage) decodes with skipping too
        source_frames._CURSOR.clear()
        alone = MotionStage(cfg)(rows_to_table(rows)).to_pylist()
        motion = {c: [s for s in v if s[1] == "farneback"] for c, v in out[name].items()}
        assert _scores(alone) == motion
    assert out["on"] == out["off"]
    assert all(any(s[0] == "motion" for s in v) and any(s[0] == "blur" for s in v) for v in out["on"].values())


def _take_in_calls(path: str, wanted: list[int], calls: list[tuple[int, int]], start: int = 0
                   ) -> tuple[dict, int, int]:
    """{wanted frame: RGB} from one cursor over consecutive calls, the frames it decoded, and the
    frame its decoding started at."""
    cursor = FrameCursor(path, start, index_of(path) if start > 0 else None)
    began, got = cursor.next, {}
    try:
        for first, last in calls:
            for i, frame in cursor.take(first, last, set(wanted)):
                if i in wanted:
                    assert i not in got
                    got[i] = to_rgb(frame)
        return got, cursor.decoded, began
    finally:
        cursor.close()


@pytest.mark.parametrize("source", ["video", "keyed"])
def test_cursor_calls_in_a_row_and_mid_file_starts_give_full_decode_frames(source, request):
    video = request.getfixturevalue(source)
    full = _decode_all(video)
    n = len(full)
    rng = np.random.default_rng(0)
    for trial in range(12):
        wanted = sorted(int(i) for i in rng.choice(n, size=12, replace=False))
        # consecutive calls whose ends are often unwanted (skippable) frames
        ends = sorted({int(e) for e in rng.choice(n - 1, size=3, replace=False)}) + [n - 1]
        calls = list(zip([0] + [e + 1 for e in ends[:-1]], ends))
        got, decoded, _ = _take_in_calls(video, wanted, calls)
        assert sorted(got) == wanted, (trial, calls)
        assert all(np.array_equal(got[i], full[i]) for i in wanted)
        assert decoded < n
        # a cursor opened at a later frame (it seeks to the keyframe before it when there is one)
        start = wanted[len(wanted) // 2]
        later = [w for w in wanted if w >= start]
        got, _, began = _take_in_calls(video, later, [(start, n - 1)], start=start)
        assert sorted(got) == later and all(np.array_equal(got[i], full[i]) for i in later)
        assert began == (start // SHOT_FRAMES * SHOT_FRAMES if source == "keyed" else 0)  # seeked


def test_a_source_whose_packets_lack_pts_is_decoded_in_full(tmp_path):
    from vidcorpus import source_frames
    from vidcorpus.source_frames import stream_clip_frames

    raw = _encode(tmp_path / "raw.h264", fmt="h264")
    assert index_of(raw) is None  # raw H.264: no timestamps to number skipped frames by
    full = _decode_all(raw)
    row = dict(clip_id="raw", source_path=raw, first_frame=0, last_frame=len(full) - 1, fps=FPS, width=256, height=144)
    wanted = [0, 7, 50, 101, len(full) - 1]
    source_frames._CURSOR.clear()
    ((_, got),) = list(stream_clip_frames([row], {"raw": wanted}))
    assert sorted(got) == wanted and all(np.array_equal(got[j], full[j]) for j in wanted)
    assert source_frames.frames_decoded() == len(full)


def test_an_index_that_misses_a_frame_falls_back_to_a_full_decode_when_skipping(tmp_path, video):
    import shutil

    from vidcorpus.frame_index import FrameIndex, build_index

    path = str(tmp_path / "copy.mp4")  # its own path: the fallback makes the process forget its index
    shutil.copy(video, path)
    full = _decode_all(path)
    index = build_index(path)
    lying = FrameIndex(index.pts[:60] + index.pts[61:], index.keyframes)  # frame 60 unknown
    wanted = {10, 59, 61, 100}
    cursor = FrameCursor(path, 0, lying)
    try:
        got = {i: to_rgb(f) for i, f in cursor.take(0, 120, wanted) if i in wanted}
    finally:
        cursor.close()
    assert sorted(got) == sorted(wanted) and all(np.array_equal(got[i], full[i]) for i in wanted)
    assert index_of(path) is None


def _extracted(cfg, rows: list[dict]) -> tuple[dict[str, bytes], int]:
    """{clip_id: mp4 bytes} of a precise extraction of ``rows`` in one stage call, and the frames decoded."""
    from vidcorpus import source_frames
    from vidcorpus.ingest.extract import ExtractStage
    from vidcorpus.storage import read_bytes

    source_frames._CURSOR.clear()
    out = ExtractStage(cfg)(rows_to_table(rows)).to_pylist()
    assert all(not r["error_class"] and r["extract_mode"] == "precise" for r in out), out
    return {r["clip_id"]: read_bytes(r["clip_path"]) for r in out}, source_frames.frames_decoded()


@pytest.mark.parametrize("source", ["video", "keyed"])
def test_precise_extraction_skips_the_frames_between_kept_clips(tmp_path, monkeypatch, request, source):
    """Clips 0 and 3 kept, 1 and 2 dropped: the dropped shots' non-reference frames are not decoded
    (with keyframes, the decoder seeks past them), and the clips are byte for byte those of a full decode."""
    from vidcorpus.ingest import extract

    video = request.getfixturevalue(source)
    cfg = load_config(None, ["split.extract_mode=precise"], workdir=str(tmp_path / "w"))
    rows = _split(cfg, video)
    kept = [rows[0], rows[3]]
    clips, decoded = _extracted(cfg, kept)

    real = extract.decode_source_range
    monkeypatch.setattr(extract, "decode_source_range",
                        lambda path, first, last, wanted=None, threads=1, nvdec=False:
                        real(path, first, last, None, threads, nvdec))
    full_clips, full_decoded = _extracted(cfg, kept)
    assert clips.keys() == full_clips.keys() == {r["clip_id"] for r in kept}
    assert all(clips[c] == full_clips[c] for c in clips)
    if source == "video":  # one keyframe: one decode through the gap, its non-reference frames left out
        assert full_decoded == 4 * SHOT_FRAMES
        assert decoded <= 4 * SHOT_FRAMES - 20, decoded
    else:  # a keyframe at each shot: the decoder seeks past the gap (the count is the last cursor's)
        assert decoded == full_decoded == SHOT_FRAMES


def test_precise_extraction_of_overlapping_and_adjacent_clips_matches_each_alone(tmp_path, video):
    """Rows that overlap (0-49, 30-60) or touch (61-79) are one decoded range: every clip comes out as
    it does when extracted alone, from a cursor of its own."""
    from vidcorpus.ids import clip_id

    cfg = load_config(None, ["split.extract_mode=precise"], workdir=str(tmp_path / "w"))
    base = _split(cfg, video)[0]
    rows = [dict(base, clip_id=clip_id(base["source_id"], a, b), first_frame=a, last_frame=b, start_s=a / FPS,
                 end_s=(b + 1) / FPS) for a, b in ((0, 49), (30, 60), (61, 79), (120, 150))]
    together, _ = _extracted(cfg, rows)
    alone = {}
    for r in rows:
        alone.update(_extracted(cfg, [r])[0])
    assert together.keys() == alone.keys() == {r["clip_id"] for r in rows}
    assert all(together[c] == alone[c] for c in together)


def test_the_source_decoder_takes_the_configured_threads_and_gives_the_same_scores_and_clips(tmp_path, monkeypatch,
                                                                                              video):
    """filters.source_decode_threads reaches the decoder that the technical and motion scorers and
    precise extraction read the source through (default: one slice thread, where FFmpeg's own
    choice, frame threads, costs 18 to 29% more CPU a frame); the scores and the clips' bytes are
    those of FFmpeg's own choice (0)."""
    from vidcorpus import source_frames
    from vidcorpus.filters.motion import MotionStage
    from vidcorpus.filters.technical import TechnicalStage

    opened: list[tuple[str, int]] = []  # each source decoder the stages open: (thread type, threads)
    real_open = FrameCursor._open

    def recording(self, start):
        real_open(self, start)
        cc = self.container.streams.video[0].codec_context
        opened.append((cc.thread_type.name, cc.thread_count))

    monkeypatch.setattr(FrameCursor, "_open", recording)
    out = {}
    for threads in (1, 0):
        cfg = load_config(None, [f"filters.source_decode_threads={threads}", "split.extract_mode=precise"],
                          workdir=str(tmp_path / f"t{threads}"))
        rows = _split(cfg, video)  # (no source cursor: the splitter's own decoder)
        opened.clear()
        source_frames._CURSOR.clear()
        scored = MotionStage(cfg)(TechnicalStage(cfg)(rows_to_table(rows))).to_pylist()
        by_scorers = set(opened)
        opened.clear()
        clips, _ = _extracted(cfg, [rows[0], rows[2]])
        assert by_scorers and opened and all(not r["error_class"] for r in scored)
        out[threads] = (_scores(scored), clips, by_scorers, set(opened))
    assert out[1][2] == out[1][3] == {("SLICE", 1)}  # (set before the codec opens: 0 is FFmpeg's choice)
    assert out[0][2] == out[0][3] == {("AUTO", 0)}
    assert out[1][0] == out[0][0] and out[1][1] == out[0][1]
