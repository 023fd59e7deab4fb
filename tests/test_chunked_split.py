"""A long source processed in pieces: decoding from any frame (the packet index) and shot detection in
parallel chunks give exactly what one decode from the start gives."""

from __future__ import annotations

import av
import numpy as np
import pytest

from vidcorpus.config import load_config
from vidcorpus.frame_index import FrameCursor, FrameIndex, build_index, index_of
from vidcorpus.frame_seek import to_rgb
from vidcorpus.ids import source_id
from vidcorpus.ingest.extract import ExtractStage
from vidcorpus.ingest.split_stage import SplitStage
from vidcorpus.media import probe_video
from vidcorpus.schemas import empty_row, rows_to_table

FPS = 24


def _edited(path, seconds: float, cuts_s: list[float], gop: int = 40, seed: int = 0) -> str:
    """Shots of moving random texture, hard cuts at ``cuts_s``, B-frames, a keyframe every ``gop``
    frames (and at cuts, where x264 puts them), so keyframes fall inside shots too."""
    rng = np.random.default_rng(seed)
    bounds = [0, *[round(c * FPS) for c in cuts_s], round(seconds * FPS)]
    with av.open(str(path), mode="w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = 160, 96, "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "20", "g": str(gop), "bf": "2"}
        for a, b in zip(bounds, bounds[1:]):
            tex = np.kron(rng.integers(0, 256, (6, 20, 3), dtype=np.uint8), np.ones((16, 16, 1), np.uint8))
            for t in range(b - a):
                arr = np.ascontiguousarray(np.roll(tex, 3 * t % 320, axis=1)[:, :160])
                for p in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                    c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


def _all_frames(path: str) -> list[np.ndarray]:
    with av.open(path) as c:
        return [to_rgb(f) for f in c.decode(video=0)]


def test_a_cursor_started_anywhere_hands_out_the_frames_of_a_decode_from_the_start(tmp_path):
    path = _edited(tmp_path / "v.mp4", 8, [3.0, 5.5])
    frames = _all_frames(path)
    index = build_index(path)
    assert index is not None and index.n_frames == len(frames) and len(index.keyframes) > 3
    for start in (0, 1, 41, 79, 80, 150, len(frames) - 1):
        cursor = FrameCursor(path, start, index)
        assert cursor.next <= start and cursor.seeking == (index.keyframe_at_or_before(start) > 0)
        got = list(cursor.take(start, start + 30))
        cursor.close()
        assert [i for i, _ in got] == list(range(start, min(start + 31, len(frames))))
        assert all(np.array_equal(to_rgb(f), frames[i]) for i, f in got), start


def test_an_index_that_misses_a_frame_falls_back_to_counting_from_the_start(tmp_path):
    path = _edited(tmp_path / "v.mp4", 6, [2.5])
    frames = _all_frames(path)
    index = build_index(path)
    key = index.keyframes[2]
    lying = FrameIndex(index.pts[:key + 5] + index.pts[key + 6:], index.keyframes)  # frame key+5 unknown
    cursor = FrameCursor(path, key + 1, lying)
    assert cursor.seeking
    got = list(cursor.take(key + 1, key + 20))
    cursor.close()
    assert [i for i, _ in got] == list(range(key + 1, key + 21))
    assert all(np.array_equal(to_rgb(f), frames[i]) for i, f in got)
    assert index_of(path) is None  # no later reader of this source in the process seeks in it again


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_a_long_source_split_in_parallel_chunks_has_the_shots_of_one_pass(tmp_path, ray_local):
    # cuts on both sides of the chunk bounds (5 chunks of 4.8 s over 24 s), one right at a bound
    path = _edited(tmp_path / "long.mp4", 24, [2.0, 4.7, 4.8, 7.0, 9.55, 12.0, 14.4, 15.2, 19.1, 21.0], seed=3)
    row = empty_row(source_id=source_id(path), uri=path, media_type="video", source_path=path, **probe_video(path))
    work = str(tmp_path / "w")
    whole = SplitStage(load_config(None, ["split.chunk_seconds=0"], workdir=work))(rows_to_table([row])).to_pylist()
    chunked_cfg = load_config(None, ["split.chunk_seconds=4"], workdir=work)
    chunked = SplitStage(chunked_cfg)(rows_to_table([row])).to_pylist()  # Ray is up: the chunks are Ray tasks
    key = lambda r: (r["first_frame"], r["last_frame"])  # noqa: E731
    assert sorted(map(key, chunked)) == sorted(map(key, whole)) and len(whole) >= 9
    assert [r["dropped"] for r in chunked] == [r["dropped"] for r in whole]
    assert {r["split_frames"] for r in chunked} == {24 * FPS}
    # extraction of a late clip seeks to the keyframe before it: the same frames as a decode from 0
    late = max(chunked, key=lambda r: r["first_frame"])
    out = ExtractStage(chunked_cfg)(rows_to_table([late])).to_pylist()[0]
    src = _all_frames(path)
    clip = [f for f in _all_frames(out["clip_path"])]
    assert len(clip) == late["last_frame"] - late["first_frame"] + 1
    diff = np.abs(clip[0].astype(int) - src[late["first_frame"]].astype(int)).mean()
    wrong = np.abs(clip[0].astype(int) - src[late["first_frame"] - 1].astype(int)).mean()
    assert diff < 4 < wrong, (diff, wrong)  # H.264 coding noise, not the neighbouring frame
