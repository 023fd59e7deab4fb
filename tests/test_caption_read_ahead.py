"""A caption actor reads its next batch's frames while the current batch captions (the actor is
called from two threads; the models run one batch at a time), and captions as before."""

from __future__ import annotations

import threading

import av
import numpy as np
import pytest

from vidcorpus.captioning.captioner import Captioner

WAIT_S = 30.0


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> str:
    from vidcorpus.captioning.tiny_models import build_tiny_chat_vlm

    out = tmp_path_factory.mktemp("vlm") / "qwen25"
    build_tiny_chat_vlm(str(out))
    return str(out)


def _clip(path, seed: int) -> str:
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        for i in range(10):
            arr = np.random.default_rng(seed * 100 + i).integers(0, 256, (64, 96, 3), dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return str(path)


def _config(tiny_vlm: str, read_ahead: bool):
    from vidcorpus.config import Config

    cfg = Config()
    return cfg.model_copy(update={
        "models": cfg.models.model_copy(update={"captioner": tiny_vlm}),
        "captioning": cfg.captioning.model_copy(update={"qa": False, "frames_per_clip": 4, "max_new_tokens": 6,
                                                        "short_max_new_tokens": 4, "read_ahead": read_ahead})})


def _batches(tmp_path) -> list:
    from vidcorpus.schemas import empty_row, rows_to_table

    return [rows_to_table([empty_row(source_id="s", clip_id=f"c{b}{i}", kept=True,
                                     clip_path=_clip(tmp_path / f"c{b}{i}.mp4", 10 * b + i)) for i in range(2)])
            for b in range(2)]


def _run_two_at_once(tiny_vlm, tmp_path, monkeypatch, read_ahead: bool, wait_s: float = WAIT_S) -> tuple[bool, dict]:
    """Two batches through one chain from two threads, as a threaded caption actor gets them; the first
    batch's captioning waits (at most ``wait_s``) until the second batch's frames have been read.
    Returns whether they were, and the captions by clip."""
    from vidcorpus.captioning.caption_stage import CaptionStage
    from vidcorpus.jobs.curate.caption_pool import StageChain

    chain = StageChain(_config(tiny_vlm, read_ahead), [CaptionStage])
    first, second = _batches(tmp_path)
    chain(first.slice(0, 0))  # set-up, as the pool's first (empty) call
    second_read = threading.Event()
    read_each = CaptionStage._read_each

    def reading(self, rows):
        out = read_each(self, rows)
        if any(r["clip_id"].startswith("c1") for r in rows):
            second_read.set()
        return out

    overlapped = []
    captioning = threading.Event()
    generate_kinds = Captioner.generate_kinds

    def generating(self, frames, limits):
        if not captioning.is_set():  # the first batch to caption: the second's frames should arrive meanwhile
            captioning.set()
            overlapped.append(second_read.wait(wait_s))
        return generate_kinds(self, frames, limits)

    monkeypatch.setattr(CaptionStage, "_read_each", reading)
    monkeypatch.setattr(Captioner, "generate_kinds", generating)
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(first=chain(first)))
    t.start()
    captioning.wait(wait_s)  # the first batch holds the model before the second comes
    out["second"] = chain(second)
    t.join()
    rows = [r for table in out.values() for r in table.to_pylist()]
    captions = {r["clip_id"]: [c["text"] for c in r["captions"]] for r in rows}
    if read_ahead:
        _check_stamps(rows)
    return overlapped[0], captions


def _check_stamps(rows: list[dict]) -> None:
    """Each row's stamps: the read-ahead as a step of its own, then the stage from when it held the
    model, so the read (overlapping the batch before's turn) is not counted inside the stage."""
    from vidcorpus.stage_clock import decode

    for r in rows:
        read, caption = decode(r["stage_times"])
        assert (read["stage"], caption["stage"]) == ("caption_read", "caption")
        assert read["rows_in"] == 2 and read["end"] <= caption["start"]
    second = [decode(r["stage_times"]) for r in rows if r["clip_id"].startswith("c1")][0]
    first = [decode(r["stage_times"]) for r in rows if r["clip_id"].startswith("c0")][0]
    assert second[0]["end"] <= first[1]["end"]  # the second batch was read before the first's turn ended
    assert first[1]["end"] <= second[1]["start"]  # and held the model only after it


def test_the_next_batch_is_read_while_one_captions_with_the_same_captions(tiny_vlm, tmp_path, monkeypatch):
    overlapped, captions = _run_two_at_once(tiny_vlm, tmp_path, monkeypatch, read_ahead=True)
    assert overlapped, "the second batch's frames were not read while the first captioned"
    assert sorted(captions) == ["c00", "c01", "c10", "c11"]
    monkeypatch.undo()
    _, alone = _run_two_at_once(tiny_vlm, tmp_path, monkeypatch, read_ahead=False, wait_s=1.0)
    assert captions == alone  # the same clips get the same captions either way


def test_without_read_ahead_the_next_batch_waits_for_the_model(tiny_vlm, tmp_path, monkeypatch):
    """The check above can fail: with captioning.read_ahead off the second batch reads in its turn."""
    overlapped, _ = _run_two_at_once(tiny_vlm, tmp_path, monkeypatch, read_ahead=False, wait_s=3.0)
    assert not overlapped


def test_the_runs_caption_actor_reads_a_batch_while_the_one_before_captions(tiny_vlm, tmp_path):
    """Through Ray, as a run creates it (CaptionPool): two batches submitted at once reach the actor
    together, so the second batch's read starts before the first batch leaves the captioner. A
    one-call-at-a-time actor (the pool without max_concurrency) fails this."""
    import ray

    from vidcorpus.captioning.caption_stage import CaptionStage
    from vidcorpus.jobs.curate.caption_pool import CaptionPool
    from vidcorpus.stage_clock import decode
    from vidcorpus.stage_settings import StagePlan

    cfg = _config(tiny_vlm, read_ahead=True)
    # long captions, so the first batch holds the model for seconds: the second call reaches the
    # actor well inside that on a loaded machine
    cfg = cfg.model_copy(update={"captioning": cfg.captioning.model_copy(update={"max_new_tokens": 48,
                                                                                 "min_new_tokens": 48})})
    first, second = _batches(tmp_path)
    plan = StagePlan("caption", True, 1.0, 0.0, None, 2, 1)
    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        pool = CaptionPool(cfg, [CaptionStage], plan, {"num_cpus": 1.0}, in_flight_per_actor=2)
        pool.flush()  # the set-up call
        pool.add(first.to_pylist())  # a full batch (2 rows) goes out at once, and so does the next
        done = pool.add(second.to_pylist()) + pool.flush()
        pool.close()
    finally:
        ray.shutdown()
    stamps = {r["clip_id"]: decode(r["stage_times"]) for t in done for r in t.to_pylist() if r.get("clip_id")}
    assert sorted(stamps) == ["c00", "c01", "c10", "c11"]
    (_, caption_1), (read_2, _) = stamps["c00"], stamps["c10"]
    assert read_2["start"] < caption_1["end"]
