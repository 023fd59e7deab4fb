"""What each stage of a run gets from Ray: its declaration, overridden by the config, resolved once.

A stage class declares what one worker needs (``Stage.resources``) and how many rows it takes per
call (``Stage.batch_rows``); ``stages.<name>`` in the config overrides any of them for a run
(``--set stages.caption.batch_rows=512``). The runner reads only ``resolve`` below, so what a user
sets is what Ray is asked for: CPUs, GPUs and memory per worker, rows per batch, actor replicas.

GPU stages (a declaration or setting with ``gpus > 0``) get one actor per GPU by default, and when
several GPU stages are alive at once (a streaming job needs all of its actor pools at the same
time) their fractions are scaled so that they fit one GPU together: two stages asking for a whole
GPU each would otherwise wait forever on a one-GPU machine. Without GPUs they run on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from vidcorpus.config import Config, ConfigError, StageSettings

# Rows per call of a model stage when neither the stage nor the config says: what the benchmarks
# found for an H100 (captioning: 5x generate's tokens/s from batch 256 up; docs/benchmarks.md), and
# small batches on CPUs, where a big batch only delays the first results.
GPU_BATCH_ROWS = {"caption": 512, "clip": 256}
CPU_BATCH_ROWS = {"caption": 8, "clip": 64}
# Rows per call of a whole-blocks stage whose tasks ask for a GPU share where ray.clip_rows_per_block
# is 0 (blocks as they come: about a source's clips).
WHOLE_BLOCK_ROWS_ON_GPU = 64


@dataclass(frozen=True)
class StagePlan:
    """The resolved settings of one stage for one run."""

    name: str
    actor: bool
    cpus: float
    gpus: float
    memory_mb: int | None
    batch_rows: int | None  # None: whole Ray Data blocks (Stage.whole_blocks)
    replicas: int  # actor pool size (tasks: 0, Ray schedules as many as resources allow)

    def ray_args(self) -> dict:
        """Keyword arguments of Ray's map_batches / ray.remote for one worker."""
        args: dict = {"num_cpus": self.cpus}
        if self.gpus:
            args["num_gpus"] = self.gpus
        if self.memory_mb:
            args["memory"] = int(self.memory_mb) * 1024 * 1024
        return args


def check_names(cfg: Config, stages: list) -> None:
    """A ``stages.<name>`` entry that names no stage of the run is a typo: one clear error."""
    known = {s.name for s in stages}
    unknown = sorted(set(cfg.stages) - known - set(GPU_BATCH_ROWS) - SWITCHABLE_STAGES)
    if unknown:
        raise ConfigError(f"stages.{unknown[0]}: no such stage (stages: {', '.join(sorted(known))})")


# Scores that only exist when the CLIP scorer runs (filters/clip_scores.py): its own, and the
# duplicate scores, which compare the embeddings and content hashes it writes.
CLIP_SCORE_PREFIXES = ("aesthetic", "clip_text", "dup_")
# Stages a switch may take out of a run: their settings stay valid in a shared config file.
SWITCHABLE_STAGES = {"clip", "caption", "caption_align"}


def check_switches(cfg: Config, recipe) -> None:
    """A stage switched off (``filters.clip_scores``) whose output the run still needs is one clear
    error before anything is written, not clips silently decided on "score missing" or dedup without
    embeddings. ``recipe``: the one the run will decide with (``sync.recipe_in_force``)."""
    if cfg.filters.clip_scores:
        return
    if cfg.filters.dedup:
        raise ConfigError("filters.dedup compares the CLIP embeddings that filters.clip_scores=false does not "
                          "compute: set filters.dedup=false as well")
    read = [n for n in recipe.scores_needed if n.startswith(CLIP_SCORE_PREFIXES)]
    if read:
        raise ConfigError(f"recipe {recipe.id} reads {', '.join(read)}, which filters.clip_scores=false does not "
                          "compute: turn it on or use a recipe without CLIP or duplicate scores")


def check_task_shares(cfg: Config, stages: list) -> None:
    """A task stage set to a whole GPU or more beside GPU model actors could never be scheduled while
    they live: one clear error before anything is written (``resolve`` keeps smaller shares room)."""
    def gpus(s) -> float:
        setting = cfg.stages.get(s.name)
        return setting.gpus if setting is not None and setting.gpus is not None else s.resources.gpus

    if not any(s.resources.actor and gpus(s) > 0 for s in stages):
        return
    for s in stages:
        if not s.resources.actor and gpus(s) >= 1.0:
            raise ConfigError(f"stages.{s.name}.gpus={gpus(s):g}: a task stage's GPU share must stay below 1, "
                              "or its tasks wait forever beside the model actors (e.g. 0.01)")


