"""Rotation metadata (issue 23): phone footage stores its pixels turned and says so in a display
matrix. The probe records the turn (``rotation``, clockwise degrees) and the decode paths apply it:
shot detection, TransNetV2's input and every frame read through ``vidcorpus.media`` come out upright.

The videos are made here with PyAV: a 320x192 picture stored as is, with a display matrix saying
"turn 90 degrees clockwise to show" (what a phone held upright writes), so it shows 192x320.
"""

from __future__ import annotations

import av
import numpy as np
import pytest

from vidcorpus.config import SplitConfig
from vidcorpus.ingest.probe import probe_video_file
from vidcorpus.ingest.split import _scaled_pyav_stream, detect_segments
from vidcorpus.media import read_frames
from vidcorpus.synth import _shot

FPS = 24


def _encode(path, frames: np.ndarray, ccw: float | None) -> str:
    with av.open(str(path), mode="w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.height, s.width = frames.shape[1:3]
        s.pix_fmt = "yuv420p"
        if ccw is not None:
            s.set_display_rotation(ccw)  # FFmpeg's display matrix: counter-clockwise degrees
        for arr in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


def _marked(frames: np.ndarray) -> np.ndarray:
    """The frames with a white block in the stored picture's top-left corner."""
    out = frames.copy()
    out[:, :32, :32] = 255
    return out


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("rotated")
    frames = _marked(np.concatenate([_shot(0, 30, 3), _shot(1, 30, 5)]))  # one cut at frame 30
    return {"portrait": _encode(d / "portrait.mp4", frames, -90), "plain": _encode(d / "plain.mp4", frames, None),
            "upside_down": _encode(d / "upside_down.mp4", frames, 180)}


def _corner(arr: np.ndarray) -> str:
    """Which corner holds the white block (the brightest 16x16 corner)."""
    h, w = arr.shape[:2]
    corners = {"top-left": arr[:16, :16], "top-right": arr[:16, w - 16:], "bottom-left": arr[h - 16:, :16],
               "bottom-right": arr[h - 16:, w - 16:]}
    return max(corners, key=lambda k: float(corners[k].mean()))


def test_the_probe_records_the_clockwise_turn(videos):
    got = {k: probe_video_file(open(p, "rb"))["rotation"] for k, p in videos.items()}
    assert got == {"portrait": 90, "plain": 0, "upside_down": 180}


def test_frames_read_through_media_come_out_upright(videos):
    portrait = read_frames(videos["portrait"], indices=[0, 40])
    assert portrait.shape == (2, 320, 192, 3)  # shown 192 wide, 320 high
    assert _corner(portrait[0]) == "top-right"  # the stored top-left turned a quarter clockwise
    assert _corner(read_frames(videos["upside_down"], indices=[0])[0]) == "bottom-right"
    plain = read_frames(videos["plain"], indices=[0])
    assert plain.shape == (1, 192, 320, 3) and _corner(plain[0]) == "top-left"


@pytest.mark.parametrize("rotation", [None, 90])  # read from the display matrix, or the probe's value
def test_shot_detection_sees_the_upright_picture(videos, rotation):
    stream = _scaled_pyav_stream(videos["portrait"], 0, rotation=rotation)
    frame = stream.read()
    w, h = stream.frame_size
    assert frame.shape == (h, w, 3) and h > w  # portrait, as shown
    assert _corner(frame) == "top-right"
    found = detect_segments(videos["portrait"], SplitConfig(), fps=FPS, rotation=rotation)
    assert found.shots == detect_segments(videos["plain"], SplitConfig(), fps=FPS).shots == [(0, 29), (30, 59)]


@pytest.mark.parametrize("rotation", [None, 90])  # the frame's display matrix, or the probe's value
def test_the_transnet_input_is_upright(videos, rotation):
    """TransNetV2 reads 48x27 frames shrunk from the upright detector-size frames (ingest/transnet_input.py
    model_frames), on the batched reader's path and push_frame's alike: the upright picture squeezed."""
    torch = pytest.importorskip("torch")
    from vidcorpus.ingest.transnet import TransNetRun, TransNetStream
    from vidcorpus.ingest.transnet_input import model_frames, source_frame_of

    with av.open(videos["portrait"]) as c:
        frame = next(c.decode(video=0))
    small = model_frames(source_frame_of(frame)[None]).numpy()[0]  # push_frame's path
    assert small.shape == (27, 48, 3) and _corner(small) == "top-right"

    seen = []

    def recording_model(windows):  # (n, 100, 27, 48, 3): frame 25 of the first window is the first frame
        seen.append(windows[0, 25].numpy().copy())
        zeros = torch.zeros(windows.shape[0], windows.shape[1], 1)
        return zeros, {"many_hot": zeros}

    cfg = SplitConfig(detectors=["adaptive", "histogram", "transnetv2"])
    run = TransNetRun(TransNetStream(recording_model), cfg, "recording")
    detect_segments(videos["portrait"], cfg, fps=FPS, transnet=run, rotation=rotation)  # the batched reader
    assert np.array_equal(seen[0], small)


def test_extracted_clips_of_phone_footage_are_upright(tmp_path, videos):
    from vidcorpus.config import load_config
    from vidcorpus.ids import source_id
    from vidcorpus.ingest.extract import ExtractStage
    from vidcorpus.ingest.split_stage import SplitStage
    from vidcorpus.schemas import empty_row, rows_to_table

    path = videos["portrait"]
    cfg = load_config(None, [], workdir=str(tmp_path / "work"))
    table = rows_to_table([empty_row(source_id=source_id(path), uri=path, media_type="video", source_path=path,
                                     fps=float(FPS), rotation=90)])
    for stage in (SplitStage, ExtractStage):
        table = stage(cfg)(table)
    clip = table.to_pylist()[0]
    assert clip["error_class"] is None and (clip["clip_width"], clip["clip_height"]) == (192, 320)
    assert _corner(read_frames(clip["clip_path"], indices=[0])[0]) == "top-right"


def test_training_decodes_a_clip_that_keeps_a_display_matrix_upright(videos):
    """A packet-copied clip of phone footage (split.extract_mode=copy) keeps the source's matrix:
    the trainer's decode turns its frames upright like every other reader."""
    from pathlib import Path

    from vidcorpus.train.data import decode_video

    frames, _fps = decode_video(Path(videos["portrait"]).read_bytes(), 2, FPS, None)
    assert frames.shape[1:] == (320, 192, 3) and _corner(frames[0]) == "top-right"
