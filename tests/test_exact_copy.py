"""split.extract_mode=auto: a clip that starts on a keyframe and whose packets show exactly its frames is
stream-copied (the source's very pixels, same clip id and range), every other clip re-encoded."""

from __future__ import annotations

import av
from av.video.frame import PictureType
import numpy as np
import pytest

from vidcorpus.config import load_config
from vidcorpus.ids import clip_id
from vidcorpus.ingest.extract import ExtractStage
from vidcorpus.schemas import empty_row, rows_to_table

FPS, N = 24, 60


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    """60 frames, keyframes every 12, two B-frames between anchors (fixed pattern)."""
    path = str(tmp_path_factory.mktemp("exact") / "gop12.mp4")
    rng = np.random.default_rng(0)
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "20",
                     "x264-params": "keyint=12:min-keyint=12:scenecut=0:bframes=2:b-adapt=0"}
        for i in range(N):
            frame = np.clip(rng.integers(0, 40, (64, 96, 3)) + (i * 4) % 200, 0, 255).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _decode(path: str) -> tuple[list[np.ndarray], list[str]]:
    with av.open(path) as c:
        frames = list(c.decode(video=0))
    return [f.to_ndarray(format="rgb24") for f in frames], [PictureType(f.pict_type).name for f in frames]


def _row(path: str, first: int, last: int, **extra) -> dict:
    return empty_row(clip_id=clip_id("src", first, last), source_id="src", media_type="video", source_path=path,
                     first_frame=first, last_frame=last, fps=float(FPS), start_s=first / FPS,
                     end_s=(last + 1) / FPS, **extra)


def _extract(tmp_path, rows: list[dict], *overrides: str) -> dict[str, dict]:
    cfg = load_config(None, list(overrides), workdir=str(tmp_path / "w"))
    out = ExtractStage(cfg)(rows_to_table(rows)).to_pylist()
    assert not any(r["error_class"] for r in out), out
    return {r["clip_id"]: r for r in out}


def test_clips_on_keyframes_are_copied_pixel_for_pixel_the_rest_re_encoded(tmp_path, source):
    src, types = _decode(source)
    assert types[0] == types[12] == "I" and "B" in types  # keyframes every 12, B-frames between
    # ends on an anchor (exact), ends on a B-frame whose anchor lies past the clip, starts between keyframes
    anchor_end = max(i for i in range(13, 24) if types[i] in ("P", "I"))
    b_end = max(i for i in range(25, 36) if types[i] == "B" and types[i + 1] == "B")
    rows = [_row(source, 12, anchor_end), _row(source, 24, b_end), _row(source, 40, 47)]
    got = _extract(tmp_path, rows)
    copied, b_tail, mid = (got[r["clip_id"]] for r in rows)
    assert (copied["extract_mode"], b_tail["extract_mode"], mid["extract_mode"]) == ("copy", "precise", "precise")
    for want, row in zip(rows, (copied, b_tail, mid)):  # ids and ranges as the splitter made them
        assert (row["clip_id"], row["first_frame"], row["last_frame"]) == \
               (want["clip_id"], want["first_frame"], want["last_frame"])
        assert row["clip_frames"] == row["last_frame"] - row["first_frame"] + 1
        assert (row["clip_width"], row["clip_height"], row["clip_fps"]) == (96, 64, float(FPS))
    # only re-encoding holds the frames the scorers sample: a copy has no stills, scorers decode the clip
    assert copied["stills_path"] is None and b_tail["stills_path"] and mid["stills_path"]
    clip, _ = _decode(copied["clip_path"])
    assert len(clip) == anchor_end - 12 + 1
    assert all(np.array_equal(a, b) for a, b in zip(clip, src[12:anchor_end + 1]))  # the source's very pixels
    again = _extract(tmp_path / "again", [rows[0]])[rows[0]["clip_id"]]
    assert open(again["clip_path"], "rb").read() == open(copied["clip_path"], "rb").read()  # a rerun, same bytes


@pytest.mark.parametrize("overrides,extra", [(["split.extract_mode=precise"], {}),
                                             (["split.clip_short_side=32"], {}),
                                             ([], {"rotation": 90})])
def test_copy_only_where_the_clip_would_be_the_same(tmp_path, source, overrides, extra):
    """precise asked for, a resized clip, or phone footage (pixels turned upright): every clip re-encoded."""
    row = _row(source, 0, 11, **extra)
    got = _extract(tmp_path, [row], *overrides)[row["clip_id"]]
    assert got["extract_mode"] == "precise"


def test_a_copied_clip_without_stills_is_scored_from_its_own_frames(tmp_path, source, model_cache):
    """The CLIP stage reads a copy's frames from the clip (no stills file): scores like the re-encoded
    clip's, within its coding error, and no error."""
    from vidcorpus.filters.clip_scores import ClipScoreStage
    from vidcorpus.jobs.models import resolve_models

    _, types = _decode(source)
    anchor_end = max(i for i in range(13, 24) if types[i] in ("P", "I"))
    scored = {}
    for mode in ("auto", "precise"):
        cfg = load_config(None, [f"split.extract_mode={mode}"], workdir=str(tmp_path / mode),
                          **{"models.preset": "tiny", "models.cache_dir": model_cache})
        cfg = cfg.model_copy(update={"models": resolve_models(cfg.models)})
        extracted = ExtractStage(cfg)(rows_to_table([_row(source, 12, anchor_end)])).to_pylist()
        assert extracted[0]["extract_mode"] == ("copy" if mode == "auto" else "precise")
        assert (extracted[0]["stills_path"] is None) == (mode == "auto")
        out = ClipScoreStage(cfg)(rows_to_table(extracted)).to_pylist()
        assert not out[0]["error_class"]
        scored[mode] = {s["scorer"]: s["value"] for s in out[0]["scores"]}
    assert scored["auto"].keys() == scored["precise"].keys() and "aesthetic" in scored["auto"]
    for name, value in scored["precise"].items():
        assert scored["auto"][name] == pytest.approx(value, rel=0.02)  # 0.2% apart when written
