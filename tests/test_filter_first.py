"""Filter before you encode (issue 22): scorers read clips from their source, only kept clips are
encoded, and a clip kept later is extracted on demand with the same id and frames."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from test_corpus_state import _recipe_file  # a demo_v1 variant written to a file
from vidcorpus.catalog.store import Catalog
from vidcorpus.cli.app import app
from vidcorpus.config import load_config
from vidcorpus.ids import source_id
from vidcorpus.media import probe_video
from vidcorpus.schemas import empty_row, rows_to_table

cli = CliRunner()
FPS = 24


def _shots_video(path: Path) -> str:
    """Three 30-frame shots of moving random texture (every frame differs from its neighbours)."""
    rng = np.random.default_rng(7)
    with av.open(str(path), mode="w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = 192, 112, "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "18", "x264-params": "keyint=12:min-keyint=12:scenecut=0:bframes=2"}
        for shot in range(3):
            tex = np.kron(rng.integers(0, 256, (7, 24, 3), dtype=np.uint8), np.ones((16, 16, 1), np.uint8))
            for t in range(30):
                arr = np.ascontiguousarray(np.roll(tex, 3 * t, axis=1)[:, :192])
                for p in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                    c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> str:
    return _shots_video(tmp_path_factory.mktemp("ff") / "three.mp4")


def _source_row(path: str) -> dict:
    return empty_row(source_id=source_id(path), uri=path, media_type="video", source_path=path, **probe_video(path))


def _decode_all(path: str) -> list[np.ndarray]:
    from vidcorpus.frame_seek import to_rgb

    with av.open(path) as c:
        return [to_rgb(f) for f in c.decode(video=0)]


def _split(cfg, path: str) -> list[dict]:
    from vidcorpus.ingest.split_stage import SplitStage

    rows = SplitStage(cfg)(rows_to_table([_source_row(path)])).to_pylist()
    return sorted(rows, key=lambda r: r["first_frame"])


def test_source_frames_are_the_source_frames_of_the_clip_range(tmp_path, video):
    from vidcorpus.source_frames import stream_clip_frames

    cfg = load_config(None, [], workdir=str(tmp_path / "w"))
    rows = _split(cfg, video)
    assert len(rows) == 3
    src = _decode_all(video)
    wanted = {r["clip_id"]: [0, 5, r["last_frame"] - r["first_frame"]] for r in rows}
    got = dict((r["clip_id"], f) for r, f in stream_clip_frames(rows, wanted, cfg.split))
    for r in rows:
        for j in wanted[r["clip_id"]]:
            assert np.array_equal(got[r["clip_id"]][j], src[r["first_frame"] + j]), (r["clip_id"], j)


def _nearest_source(frame: np.ndarray, src: list[np.ndarray], around: int) -> int:
    cands = [i for i in (around - 1, around, around + 1) if 0 <= i < len(src)]
    return min(cands, key=lambda i: np.abs(src[i].astype(int) - frame.astype(int)).mean())


@pytest.mark.parametrize("overrides", [[], ["split.clip_short_side=64", "split.clip_fps=8"]])
def test_scores_read_from_the_source_agree_with_scores_of_the_extracted_clip(tmp_path, video, overrides):
    from vidcorpus.filters.motion import MotionStage
    from vidcorpus.filters.technical import TechnicalStage
    from vidcorpus.ingest.extract import ExtractStage
    from vidcorpus.source_frames import stream_clip_frames

    cfg = load_config(None, overrides, workdir=str(tmp_path / "w"))
    rows = _split(cfg, video)
    from_source = MotionStage(cfg)(TechnicalStage(cfg)(rows_to_table(rows))).to_pylist()
    assert all(not r["error_class"] and r["clip_path"] is None and r["extract_mode"] == "deferred" for r in from_source)
    assert all(Path(r["first_frame_path"]).exists() and Path(r["stills_path"]).exists() for r in from_source)
    extracted = ExtractStage(cfg)(rows_to_table(from_source)).to_pylist()
    assert all(r["clip_path"] for r in extracted)
    modes = sorted(r["extract_mode"] for r in extracted)
    # a shot starting on a keyframe is copied (split.extract_mode=auto), unless the clip is resized
    assert modes == (["precise"] * 3 if overrides else ["copy", "precise", "precise"]), modes
    # the geometry the scorers assumed is the clip extraction wrote
    for a, b in zip(sorted(from_source, key=lambda r: r["clip_id"]), sorted(extracted, key=lambda r: r["clip_id"])):
        assert (a["clip_width"], a["clip_height"], a["clip_fps"], a["clip_frames"]) == \
               (b["clip_width"], b["clip_height"], b["clip_fps"], b["clip_frames"])
    # the clip file's frame j is the frame the source read gives as frame j (codec noise apart)
    for r in extracted:
        clip = _decode_all(r["clip_path"])
        ((_, frames),) = list(stream_clip_frames([r], {r["clip_id"]: list(range(len(clip)))}, cfg.split))
        assert len(frames) == len(clip) == r["clip_frames"]
        for j in range(len(clip)):
            diffs = [np.abs(frames[i].astype(int) - clip[j].astype(int)).mean() for i in range(len(clip))]
            assert int(np.argmin(diffs)) == j and diffs[j] < 4, (r["clip_id"], j, diffs[j])
            if r["extract_mode"] == "copy":  # the source's packets: its very pixels
                assert diffs[j] == 0, (r["clip_id"], j, diffs[j])
    rescored = MotionStage(cfg)(TechnicalStage(cfg)(rows_to_table(
        [dict(r, scores=[], stills_path=None) for r in extracted]))).to_pylist()
    a = {r["clip_id"]: {s["scorer"]: s["value"] for s in r["scores"]} for r in from_source}
    b = {r["clip_id"]: {s["scorer"]: s["value"] for s in r["scores"]} for r in rescored}
    assert a.keys() == b.keys()
    for clip, sa in a.items():
        sb = b[clip]
        assert sa.keys() == sb.keys()
        for k in ("width", "height", "fps", "duration_s", "black_border", "frozen", "motion_static"):
            assert sa[k] == pytest.approx(sb[k]), (clip, k)
        assert sa["brightness"] == pytest.approx(sb["brightness"], abs=1.0)
        assert sa["blur"] == pytest.approx(sb["blur"], rel=0.15)
        assert sa["motion"] == pytest.approx(sb["motion"], rel=0.05)


def test_clip_scores_read_from_the_source_agree_with_the_extracted_clip(tmp_path, video, model_cache):
    from vidcorpus.filters.clip_scores import ClipScoreStage
    from vidcorpus.filters.technical import TechnicalStage
    from vidcorpus.ingest.extract import ExtractStage
    from vidcorpus.jobs.models import resolve_models

    cfg = load_config(None, [], workdir=str(tmp_path / "w"), **{"models.preset": "tiny", "models.cache_dir": model_cache})
    cfg = cfg.model_copy(update={"models": resolve_models(cfg.models)})
    rows = TechnicalStage(cfg)(rows_to_table(_split(cfg, video))).to_pylist()
    stage = ClipScoreStage(cfg)
    from_source = stage(rows_to_table(rows)).to_pylist()  # the stills the technical pass wrote
    no_stills = stage(rows_to_table([dict(r, stills_path=None) for r in rows])).to_pylist()  # decoded from the source
    extracted = ExtractStage(cfg)(rows_to_table(rows)).to_pylist()
    from_clip = stage(rows_to_table([dict(r, scores=[], stills_path=None) for r in extracted])).to_pylist()

    def aes(rs):
        return {r["clip_id"]: next(s["value"] for s in r["scores"] if s["scorer"] == "aesthetic") for r in rs}

    assert all(r["content_sha256"] for r in from_source)
    a, b, c = aes(from_source), aes(no_stills), aes(from_clip)
    spread = np.ptp(list(c.values()))
    for clip in c:
        assert a[clip] == pytest.approx(c[clip], abs=max(0.05 * spread, 1e-3))
        assert b[clip] == pytest.approx(c[clip], abs=max(0.05 * spread, 1e-3))


# -- the pipeline: dropped clips are never encoded ----------------------------------------------------

def test_a_dropped_shot_is_never_encoded_and_keeps_its_rows_and_still(tmp_path, model_cache, monkeypatch):
    from vidcorpus.ingest import extract
    from vidcorpus.ingest.sources import read_inputs
    from vidcorpus.jobs.models import resolve_models
    from vidcorpus.jobs.curate.pipeline import pipeline_stages
    from vidcorpus.synth import make_corpus

    encoded: list[int] = []
    real_init = extract._ClipWriter.__init__

    def counting_init(self, *a, **kw):
        encoded.append(kw.get("source_frames"))
        real_init(self, *a, **kw)

    monkeypatch.setattr(extract._ClipWriter, "__init__", counting_init)
    truth = make_corpus(tmp_path / "corpus", n_videos=3, n_images=1, include_real=False)
    cfg = load_config(None, [], workdir=str(tmp_path / "work"),
                      **{"models.preset": "tiny", "models.cache_dir": model_cache, "filters.recipe": "demo_v1"})
    cfg = cfg.model_copy(update={"models": resolve_models(cfg.models)})
    table = rows_to_table(read_inputs([truth["list"]]))
    for stage_cls in pipeline_stages():  # what the runner's Ray Data pipeline does, in-process
        table = stage_cls(cfg)(table)
    rows = [r for r in table.to_pylist() if r.get("clip_id") and not r.get("error_class")]
    videos = [r for r in rows if r["media_type"] == "video"]
    dropped = [r for r in videos if not r["kept"]]
    kept = [r for r in videos if r["kept"]]
    assert dropped and kept
    # one encoder per kept clip that is not stream-copied (split.extract_mode=auto), none for a dropped one
    assert len(encoded) == len([r for r in kept if r["extract_mode"] == "precise"])
    for r in dropped:
        assert r["clip_path"] is None and r["extract_mode"] == "deferred" and r["reason"]
        assert not Path(cfg.url("staging", "clips", f"{r['clip_id']}.mp4")).exists()
        assert Path(r["first_frame_path"]).exists()
        assert {"blur", "motion", "aesthetic"} <= {s["scorer"] for s in r["scores"]}
    assert all(r["clip_path"] and Path(r["clip_path"]).exists() and r["extract_mode"] in ("precise", "copy")
               for r in kept)
    images = [r for r in rows if r["media_type"] == "image"]
    assert images and all(r["clip_path"] and Path(r["clip_path"]).exists() for r in images)  # images unchanged

    with Catalog(cfg.catalog_path) as cat:
        cat.begin_run("run-a", "pipeline", "{}", "test")
        cat.commit_results("run-a", table.to_pylist())
        cat.finish_run("run-a", "succeeded", {})
        got = {r["clip_id"]: r for r in cat.query_dicts("SELECT * FROM clips_wide")}
        assert not cat.unsharded_kept() or all(c["clip_path"] for c in cat.unsharded_kept())
    for r in dropped:  # the catalog keeps the dropped clip's rows: range, scores, decision, still
        c = got[r["clip_id"]]
        assert c["clip_path"] is None and c["extract_mode"] == "deferred" and c["kept"] is False and c["scored"]
        assert (c["first_frame"], c["last_frame"]) == (r["first_frame"], r["last_frame"])
        assert c["first_frame_path"] == r["first_frame_path"]

    # the report draws the dropped clip's still (not the grey "no first frame" tile)
    from PIL import Image

    from vidcorpus.jobs.report.build import build_report

    build_report(cfg.catalog_path, tmp_path / "report")
    thumb = tmp_path / "report" / "thumbs" / f"{dropped[0]['clip_id']}.jpg"
    assert thumb.exists()
    px = np.asarray(Image.open(thumb).convert("RGB")).reshape(-1, 3)
    assert np.ptp(px, axis=0).max() > 30  # a picture, not a flat tile


# -- on demand: a clip kept later is extracted by sync with the same id and frames -------------------

@pytest.fixture()
def ws(demo, tmp_path):
    """A workdir holding a copy of the demo catalog and a lenient recipe (keeps the slow shots)."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(demo["config"].catalog_path, work / "catalog.duckdb")
    return SimpleNamespace(
        workdir=str(work), catalog=str(work / "catalog.duckdb"),
        lenient=_recipe_file(tmp_path / "lenient_v1.yaml", "lenient_v1", lambda ps: [p for p in ps if p["score"] != "motion"]))