def resolve(stages: list, cfg: Config, gpus_available: float, cpus_available: float | None = None,
            cpus_without_gpu: float = 0.0) -> dict[type, StagePlan]:
    """The plan of every stage class of a run on a cluster with this many GPUs (and CPUs: how many
    tasks of a stage can run at once, for the GPU share its tasks may hold together).
    ``cpus_without_gpu``: CPUs on nodes with no GPU. Where there are any, a task stage keeps its
    CPU-only declaration (a GPU share it would ask for by itself, split's for TransNetV2, would keep
    all its tasks off those nodes); a share set in ``stages.<name>.gpus`` still applies."""
    n_gpus = int(gpus_available)
    cpus_available = cpus_available or float(os.cpu_count() or 1)
    declared: dict[type, dict] = {}
    for s in stages:
        res = s.resources if cpus_without_gpu > 0 and not s.resources.actor else s.resources_for(cfg)
        setting = cfg.stages.get(s.name)
        values = {"cpus": res.cpus, "gpus": res.gpus, "memory_mb": res.memory_mb,
                  "batch_rows": getattr(s, "batch_rows", None), "replicas": None}
        if setting is not None:
            values.update({k: v for k, v in setting.model_dump().items() if v is not None})
        declared[s] = values
    gpu_stages = [s for s in stages if s.resources.actor and declared[s]["gpus"] > 0]
    gpu_tasks = [s for s in stages if not s.resources.actor and declared[s]["gpus"] > 0]
    # Tasks with a GPU share (split with TransNetV2) hold at most their share times the tasks that fit
    # the CPUs; the actor pools get the rest, or a task could never be scheduled while they live.
    reserved = sum(declared[s]["gpus"] * max(1.0, cpus_available / max(declared[s]["cpus"], 0.01))
                   for s in gpu_tasks) / max(n_gpus, 1)
    room = max(0.5, 1.0 - reserved)
    # One task of the largest share must still fit beside the actor pools on a GPU they occupy.
    widest = max(gpu_tasks, key=lambda s: declared[s]["gpus"], default=None)
    if widest is not None and n_gpus >= 1 and gpu_stages:
        check_task_shares(cfg, stages)
        room = min(room, 1.0 - declared[widest]["gpus"])
    total = sum(declared[s]["gpus"] for s in gpu_stages)
    scale = room / total if total > room else 1.0  # all GPU pools fit one GPU at once
    plans: dict[type, StagePlan] = {}
    for s in stages:
        v = declared[s]
        on_gpu = n_gpus >= 1 and (s in gpu_stages or s in gpu_tasks)
        gpus = round(v["gpus"] * (scale if s in gpu_stages else 1.0), 6) if on_gpu else 0.0
        defaults = GPU_BATCH_ROWS if on_gpu else CPU_BATCH_ROWS
        if v["batch_rows"] is None and getattr(s, "whole_blocks", False):
            # whole blocks; but Ray Data wants a batch size from a task that asks for a GPU (an NVDEC
            # share, filters.source_decoder): then the blocks' own size after the splitter
            batch = (cfg.ray.clip_rows_per_block or WHOLE_BLOCK_ROWS_ON_GPU) if on_gpu and gpus > 0 else None
        else:
            batch = v["batch_rows"] or defaults.get(s.name) or (8 if s.resources.actor else 4)
        if s.resources.actor:
            replicas = v["replicas"] or (n_gpus if on_gpu else 1)
        else:
            replicas = 0
        plans[s] = StagePlan(s.name, s.resources.actor, float(v["cpus"]), gpus, v["memory_mb"],
                             None if batch is None else int(batch), int(replicas))
    return plans


def pin_plans(cfg: Config, plans: dict[type, StagePlan]) -> Config:
    """The config with each stage's resolved batch_rows written into ``stages``, so workers (which
    size their model batches from it: captioning.batch_size None) see what the runner planned."""
    stages = dict(cfg.stages)
    for plan in plans.values():
        current = stages.get(plan.name) or StageSettings()
        stages[plan.name] = current.model_copy(update={"batch_rows": plan.batch_rows})
    return cfg.model_copy(update={"stages": stages})


def cpus_on_nodes_without_gpu(nodes: list[dict]) -> float:
    """CPUs of the alive nodes that have no GPU (``ray.nodes()``'s entries)."""
    return float(sum(n.get("Resources", {}).get("CPU", 0.0) for n in nodes
                     if n.get("Alive") and not n.get("Resources", {}).get("GPU")))


def local_gpus() -> int:
    """CUDA devices this process sees (0 without torch or CUDA)."""
    try:
        import torch  # inside: torch (seconds to import) only when a plan counts this process's GPUs

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch, no driver: the CPU
        return 0
