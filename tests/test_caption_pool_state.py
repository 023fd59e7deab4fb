"""While caption actors set up or caption, a driver that gets no caption back for a while says where
captioning stands; the caption actor's set-up says what it did and how long each step took.

On an H100 node (run 11) a caption actor set up for over 435 s while the stream finished at 378 s:
the job then sat silent, the GPU idle, with nothing in the driver's output or the report to say why.
"""

from __future__ import annotations

import logging
import re
import time

import pytest

from vidcorpus.schemas import empty_row


def test_while_the_actor_sets_up_the_driver_queues_batches_and_says_where_captioning_stands(tmp_path, caplog):
    """Kept clips arriving while the caption actor still sets up: one batch goes out (it reads its
    frames meanwhile), the rest wait in the driver, which returns to the stream at once (it used to
    wait for the set-up there, stalling the whole ingest behind a compile); then batches of at most
    batch_rows go out, and with none back for quiet_s the driver says what it waits on."""
    import ray

    from vidcorpus.config import load_config
    from vidcorpus.jobs.curate.caption_pool import CaptionPool
    from vidcorpus.stage import Resources, Stage
    from vidcorpus.stage_settings import StagePlan

    class SlowToSetUp(Stage):  # a real actor whose set-up and batches take seconds, as a compile does
        name = "caption"
        resources = Resources(cpus=0.5, actor=True)
        kept_only = True

        def setup(self):
            time.sleep(3.0)

        def process_rows(self, rows):
            time.sleep(1.0)
            return [dict(r, text=f"captioned in a batch of {len(rows)}") for r in rows]

    cfg = load_config(None, ["captioning.read_ahead=false"], workdir=str(tmp_path / "w"))
    plan = StagePlan("caption", True, 0.5, 0.0, None, 2, 1)
    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False)
    caplog.set_level(logging.INFO, logger="vidcorpus.jobs.curate.caption_pool")
    try:
        pool = CaptionPool(cfg, [SlowToSetUp], plan, {"num_cpus": 0.5}, in_flight_per_actor=1, quiet_s=0.5)
        assert "1 of 1 caption actors still setting up" in pool.describe()
        rows = [empty_row(source_id="s", clip_id=f"c{i}", kept=True) for i in range(6)]
        done = pool.add(rows)
        assert pool.setting_up, "the driver waited for the set-up"
        assert re.fullmatch(r"captioning: 1 of 1 caption actors still setting up \(loading models, compiling; "
                            r"\d+ s so far\); 1 caption batch out \(the oldest for \d+ s\); 4 kept clips queued",
                            pool.describe()), pool.describe()
        done += pool.flush(timeout=120)  # waited for in quiet_s slices, saying why
        assert not pool.busy and pool.describe() is None  # nothing out, nothing queued
        # once set up, the driver waits only when more than QUEUED_BATCHES batches a slot are queued:
        # 12 rows, cap 4 x 1 x 2 = 8: one batch goes out, two more after a batch each came back
        more = [empty_row(source_id="s", clip_id=f"d{i}", kept=True) for i in range(12)]
        back = pool.add(more)
        assert len(pool.queued) == 6 and sum(t.num_rows for t in back) == 4
        done += back + pool.flush(timeout=120)
        assert not pool.busy
        pool.close()
    finally:
        ray.shutdown()
    said = [m.message for m in caplog.records]
    assert any(m.startswith("captioning: 1 of 1 caption actors still setting up") for m in said), said
    assert any(m.startswith("captioning: 1 caption batch out (the oldest for ") for m in said), said
    captioned = [r for t in done for r in t.to_pylist() if r.get("clip_id")]
    assert sorted(r["clip_id"] for r in captioned) == sorted([f"c{i}" for i in range(6)] + [f"d{i}" for i in range(12)])
    assert {r["text"] for r in captioned} == {"captioned in a batch of 2"}  # queued rows go out in batch_rows


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> str:
    from vidcorpus.captioning.tiny_models import build_tiny_chat_vlm

    out = tmp_path_factory.mktemp("vlm") / "qwen25"
    build_tiny_chat_vlm(str(out))
    return str(out)


def test_the_caption_actor_logs_its_set_up_steps(tiny_vlm, tmp_path, capfd):
    """What a caption actor writes to its stderr (its Ray worker log) while it sets up: the models,
    the compile cache (on a GPU, or with compile on), each warm-up batch and the total, with times."""
    from vidcorpus.captioning.caption_stage import CaptionStage
    from vidcorpus.config import load_config
    from vidcorpus.jobs.curate.caption_pool import StageChain
    from vidcorpus.schemas import rows_to_table

    cfg = load_config(None, ["captioning.qa=false", "captioning.frames_per_clip=2", "captioning.max_new_tokens=4",
                             "captioning.short_max_new_tokens=2", "captioning.warmup=true", "captioning.batch_size=2",
                             f"models.captioner={tiny_vlm}"], workdir=str(tmp_path / "w"))
    log = logging.getLogger("vidcorpus.captioning.setup")
    before = list(log.handlers), log.level
    log.handlers[:] = []  # a handler an earlier test's chain left would write to that test's stderr
    try:
        chain = StageChain(cfg, [CaptionStage])  # as in a caption actor: its set-up lines go to stderr
        capfd.readouterr()
        chain(rows_to_table([]))  # the pool's first call: the set-up
        lines = [ln.split(" ", 2)[-1] for ln in capfd.readouterr().err.splitlines() if "caption set-up:" in ln]
    finally:
        log.handlers[:], log.level = before
    assert re.fullmatch(r"caption set-up: models loaded on \w+ in [\d.]+ s", lines[0]), lines
    assert any(re.fullmatch(r"caption set-up: warm-up batch of 2 clips \(\d+x\d+, 2 frames\) in [\d.]+ s", ln)
               for ln in lines), lines
    assert re.fullmatch(r"caption set-up: done in [\d.]+ s", lines[-1]), lines