def vc(ws, *args, code: int = 0) -> str:
    result = cli.invoke(app, [*args, "--workdir", ws.workdir])
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return " ".join(result.output.split())


def q(ws, sql: str, params=None) -> list[dict]:
    with Catalog(ws.catalog, read_only=True) as cat:
        return cat.query_dicts(sql, params)


def gaps(ws) -> list[dict]:
    """`catalog verify`'s gap rows (the table on the terminal wraps long cells)."""
    from vidcorpus.catalog.corpus_state import state_gaps

    with Catalog(ws.catalog, read_only=True) as cat:
        return state_gaps(cat)


def _assert_frames_are_the_source_range(clip: dict) -> None:
    """The clip file holds exactly source frames first..last (each decoded frame is nearest to its own
    source frame, within the clip codec's noise)."""
    frames = _decode_all(clip["clip_path"])
    src = _decode_all(clip["source_path"])
    a, b = clip["first_frame"], clip["last_frame"]
    assert len(frames) == b - a + 1
    for j, f in enumerate(frames):
        assert np.abs(f.astype(int) - src[a + j].astype(int)).mean() < 4
        if np.abs(src[a + j].astype(int) - src[max(a, a + j - 1)].astype(int)).mean() > 2:  # neighbours differ
            assert _nearest_source(f, src, a + j) == a + j


