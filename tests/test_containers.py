"""Containers beyond mp4 (issue 23): sources whose first timestamp is not 0 (MPEG-TS, AVI), the
containers a folder input picks up, and what the downloader recognises by their bytes.

Frame indices are decode-order positions whatever the container's timestamps: a clip's first and
last frames are the source's frames at those positions. Videos are made here with PyAV.
"""

from __future__ import annotations

import av
import numpy as np
import pytest

from vidcorpus.config import SplitConfig, load_config
from vidcorpus.ids import source_id
from vidcorpus.ingest.extract import ExtractStage
from vidcorpus.ingest.split import detect_segments
from vidcorpus.ingest.split_stage import SplitStage
from vidcorpus.media import decode_indices, read_frames, sniff_media_type
from vidcorpus.schemas import empty_row, rows_to_table
from vidcorpus.synth import _shot

FPS, N, CUT = 24, 48, 24


def _encode(path, fmt: str | None, codec: str = "libx264", frames: np.ndarray | None = None, **options) -> str:
    frames = np.concatenate([_shot(0, CUT, 3), _shot(1, N - CUT, 5)]) if frames is None else frames
    with av.open(str(path), mode="w", format=fmt, options=options) as c:
        s = c.add_stream(codec, rate=FPS)
        s.height, s.width = frames.shape[1:3]
        s.pix_fmt = "yuv420p"
        for arr in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


def _first_pts(path: str) -> int:
    with av.open(path) as c:
        return next(c.decode(video=0)).pts


@pytest.fixture(scope="module")
def offset_sources(tmp_path_factory) -> dict[str, str]:
    """The same two shots (cut at frame 24) in containers whose first frame's pts is not 0, and in mkv."""
    d = tmp_path_factory.mktemp("containers")
    return {"ts": _encode(d / "two.ts", "mpegts"), "avi": _encode(d / "two.avi", "avi"),
            "mkv": _encode(d / "two.mkv", "matroska"), "m2ts": _encode(d / "two.m2ts", "mpegts", mpegts_m2ts_mode="1")}


def test_the_fixtures_first_timestamps_are_not_zero(offset_sources):
    assert _first_pts(offset_sources["ts"]) != 0 and _first_pts(offset_sources["avi"]) != 0


@pytest.mark.parametrize("kind", ["ts", "avi", "mkv", "m2ts"])
def test_cuts_are_decode_order_positions_whatever_the_first_pts(offset_sources, kind):
    found = detect_segments(offset_sources[kind], SplitConfig(), fps=FPS)
    assert found.shots == [(0, CUT - 1), (CUT, N - 1)] and found.n_frames == N and found.dropped == []


def _close(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize("kind", ["ts", "avi", "mkv"])
def test_extracted_clips_start_and_end_on_the_sources_frames(tmp_path, offset_sources, kind):
    """Each clip's first and last frames are the source's frames at its range's ends (not a neighbour:
    the shots differ, so a clip one frame late would end with the other shot's first frame)."""
    path = offset_sources[kind]
    cfg = load_config(None, [], workdir=str(tmp_path / "work"))
    row = empty_row(source_id=source_id(path), uri=path, media_type="video", source_path=path, fps=float(FPS))
    table = rows_to_table([row])
    for stage in (SplitStage, ExtractStage):
        table = stage(cfg)(table)
    clips = sorted(table.to_pylist(), key=lambda r: r["first_frame"])
    assert [(c["first_frame"], c["last_frame"], c["error_class"]) for c in clips] == [
        (0, CUT - 1, None), (CUT, N - 1, None)]
    assert [c["clip_frames"] for c in clips] == [CUT, N - CUT] and all(c["split_frames"] == N for c in clips)
    source = decode_indices(path, range(N))
    assert len(source) == N
    for c in clips:
        got = read_frames(c["clip_path"])
        assert len(got) == c["last_frame"] - c["first_frame"] + 1
        for clip_frame, at in ((got[0], c["first_frame"]), (got[-1], c["last_frame"])):
            near = {i: _close(clip_frame, source[i]) for i in (at - 1, at, at + 1) if i in source}
            assert min(near, key=near.get) == at, (kind, c["clip_id"], near)
            assert near[at] < 8  # x264 at crf 20: a few levels off, not another picture


CONTAINERS = [("ts", "mpegts", "libx264", {}), ("m2ts", "mpegts", "libx264", {"mpegts_m2ts_mode": "1"}),
              ("mpg", "mpeg", "mpeg2video", {}), ("mxf", "mxf", "mpeg2video", {}), ("wmv", "asf", "wmv2", {}),
              ("flv", "flv", "flv", {}), ("mov", "mov", "libx264", {}), ("mkv", "matroska", "libx264", {}),
              ("webm", "webm", "libvpx-vp9", {}), ("avi", "avi", "mpeg4", {}), ("m4v", "mp4", "libx264", {})]


@pytest.fixture(scope="module")
def container_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("folder")
    frames = np.concatenate([_shot(0, 12, 3)])
    for ext, fmt, codec, opts in CONTAINERS:
        _encode(d / f"clip.{ext}", fmt, codec, frames=frames, **opts)
    (d / "notes.txt.bak").write_text("not media")
    return d


def test_a_folder_input_picks_up_the_usual_containers_and_each_is_recognised_and_probed(container_folder, tmp_path):
    from vidcorpus.ingest.download import DownloadStage
    from vidcorpus.ingest.probe import ProbeStage
    from vidcorpus.ingest.sources import read_inputs

    rows = read_inputs([str(container_folder)])
    assert sorted(r["uri"].rsplit(".", 1)[1] for r in rows) == sorted(ext for ext, *_ in CONTAINERS)
    cfg = load_config(None, [], workdir=str(tmp_path / "work"))
    table = rows_to_table(rows)
    for stage in (DownloadStage, ProbeStage):
        table = stage(cfg)(table)
    out = table.to_pylist()
    assert [(r["uri"], r["error"]) for r in out if r["error_class"]] == []
    assert {r["media_type"] for r in out} == {"video"} and all(r["width"] == 320 for r in out), out


@pytest.mark.parametrize("ext", [e for e, *_ in CONTAINERS])
def test_the_downloader_recognises_each_container_by_its_bytes(container_folder, ext):
    head = (container_folder / f"clip.{ext}").read_bytes()[:400]
    assert sniff_media_type(head) is not None and sniff_media_type(head)[0] == "video"


def test_bytes_that_merely_start_like_a_transport_stream_are_not_media():
    assert sniff_media_type(b"G" + b"x" * 399) is None  # one sync byte is not a stream
