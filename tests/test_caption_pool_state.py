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


def test_the_driver_says_the_caption_actor_is_still_setting_up_then_that_a_batch_is_out(tmp_path, caplog):
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
            time.sleep(4.0)

        def process_rows(self, rows):
            time.sleep(3.0)
            return [dict(r, text="captioned") for r in rows]

    cfg = load_config(None, ["captioning.read_ahead=false"], workdir=str(tmp_path / "w"))
    plan = StagePlan("caption", True, 0.5, 0.0, None, 2, 1)
    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False)
    caplog.set_level(logging.INFO, logger="vidcorpus.jobs.curate.caption_pool")
    try:
        # one batch in flight an actor: the first full batch waits for the set-up call, as run 11's did
        pool = CaptionPool(cfg, [SlowToSetUp], plan, {"num_cpus": 0.5}, in_flight_per_actor=1, quiet_s=1.0)
        assert "1 of 1 caption actors still setting up" in pool.describe()
        rows = [empty_row(source_id="s", clip_id=f"c{i}", kept=True) for i in range(3)]
        done = pool.add(rows[:2])  # the driver waits for the set-up here, saying so every quiet_s
        setting_up = [r.message for r in caplog.records if "still setting up" in r.message]
        assert setting_up and setting_up[0].startswith("captioning: 1 of 1 caption actors still setting up")
        caplog.clear()
        done += pool.add(rows[2:])  # the actor is busy with the first batch: this clip waits
        assert re.fullmatch(r"captioning: 1 caption batch out \(the oldest for \d+ s\); 1 kept clips queued",
                            pool.describe())
        done += pool.flush()
        assert pool.describe() is None  # nothing out, nothing queued
        pool.close()
    finally:
        ray.shutdown()
    out = [m.message for m in caplog.records]
    assert any(m.startswith("captioning: 1 caption batch out (the oldest for ") for m in out), out
    assert not any("setting up" in m for m in out)  # set up once, for the whole job
    assert sorted(r["clip_id"] for t in done for r in t.to_pylist() if r.get("clip_id")) == ["c0", "c1", "c2"]


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> str:
    from vidcorpus.captioning.tiny_models import build_tiny_chat_vlm

    out = tmp_path_factory.mktemp("vlm") / "qwen25"
    build_tiny_chat_vlm(str(out))
    return str(out)


def test_the_caption_actor_logs_its_set_up_steps(tiny_vlm, tmp_path, caplog):
    """What a caption actor writes to its worker log while it sets up: the models, the compile cache
    (on a GPU, or with compile on), each warm-up batch and the total, with their times."""
    from vidcorpus.captioning.caption_stage import CaptionStage
    from vidcorpus.config import load_config
    from vidcorpus.jobs.curate.caption_pool import StageChain
    from vidcorpus.schemas import rows_to_table

    cfg = load_config(None, ["captioning.qa=false", "captioning.frames_per_clip=2", "captioning.max_new_tokens=4",
                             "captioning.short_max_new_tokens=2", "captioning.warmup=true", "captioning.batch_size=2",
                             f"models.captioner={tiny_vlm}"], workdir=str(tmp_path / "w"))
    caplog.set_level(logging.INFO, logger="vidcorpus.captioning.setup")
    chain = StageChain(cfg, [CaptionStage])
    assert logging.getLogger("vidcorpus.captioning.setup").handlers  # the actor's stderr: its worker log
    chain(rows_to_table([]))  # the pool's first call: the set-up
    lines = [r.message for r in caplog.records if r.name == "vidcorpus.captioning.setup"]
    assert lines[0].startswith("caption set-up: models loaded on cpu in ")
    assert any(m.startswith("caption set-up: warm-up batch of 2 clips (") for m in lines), lines
    assert lines[-1].startswith("caption set-up: done in ")