def test_a_clip_kept_later_is_extracted_on_demand_then_captioned_and_sharded(ws):
    unextracted = {r["clip_id"] for r in q(ws, "SELECT clip_id FROM clips_wide WHERE clip_path IS NULL")}
    assert unextracted and all(r["extract_mode"] == "deferred" for r in q(
        ws, "SELECT extract_mode FROM clips_wide WHERE clip_path IS NULL"))
    vc(ws, "filter", "apply", ws.lenient)
    newly = {r["clip_id"] for r in q(ws, "SELECT clip_id FROM clips_wide WHERE kept AND clip_path IS NULL")}
    assert newly and newly <= unextracted
    out = vc(ws, "status")
    assert re.search(rf"\bextract\W+{len(newly)}\b", out), out
    out = vc(ws, "catalog", "verify")
    assert "catalog consistent" in out and "gaps between the decisions" in out
    assert {g["item"] for g in gaps(ws) if g["check"] == "pending_extract"} == newly
    out = vc(ws, "shards", "write")
    assert f"{len(newly)} kept clips have no clip file yet" in out
    assert not q(ws, "SELECT clip_id FROM shard_members WHERE clip_id IN (SELECT unnest(?))", [sorted(newly)])

    out = vc(ws, "sync", "--no-progress")
    assert f"extracted {len(newly)} kept clips on demand" in out
    rows = q(ws, "SELECT w.*, s.source_path FROM clips_wide w JOIN sources s USING (source_id) "
                 "WHERE clip_id IN (SELECT unnest(?))", [sorted(newly)])
    assert {r["clip_id"] for r in rows} == newly  # same ids: no new clip rows
    for r in rows:
        # re-encoded, or stream-copied where that is exact (split.extract_mode=auto): the frames are checked below
        assert r["extract_mode"] in ("precise", "copy") and Path(r["clip_path"]).exists()
        assert r["captioned"] and r["shard_id"]
        assert r["clip_path"].startswith(ws.workdir)
        _assert_frames_are_the_source_range(r)
    assert len(q(ws, "SELECT clip_id FROM clips")) == len(q(ws, "SELECT clip_id FROM clips_wide"))
    out = vc(ws, "catalog", "verify")
    assert "catalog consistent" in out and "pending_" not in out


