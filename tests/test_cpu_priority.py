"""The CPU stages' tasks run niced (ray.task_nice), so the threads that feed the GPUs win the cores."""

from __future__ import annotations

import json
import os

import pytest

from vidcorpus.config import load_config
from vidcorpus.cpu_priority import lower_priority

pytestmark = pytest.mark.skipif(not hasattr(os, "getpriority"), reason="no nice values on this OS")


def test_lower_priority_only_raises_the_niceness():
    import threading

    seen = {}

    def worker():  # its own thread: Linux keeps the nice value per thread, and it cannot be lowered back
        start = os.getpriority(os.PRIO_PROCESS, 0)
        lower_priority(start + 3)
        seen["raised"] = os.getpriority(os.PRIO_PROCESS, 0) - start
        lower_priority(start + 1)  # lower than now: left as it is
        seen["kept"] = os.getpriority(os.PRIO_PROCESS, 0) - start
        lower_priority(0)
        seen["off"] = os.getpriority(os.PRIO_PROCESS, 0) - start

    if os.getpriority(os.PRIO_PROCESS, 0) > 16:
        pytest.skip("this test runs niced already: no room to raise it by 3")
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    if seen["raised"] == 0:
        pytest.skip("this container refuses nice values")
    assert seen == {"raised": 3, "kept": 3, "off": 3}


@pytest.mark.parametrize("nice", [18, 0])
def test_cpu_stage_tasks_run_at_the_configured_niceness(tmp_path, nice):
    import ray

    from vidcorpus.jobs.curate.pipeline import build_dataset, init_ray
    from vidcorpus.schemas import empty_row
    from vidcorpus.stage import Resources, Stage

    class NiceProbe(Stage):
        name = "nice_probe"
        resources = Resources(cpus=0.5)

        def process_rows(self, rows):
            return [dict(r, text=json.dumps({"nice": os.getpriority(os.PRIO_PROCESS, 0)})) for r in rows]

    cfg = load_config(None, ["ray.num_cpus=2", f"ray.task_nice={nice}"], workdir=str(tmp_path / "w"))
    ray.shutdown()
    init_ray(cfg)
    try:
        base = ray.get(ray.remote(lambda: os.getpriority(os.PRIO_PROCESS, 0)).remote())  # a plain worker's
        out = build_dataset(cfg, [empty_row(source_id=f"s{i}") for i in range(4)], 0.0, 2.0, [NiceProbe]).take_all()
    finally:
        ray.shutdown()
    got = {json.loads(r["text"])["nice"] for r in out}
    if nice and base >= nice:
        pytest.skip(f"Ray's workers start at niceness {base} here: no room above it")
    # Ray starts its workers at 15 (RAY_worker_niceness) on an un-niced machine: the tasks go above it
    assert got == ({nice} if nice else {base}), (got, base)


def test_the_splitter_s_chunk_tasks_run_niced(tmp_path):
    import ray

    from vidcorpus.ingest.split_chunks import run_chunks

    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        base = ray.get(ray.remote(lambda: os.getpriority(os.PRIO_PROCESS, 0)).remote())
        got = run_chunks(0.5, 18)(lambda k: (k, os.getpriority(os.PRIO_PROCESS, 0)), [(1,), (2,)])
    finally:
        ray.shutdown()
    if base >= 18:
        pytest.skip(f"Ray's workers start at niceness {base} here: no room above it")
    assert [k for k, _ in got] == [1, 2] and {n for _, n in got} == {18}


@pytest.mark.parametrize("actor_nice", [0, 17])
def test_model_actors_start_at_ray_actor_nice_and_tasks_above_it(tmp_path, actor_nice):
    """The stream's model actors and the caption actors start at ray.actor_nice (Ray's per-worker
    RAY_worker_niceness, no privilege needed), the CPU stages' tasks at ray.task_nice: the threads that
    feed the GPUs win the cores (a caption batch beside four x264 tasks: 1.22 to 1.23x its time alone
    with the actor at 0, 1.86 to 2.1x at Ray's 15, 2-core box). Without it the stream's actor ran at
    the tasks' niceness: Ray started it in a worker a niced task had used."""
    import ray

    from vidcorpus.jobs.curate.caption_pool import CaptionPool
    from vidcorpus.jobs.curate.pipeline import build_dataset, caption_actor_args, init_ray
    from vidcorpus.schemas import empty_row
    from vidcorpus.stage import Resources, Stage
    from vidcorpus.stage_settings import resolve

    class Probe(Stage):  # notes its worker's niceness in the row's text, under its name
        def process_rows(self, rows):
            nice = os.getpriority(os.PRIO_PROCESS, 0)
            return [dict(r, text=json.dumps({**json.loads(r.get("text") or "{}"), self.name: nice})) for r in rows]

    class TaskProbe(Probe):
        name = "task_probe"
        resources = Resources(cpus=0.5)

    class ActorProbe(Probe):
        name = "actor_probe"
        resources = Resources(cpus=0.5, actor=True)

    class CaptionProbe(Probe):
        name = "caption_probe"
        resources = Resources(cpus=0.25, actor=True)

    cfg = load_config(None, ["ray.num_cpus=2", "ray.task_nice=18", f"ray.actor_nice={actor_nice}"],
                      workdir=str(tmp_path / "w"))
    ray.shutdown()
    init_ray(cfg)
    try:
        rows = [empty_row(source_id=f"s{i}") for i in range(4)]
        out = build_dataset(cfg, rows, 0.0, 2.0, [TaskProbe, ActorProbe]).take_all()
        plans = resolve([CaptionProbe], cfg, 0.0, 2.0)
        pool = CaptionPool(cfg, [CaptionProbe], plans[CaptionProbe], caption_actor_args(cfg, [CaptionProbe], plans), 1)
        pool.add([dict(r, kept=True) for r in rows])
        captioned = [r for t in pool.flush(timeout=120) for r in t.to_pylist()]
    finally:
        ray.shutdown()
    assert [json.loads(r["text"]) for r in out] == [{"task_probe": 18, "actor_probe": actor_nice}] * 4
    # (the pool's set-up call comes back as a carrier row of its set-up event: no clip)
    assert [json.loads(r["text"]) for r in captioned if r["source_id"]] == [{"caption_probe": actor_nice}] * 4
