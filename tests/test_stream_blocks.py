"""The CPU stages after a model stage run in many tasks, not one per model batch."""

from __future__ import annotations

from typing import ClassVar

from vidcorpus.config import load_config
from vidcorpus.stage import Resources, Stage


def fake_stages():
    """Stage classes defined in a function: Ray's workers get them by value (a test module is not
    importable there)."""

    class BatchModel(Stage):
        """Stands for the CLIP actor: a stateful stage taking big batches (its rows pass through)."""

        name = "clip"
        resources: ClassVar[Resources] = Resources(cpus=0.25, actor=True)
        batch_rows: ClassVar[int] = 24

        def process_rows(self, rows):
            return rows


    class BlockCounter(Stage):
        """Stands for extraction: a task stage taking whole blocks (each call's rows are in its stamp)."""

        name = "extract"
        resources: ClassVar[Resources] = Resources(cpus=0.5)
        whole_blocks: ClassVar[bool] = True

        def process_rows(self, rows):
            return rows

    return BatchModel, BlockCounter


def test_a_model_batch_reaches_the_next_cpu_stage_in_small_blocks(tmp_path):
    per_block = 4
    import ray

    from vidcorpus import stage_clock
    from vidcorpus.jobs.curate.pipeline import add_stages, init_ray
    from vidcorpus.schemas import rows_to_table

    cfg = load_config(None, ["ray.num_cpus=2", f"ray.clip_rows_per_block={per_block}"], workdir=str(tmp_path / "w"))
    ray.shutdown()
    try:
        init_ray(cfg)
        rows = [{"source_id": f"s{i}", "clip_id": f"c{i}"} for i in range(24)]
        ds = add_stages(cfg, ray.data.from_arrow([rows_to_table(rows)]), list(fake_stages()))
        out = ds.take_all()
    finally:
        ray.shutdown()
    assert sorted(r["clip_id"] for r in out) == sorted(r["clip_id"] for r in rows)
    sizes = {s["rows_in"] for r in out for s in stage_clock.decode(r["stage_times"]) if s["stage"] == "extract"}
    # 24 rows of one model batch: tasks of at most 4 (six of them can run side by side), not one task
    # encoding all 24 in turn (what extraction did on the H100 node before)
    assert sizes and max(sizes) <= per_block, sizes