def test_sync_re_extracts_a_kept_clip_whose_file_is_gone(ws):
    [victim] = q(ws, "SELECT w.clip_id, w.clip_path, w.first_frame, w.last_frame, s.source_path FROM clips_wide w "
                     "JOIN sources s USING (source_id) WHERE kept AND w.media_type = 'video' ORDER BY clip_id LIMIT 1")
    # the demo's clip files are shared by every test: point this catalog's row at a copy, then lose it
    copy = Path(ws.workdir) / "lost" / Path(victim["clip_path"]).name
    copy.parent.mkdir()
    with Catalog(ws.catalog) as cat:
        cat.con.execute("UPDATE clips SET clip_path = ? WHERE clip_id = ?", [str(copy), victim["clip_id"]])
        cat.rebuild_wide([victim["clip_id"]])
    out = vc(ws, "status")
    assert re.search(r"\bextract\W+1\b", out), out
    out = vc(ws, "catalog", "verify")
    assert "catalog consistent" in out and "1 gaps between the decisions" in out
    [gap] = gaps(ws)
    assert gap["check"] == "pending_extract" and gap["item"] == victim["clip_id"] and "is missing" in gap["detail"]
    out = vc(ws, "sync", "--no-progress")
    assert "extracted 1 kept clips on demand" in out
    [after] = q(ws, "SELECT w.*, s.source_path FROM clips_wide w JOIN sources s USING (source_id) WHERE clip_id = ?",
                [victim["clip_id"]])
    assert Path(after["clip_path"]).exists() and after["clip_path"] != str(copy)
    _assert_frames_are_the_source_range(after)
    assert "pending_" not in vc(ws, "catalog", "verify")


