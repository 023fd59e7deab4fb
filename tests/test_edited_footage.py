"""bench/make_edited_footage.py: the ground truth it writes is the video it renders (the GPU-node
benchmark and shot-detection checks read it), and shots never cross a cut of their source."""

from __future__ import annotations

import json
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import make_edited_footage as mef  # noqa: E402


def _source_video(path: Path, colours: list[tuple[int, int, int]], frames_each: int) -> str:
    """A source that is itself edited: flat-colour shots with a moving bar, hard cuts between them."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(25))
        s.width, s.height, s.pix_fmt = 96, 54, "yuv420p"
        s.options = {"crf": "18", "preset": "ultrafast"}
        for colour in colours:
            for k in range(frames_each):
                img = np.full((54, 96, 3), colour, np.uint8)
                img[:, (2 * k) % 90:(2 * k) % 90 + 6] = 255 - np.array(colour, np.uint8)
                c.mux(s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        c.mux(s.encode())
    return str(path)


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    d = tmp_path_factory.mktemp("edited")
    src = _source_video(d / "src.mp4", [(200, 40, 40), (40, 200, 40), (40, 40, 200)], 40)
    out = d / "out"
    summary = mef.main(["--sources", src, "--minutes", "0.4", "--video-minutes", "0.2", "--size", "128x72",
                        "--dissolve-share", "0.5", "--workers", "1", "--seed", "1", "--out", str(out)])
    return out, summary, src


def test_ground_truth_matches_the_rendered_videos(footage):
    out, summary, _src = footage
    truth = json.loads((out / "ground_truth.json").read_text())
    assert summary["videos"] == 2 and len(truth["videos"]) == 2
    assert truth["summary"]["sources"][0]["cuts"] == [40, 80]  # the source's own cuts, detected
    for v in truth["videos"]:
        with av.open(str(out / v["name"])) as c:
            frames = [f.to_ndarray(format="rgb24").astype(np.int16) for f in c.decode(video=0)]
        assert len(frames) == v["n_frames"] == 300 and frames[0].shape == (72, 128, 3)
        shots = v["shots"]
        assert shots[0]["first_frame"] == 0
        assert shots[-1]["first_frame"] + shots[-1]["length"] == v["n_frames"]
        diff = [np.abs(frames[i] - frames[i - 1]).mean() for i in range(1, len(frames))]
        for tr, nxt in zip(v["transitions"], shots[1:]):
            if tr["kind"] == "cut":
                assert nxt["first_frame"] == tr["frame"]
            else:  # the next shot starts where the dissolve starts, and the dissolve is 12-24 frames
                assert nxt["first_frame"] == tr["start"] and 12 <= tr["end"] - tr["start"] <= 24
        for shot in shots[:-1]:  # 3 to 6 s; the inner frames of a shot never jump like a cut does
            assert 75 <= shot["length"] <= 150
        dissolving = {i for tr in v["transitions"] if tr["kind"] == "dissolve" for i in range(tr["start"], tr["end"] + 1)}
        inner = [diff[i - 1] for s in shots for i in range(s["first_frame"] + 1, s["first_frame"] + s["length"])
                 if i not in dissolving]
        assert max(inner) < 20  # no cut inside a shot: the source's own cuts are never crossed
        for tr, prev, nxt in zip(v["transitions"], shots, shots[1:]):
            if tr["kind"] == "cut" and prev["segment"] != nxt["segment"]:  # another colour: a visible cut
                assert diff[tr["frame"] - 1] > 20


def test_shots_stay_inside_one_cut_free_segment():
    src = mef.Source("s", "0", 25.0, 32, 18, np.zeros((120, 18, 32, 3), np.uint8), [], [40, 80],
                     [(0, 40), (40, 80), (80, 120)])
    plan = mef.plan_video("v.mp4", (64, 36), 60.0, 25.0, [src], seed=3, shot_s=(3.0, 6.0), dissolve_share=0.2,
                          dissolve_frames=(12, 24))
    assert plan.n_frames == 1500 and any(t["kind"] == "dissolve" for t in plan.transitions)
    for shot in plan.shots:
        a, b = shot.segment
        got = {mef.source_index(shot, k) for k in range(shot.length)}
        assert min(got) >= a and max(got) < b
