"""Fast paths check themselves (vidcorpus/fast_paths.py): outside the library versions they were
tested with, or when their first batch disagrees with the reference path, they switch off for the
job with one warning; the job goes on with the reference path, and the warning reaches the driver's
log and the run's events table."""

from __future__ import annotations

import json
import re
import tomllib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from vidcorpus import fast_paths
from vidcorpus.captioning.captioner import load_captioner
from vidcorpus.captioning.tiny_models import build_tiny_chat_vlm

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("vlm") / "tiny-qwen25-vl"
    build_tiny_chat_vlm(str(out))
    return str(out)


def _frames(seed: int, n: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 48, 64, 3), dtype=np.uint8)


def _switch_offs(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, fast_paths.FastPathWarning)]


def test_tested_ranges_are_pyprojects_bounds():
    """The captioning fast paths run on exactly the transformers versions pyproject admits (one bound,
    written twice; this keeps them equal) and that range holds today's install."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if d.startswith("transformers")).removeprefix("transformers")
    for path in ("static_graph", "fast_prefill", "compile_decode"):
        assert fast_paths.TESTED[path]["transformers"] == spec
        assert fast_paths.untested_reason(path) is None


def test_untested_version_switches_the_static_path_off(tiny_vlm, monkeypatch):
    """A transformers release outside the tested range: one warning naming the version, captions from
    generate (the same tokens as the reference), the decode path recorded on each caption; the override
    that .ci/latest sets keeps the fast path on."""
    frames = [_frames(s) for s in range(2)]
    ref = load_captioner(tiny_vlm, decode="default").generate(frames, "short", 8)
    real = fast_paths.installed_version
    monkeypatch.setattr(fast_paths, "installed_version",
                        lambda d: fast_paths.Version("99.0") if d == "transformers" else real(d))
    monkeypatch.delenv(fast_paths.ALLOW_UNTESTED_ENV, raising=False)
    cap = load_captioner(tiny_vlm, decode="static_graph")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = cap.generate(frames, "short", 8)
        cap.generate(frames, "short", 8)  # decided once per job: no second warning
    [message] = _switch_offs(caught)
    assert "static_graph" in message and "transformers 99.0 is outside the tested range" in message
    assert [g.decode for g in got] == ["default"] * 2
    assert [g.token_ids for g in got] == [g.token_ids for g in ref]

    monkeypatch.setenv(fast_paths.ALLOW_UNTESTED_ENV, "1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = load_captioner(tiny_vlm, decode="static_graph").generate(frames, "short", 8)
    assert not _switch_offs(caught) and [g.decode for g in got] == ["static_graph"] * 2


def test_probe_catches_a_decoder_whose_tokens_are_not_the_models(tiny_vlm, monkeypatch):
    """A static-graph decoder that runs without an error but writes the wrong tokens (here its steps
    no longer attend to the prompt's keys and values, the symptom of transformers 5.25's renamed
    cache argument): the probe on the first batch sees tokens that are not the model's own choices,
    switches the path off with one warning, and the batch's captions come from generate. The correct
    decoder, with its compiled prefill, passes the same probe."""
    from vidcorpus.captioning.fast_decode import GraphDecoder

    frames = [_frames(s) for s in range(3)]
    ref = load_captioner(tiny_vlm, decode="default").generate(frames, "long", 24)

    def captioner():
        cap = load_captioner(tiny_vlm, decode="static_graph", probe_rows=2)
        cap._graph = GraphDecoder(cap.model, compile_prefill=True, compile_backend="eager")
        return cap

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        good = captioner().generate(frames, "long", 24)
    assert not _switch_offs(caught)
    assert [g.decode for g in good] == ["static_graph"] * 3
    assert [g.token_ids for g in good] == [g.token_ids for g in ref]

    reset = GraphDecoder._reset

    def forget_the_prompt(slot, prompt_len, new):
        reset(slot, prompt_len, new)
        slot.valid[:, :prompt_len] = False

    monkeypatch.setattr(GraphDecoder, "_reset", staticmethod(forget_the_prompt))
    cap = captioner()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = cap.generate(frames, "long", 24)
    [message] = _switch_offs(caught)
    assert "probe tokens were not the model's own choice" in message
    assert [g.decode for g in got] == ["default"] * 3
    assert [g.token_ids for g in got] == [g.token_ids for g in ref]
    assert cap.graph_decoder is None  # off for the rest of the job


def test_probe_tolerates_half_precision_rounding_but_not_other_tokens(tiny_vlm):
    """In bf16 the reference and the fast path round differently: the probe compares each chosen token
    with the reference's best logit in units of the logits' spread, so the reference's own bf16 tokens
    pass while tokens shifted by one position (a wrong cache index) fail."""
    from vidcorpus.captioning.fast_decode_check import check_tokens

    cap = load_captioner(tiny_vlm, decode="default", dtype=torch.bfloat16, device="cpu")
    inputs = cap._device_inputs([_frames(s) for s in range(2)], cap_prompt())
    eos = sorted(cap._eos_ids())
    with torch.inference_mode():
        out = cap.model.generate(**inputs, max_new_tokens=16, min_new_tokens=4, do_sample=False)
    new = out[:, inputs["input_ids"].shape[1]:]
    ok = check_tokens(cap.model, inputs, new, eos, cap._stop_ids(), 4)
    shifted = check_tokens(cap.model, inputs, torch.roll(new, 1, dims=1), eos, cap._stop_ids(), 4)
    assert ok.agrees() and not ok.exact and ok.positions > 0
    assert not shifted.agrees()


def cap_prompt():
    from vidcorpus.captioning.prompts import PROMPTS

    return PROMPTS["p1"]["long"]


def test_stills_that_differ_from_their_clip_switch_the_stills_path_off(tmp_path):
    """The first clip with stills is compared with its decoded frames: true stills keep the path on;
    stills of other frames switch it off with one warning, and every later row is scored from its clip."""
    from vidcorpus.config import load_config
    from vidcorpus.filters.stills_probe import StillsCheck, stills_difference
    from vidcorpus.ingest.extract import ExtractStage
    from vidcorpus.media import encode_video
    from vidcorpus.schemas import empty_row, rows_to_table
    from vidcorpus.synth import H, W, _texture_shot

    paths = []
    for seed in (3, 7):  # two different textures panning
        paths.append(str(tmp_path / f"v{seed}.mp4"))
        encode_video(_texture_shot(24, seed=seed, dx=4), 24, paths[-1])
    cfg = load_config(None, [], workdir=str(tmp_path / "work"),
                      **{"filters.still_size": 64, "split.extract_mode": "precise"})  # copies write no stills
    src = [empty_row(source_id=f"s{i}", clip_id=f"clip{i}", media_type="video", source_path=path,
                     first_frame=0, last_frame=23, fps=24.0, width=W, height=H, start_s=0.0, end_s=1.0)
           for i, path in enumerate(paths)]
    rows = sorted(ExtractStage(cfg)(rows_to_table(src)).to_pylist(), key=lambda r: r["clip_id"])
    assert all(r["stills_path"] for r in rows)
    assert stills_difference(rows[0], 3) < 3.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check = StillsCheck(3)
        assert check.rows(rows) == rows and check.on
    assert not _switch_offs(caught)

    # stills of another clip's frames (same size): a stale or misplaced cache
    wrong = dict(rows[0], stills_path=str(tmp_path / "wrong.stills.jpg"))
    Path(wrong["stills_path"]).write_bytes(Path(rows[1]["stills_path"]).read_bytes())
    assert stills_difference(wrong, 3) > 8.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check = StillsCheck(3)
        first = check.rows([wrong, rows[1]])
        later = check.rows(rows)
    [message] = _switch_offs(caught)
    assert "stills" in message and "clip0" in message
    assert all(r["stills_path"] is None for r in first + later)


@pytest.mark.slow
def test_a_switch_off_in_a_ray_worker_reaches_the_log_and_the_events_table(tmp_path, model_cache, tiny_vlm,
                                                                            monkeypatch, caplog):
    """`vidcorpus run` where the installed transformers looks newer than tested (a distribution record
    of version 99 ahead on the workers' path): the captioner's fast path switches off inside the Ray
    worker; the driver prints the warning once, the run's events table counts it, each caption row
    says it was decoded by generate, and catalog info shows the event."""
    import ray
    from typer.testing import CliRunner

    from vidcorpus.catalog.store import Catalog
    from vidcorpus.cli.app import app
    from vidcorpus.config import load_config
    from vidcorpus.jobs.report.build import build_report
    from vidcorpus.jobs.curate.pipeline import run_pipeline
    from vidcorpus.synth import make_corpus

    fake = tmp_path / "fake-dists" / "transformers-99.0.dist-info"
    fake.mkdir(parents=True)
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: transformers\nVersion: 99.0\n")
    monkeypatch.setenv("PYTHONPATH", str(fake.parent))  # the Ray workers started below inherit it
    monkeypatch.delenv(fast_paths.ALLOW_UNTESTED_ENV, raising=False)
    corpus = make_corpus(tmp_path / "corpus", n_videos=1, n_images=1, broken=False, include_real=False)
    cfg = load_config(None, ["ray.num_cpus=2", "captioning.decode=static_graph", f"models.captioner={tiny_vlm}"],
                      workdir=str(tmp_path / "work"), inputs=[corpus["list"]])
    ray.shutdown()
    try:
        run_pipeline(cfg, progress=False)
    finally:
        ray.shutdown()
    lines = [r.getMessage() for r in caplog.records]  # the driver's log: what `vidcorpus run` prints
    said = [line for line in lines if "fast path static_graph off" in line]
    assert len(said) == 1 and "transformers 99.0 is outside the tested range" in said[0], lines
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        events = cat.events()
        decodes = {r["decode"] for r in cat.query_dicts("SELECT decode FROM captions WHERE kind IN ('long', 'short')")}
    [event] = [e for e in events if "fast path static_graph off" in e["message"]]
    assert event["stage"] == "caption" and event["kind"] == "FastPathWarning" and event["count"] >= 1
    assert decodes == {"default"}
    info = CliRunner().invoke(app, ["catalog", "info", "--catalog", cfg.catalog_path], env={"COLUMNS": "200"})
    assert info.exit_code == 0, info.output
    fast_rows = [line for line in info.output.splitlines() if "FastPathWarning" in line]
    assert any("fast path shared_vision off" in line for line in fast_rows), fast_rows  # gated on the same range
    [row] = [line for line in fast_rows if "static_graph" in line]
    assert re.search(r"caption .* FastPathWarning .* 1 .* 1 .* fast path static_graph off for this job", row), row
    report = build_report(cfg.catalog_path, tmp_path / "report").index.read_text()
    assert "Warnings in stages" in report and "fast path static_graph off for this job" in report
    assert re.search(r"<td>default \d+</td>", report)  # the captions' decode path, in the captions table


def test_a_probe_mismatch_in_the_caption_stage_reaches_the_driver_log_and_the_events_table(tiny_vlm, tmp_path,
                                                                                           monkeypatch, caplog):
    """The caption stage (as a Ray worker runs it) whose static path fails the probe: captions come
    from generate and say so; the switch-off travels on the rows, and the driver's commit logs it once
    and writes it to the run's events row."""
    from vidcorpus.captioning.fast_decode import GraphDecoder
    from vidcorpus.captioning.caption_stage import CaptionStage
    from vidcorpus.catalog.store import Catalog
    from vidcorpus.config import load_config
    from vidcorpus.jobs.curate.commit import RunCommitter
    from vidcorpus.jobs.curate.pipeline import RunSummary
    from vidcorpus.schemas import empty_row, rows_to_table
    from vidcorpus.synth import make_video

    reset = GraphDecoder._reset

    def forget_the_prompt(slot, prompt_len, new):
        reset(slot, prompt_len, new)
        slot.valid[:, :prompt_len] = False

    monkeypatch.setattr(GraphDecoder, "_reset", staticmethod(forget_the_prompt))
    cfg = load_config(None, ["captioning.decode=static_graph", "captioning.qa=false", "captioning.max_new_tokens=24",
                             "filters.dedup=false", f"models.captioner={tiny_vlm}"], workdir=str(tmp_path / "work"))
    videos = [make_video(i, tmp_path).path for i in range(2)]
    rows = [empty_row(source_id=f"s{i}", clip_id=f"s{i}-0000000-0000009", media_type="video", clip_path=path,
                      first_frame=0, last_frame=9, start_s=0.0, end_s=0.4, kept=True)
            for i, path in enumerate(videos)]
    out = CaptionStage(cfg)(rows_to_table(rows))
    captions = [c for r in out.to_pylist() for c in r["captions"]]
    assert len(captions) == 4 and {c["decode"] for c in captions} == {"default"}
    Path(cfg.catalog_path).parent.mkdir(parents=True, exist_ok=True)
    with Catalog(cfg.catalog_path) as cat:
        cat.begin_run("run-probe", "pipeline", "{}", "test")
        committer = RunCommitter(cfg, cat, "run-probe", RunSummary(run_id="run-probe"))
        committer.add(out)
        committer.finish()
        [event] = cat.events("run-probe")
        stored = {r["decode"] for r in cat.query_dicts("SELECT decode FROM captions")}
    said = [m for r in caplog.records if "fast path static_graph off" in (m := r.getMessage())]  # the driver's log
    assert len(said) == 1 and "probe tokens were not the model's own choice" in said[0]
    assert event["stage"] == "caption" and event["kind"] == "FastPathWarning" and event["count"] == 1
    assert "probe tokens were not the model's own choice" in event["message"] and stored == {"default"}


def test_warnings_survive_a_stage_that_leaves_no_row(tmp_path):
    """A stage that turns its whole batch into nothing (a source whose every shot was trimmed away)
    still hands its warnings, and those of earlier stages, to the driver: on a carrier row that later
    stages pass through untouched and the commit counts into events without writing a source or clip."""
    from vidcorpus.catalog.store import Catalog
    from vidcorpus.config import Config
    from vidcorpus.schemas import empty_row, rows_to_table
    from vidcorpus.stage import Stage

    class Vanishing(Stage):
        name = "vanishing"

        def process_rows(self, rows):
            warnings.warn("every shot trimmed away", RuntimeWarning)
            return []

    class Next(Stage):
        name = "next"
        seen: list = []

        def process_rows(self, rows):
            Next.seen.extend(rows)
            return rows

    earlier = json.dumps([{"stage": "probe", "kind": "UserWarning", "message": "odd header", "count": 2}])
    batch = rows_to_table([empty_row(source_id="s1", media_type="video", events_json=earlier),
                           empty_row(source_id="s2", media_type="video")])
    out = Next(Config())(Vanishing(Config())(batch)).to_pylist()
    assert Next.seen == [] and len(out) == 1 and out[0]["source_id"] is None
    carried = {(e["stage"], e["message"]): e["count"] for e in json.loads(out[0]["events_json"])}
    assert carried == {("probe", "odd header"): 2, ("vanishing", "every shot trimmed away"): 1}
    with Catalog(tmp_path / "c.duckdb") as cat:
        cat.begin_run("r", "pipeline", "{}", "test")
        cat.commit_results("r", out)
        assert sorted((e["stage"], e["count"]) for e in cat.events("r")) == [("probe", 2), ("vanishing", 1)]
        assert cat.query_dicts("SELECT count(*) AS n FROM sources")[0]["n"] == 0