def test_frame_model_scorers_read_an_unextracted_clip_from_its_source(tmp_path, video):
    pytest.importorskip("rapidocr_onnxruntime", reason="the `models` extra is not installed")
    pytest.importorskip("nudenet", reason="the `models` extra is not installed")
    from vidcorpus.filters.nsfw import NsfwStage
    from vidcorpus.filters.technical import TechnicalStage
    from vidcorpus.filters.text_overlay import TextOverlayStage

    cfg = load_config(None, [], workdir=str(tmp_path / "w"))
    rows = TechnicalStage(cfg)(rows_to_table(_split(cfg, video))).to_pylist()
    for table in (rows_to_table(rows), rows_to_table([dict(r, stills_path=None) for r in rows])):  # stills, source
        for stage in (TextOverlayStage, NsfwStage):
            table = stage(cfg)(table)
        out = table.to_pylist()
        assert all(not r["error_class"] and r["clip_path"] is None for r in out), [r["error"] for r in out]
        assert all({"text_area", "nsfw"} <= {s["scorer"] for s in r["scores"]} for r in out)


def test_technical_and_motion_share_one_decode_of_the_source(tmp_path, video, monkeypatch):
    from vidcorpus import source_frames
    from vidcorpus.filters.motion import MotionStage
    from vidcorpus.filters.technical import TechnicalStage

    cfg = load_config(None, [], workdir=str(tmp_path / "w"))
    rows = _split(cfg, video)
    alone = MotionStage(cfg)(rows_to_table(rows)).to_pylist()  # motion decodes the source itself
    decodes: list[str] = []
    real = source_frames.decode_source_range

    def counting(path, first, last, wanted=None, threads=1, nvdec=False):
        decodes.append(path)
        return real(path, first, last, wanted, threads, nvdec)

    monkeypatch.setattr(source_frames, "decode_source_range", counting)
    both = MotionStage(cfg)(TechnicalStage(cfg)(rows_to_table(rows))).to_pylist()
    assert decodes == [video]  # one pass over the source for both scorers
    motion = {r["clip_id"]: {s["scorer"]: s["value"] for s in r["scores"] if s["model"] == "farneback"} for r in both}
    assert motion == {r["clip_id"]: {s["scorer"]: s["value"] for s in r["scores"]} for r in alone}


def test_a_source_split_over_batches_is_decoded_once(tmp_path, video, monkeypatch):
    from vidcorpus import source_frames
    from vidcorpus.filters.motion import MotionStage
    from vidcorpus.filters.technical import TechnicalStage

    cfg = load_config(None, [], workdir=str(tmp_path / "w"))
    rows = _split(cfg, video)
    whole = MotionStage(cfg)(TechnicalStage(cfg)(rows_to_table(rows))).to_pylist()
    opened: list[tuple[str, int]] = []
    real = source_frames._SourceCursor.__init__

    def counting(self, path, start, threads, nvdec=False):
        real(self, path, start, threads, nvdec)
        opened.append((path, self.next))  # where its decoding starts (a keyframe at or before start)

    monkeypatch.setattr(source_frames._SourceCursor, "__init__", counting)
    source_frames._CURSOR.clear()
    one_by_one = [r for row in rows for r in MotionStage(cfg)(TechnicalStage(cfg)(rows_to_table([row]))).to_pylist()]
    # each batch goes on where the last one stopped, or seeks forward past frames nobody wants:
    # never back to a frame already decoded
    assert [p for p, _ in opened] == [video] * len(opened)
    assert opened[0][1] == 0 and [s for _, s in opened] == sorted({s for _, s in opened}), opened
    scores = {r["clip_id"]: r["scores"] for r in whole}
    assert {r["clip_id"]: r["scores"] for r in one_by_one} == scores
