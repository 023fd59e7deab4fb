"""The job runner: one Ray Data stream per run, composed from stage classes, committed by the driver.

download -> probe -> split -> technical -> motion -> clip/aesthetic -> decide -> extract (kept clips
only: filter before you encode) -> the driver commits rows, dedups each group of whole sources and
marks them done (vidcorpus/jobs/curate/commit.py) -> caption actors caption the clips still kept
(vidcorpus/jobs/curate/caption_pool.py) -> shard writer tasks -> the driver commits shards. Each stage's Ray
resources and batch size come from vidcorpus/stage_settings.py. Data flows one way; stages never
touch the catalog.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from dataclasses import dataclass, field

import pyarrow as pa

from vidcorpus import __version__
from vidcorpus.catalog.stage_stats_table import write as write_stage_stats
from vidcorpus.catalog.store import Catalog
from vidcorpus.config import Config
from vidcorpus.cpu_priority import actor_priority, lower_priority
from vidcorpus.errors import storage_full
from vidcorpus.filters.frame_model_stages import preflight_frame_models, with_frame_model_stages
from vidcorpus.ids import new_run_id
from vidcorpus.ingest.sources import read_inputs
from vidcorpus.ingest import transnet
from vidcorpus.jobs.curate.caption_pool import CaptionPool
from vidcorpus.jobs.curate.commit import RunCommitter
from vidcorpus.jobs.curate.sync import adopt_recipe, complete_pending, pin_recipe, recipe_in_force
from vidcorpus.jobs.models import preflight_pipeline, resolve_models
from vidcorpus.nvdec import without_gpu_note
from vidcorpus.presets import curation_models
from vidcorpus.schemas import rows_to_table
from vidcorpus.stage import Stage
from vidcorpus.stage_settings import (check_names, check_switches, check_task_shares, cpus_on_nodes_without_gpu,
                                      pin_plans, resolve)
from vidcorpus.stage_stats import StageRow, StageStats

logger = logging.getLogger(__name__)

CAPTION_STAGES = ("caption", "caption_align")  # fed by the driver after dedup (vidcorpus/jobs/curate/caption_pool.py)
WORKER_ENV = {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "TOKENIZERS_PARALLELISM": "false"}


def pipeline_stages() -> list[type[Stage]]:
    """The stage classes of a run, in order."""
    from vidcorpus.captioning.caption_stage import CaptionStage  # inside: importing this module loads no model library
    from vidcorpus.filters.clip_scores import CaptionAlignStage, ClipScoreStage
    from vidcorpus.filters.recipes import DecideStage
    from vidcorpus.filters.motion import MotionStage
    from vidcorpus.filters.technical import TechnicalStage
    from vidcorpus.ingest.download import DownloadStage
    from vidcorpus.ingest.extract import ExtractStage
    from vidcorpus.ingest.probe import ProbeStage
    from vidcorpus.ingest.split_stage import SplitStage

    # Filter before you encode: the scorers read unextracted clips from their source, and ExtractStage
    # encodes only the clips the recipe keeps (kept_only), before captioning reads them.
    return [DownloadStage, ProbeStage, SplitStage, TechnicalStage, MotionStage, ClipScoreStage,
            DecideStage, ExtractStage, CaptionStage, CaptionAlignStage]


@dataclass
class RunSummary:
    run_id: str
    sources_seen: int = 0
    sources_skipped: int = 0
    rows_committed: int = 0
    failures: int = 0
    shards: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    catalog: str = ""
    shard_root: str = ""
    timeline: StageStats = field(default_factory=StageStats, repr=False)  # where the time goes (stage_stats.py)
    stages: list[StageRow] = field(default_factory=list, repr=False)  # its per-stage rows, at the end


def init_ray(cfg: Config) -> None:
    # inside: ray loads only when a run streams (jobs.train, tests and bench scripts import this module without it)
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    kwargs: dict = {"ignore_reinit_error": True, "runtime_env": {"env_vars": WORKER_ENV}, "log_to_driver": False}
    if cfg.ray.address:
        ray.init(address=cfg.ray.address, **kwargs)
    else:
        ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, **kwargs)


def _run_stage(stage_cls: type[Stage], cfg: Config, batch: pa.Table) -> pa.Table:
    """Task form of a stateless stage: a fresh instance per batch (setup is cheap for CPU stages), at
    the tasks' lower priority (ray.task_nice: the model actors and the driver keep theirs)."""
    lower_priority(cfg.ray.task_nice)
    return stage_cls(cfg)(batch)


def switched_on(stages: list[type[Stage]], cfg: Config) -> list[type[Stage]]:
    """The stages the config's switches leave in: ``filters.clip_scores`` (the CLIP scorer, and the
    caption alignment that reads its embeddings) and ``captioning.enabled`` (the captioner and that
    alignment)."""
    off: set[str] = set()
    if not cfg.filters.clip_scores:
        off |= {"clip", "caption_align"}
    if not cfg.captioning.enabled:
        off |= {"caption", "caption_align"}
    return [s for s in stages if s.name not in off]


def split_stages(cfg: Config) -> tuple[list[type[Stage]], list[type[Stage]]]:
    """(the stages of the Ray Data stream, the caption stages the driver feeds after dedup)."""
    stages = switched_on(with_frame_model_stages(pipeline_stages(), cfg), cfg)
    return ([s for s in stages if s.name not in CAPTION_STAGES], [s for s in stages if s.name in CAPTION_STAGES])


def build_dataset(cfg: Config, sources: list[dict], gpus_available: float = 0.0, cpus: float = 2.0,
                  stages: list[type[Stage]] | None = None, plans: dict | None = None):
    """The lazy Ray Dataset of a run: source rows in, the rows after `stages` out (default: every
    stage of the pipeline, captioning included)."""
    # inside: ray loads only when a run streams (jobs.train, tests and bench scripts import this module without it)
    import ray.data

    # Several small blocks so CPU stages run in parallel (one block per task); a few per CPU.
    per_block = max(1, min(256, len(sources) // max(1, int(4 * cpus))))
    blocks = [rows_to_table(sources[i:i + per_block]) for i in range(0, len(sources), per_block)]
    stages = with_frame_model_stages(pipeline_stages(), cfg) if stages is None else stages
    return add_stages(cfg, ray.data.from_arrow(blocks), stages, gpus_available, plans)


def add_stages(cfg: Config, ds, stages: list[type[Stage]], gpus_available: float = 0.0, plans: dict | None = None):
    """`ds` mapped through these stages: CPU stages as tasks, model stages as actor pools, each with
    the CPUs, GPUs, memory, batch size and replicas its plan says (vidcorpus/stage_settings.py)."""
    # inside: ray loads only when a run streams (jobs.train, tests and bench scripts import this module without it)
    import ray.data

    plans = plans or resolve(stages, cfg, gpus_available)
    after_model = False
    for stage_cls in stages:
        plan = plans[stage_cls]
        if after_model and not plan.actor and cfg.ray.clip_rows_per_block:
            # A model stage hands on each of its batches as one block (256 clips from the CLIP actor on
            # a GPU), and a task takes whole blocks: without this, one task would encode every kept
            # clip of the batch in turn while the other cores wait (H100 run 3: one extract worker).
            ds = ds.repartition(target_num_rows_per_block=cfg.ray.clip_rows_per_block)
        after_model = plan.actor
        if plan.actor:
            ds = ds.map_batches(stage_cls, fn_constructor_args=(cfg,), batch_format="pyarrow",
                                batch_size=plan.batch_rows, compute=ray.data.ActorPoolStrategy(size=plan.replicas),
                                **plan.ray_args(), **actor_priority(cfg.ray.actor_nice))
        else:
            ds = ds.map_batches(functools.partial(_run_stage, stage_cls, cfg), batch_format="pyarrow",
                                batch_size=plan.batch_rows, **plan.ray_args())
        if stage_cls.name == "split" and cfg.ray.clip_rows_per_block:
            # A source's clips leave the splitter as one block; small blocks spread a long source over
            # many tasks (streaming: no barrier; each decodes its stretch through the frame index).
            ds = ds.repartition(target_num_rows_per_block=cfg.ray.clip_rows_per_block)
    return ds


def run_pipeline(
    cfg: Config,
    retry_failed: bool = False,
    error_class: str | None = None,
    progress: bool = True,
) -> RunSummary:
    """Ingest, score, decide, caption, commit and shard everything in cfg.inputs not yet done."""
    t0 = time.time()
    cfg = _preflight(cfg)
    # Inputs are read before the run is recorded: a missing or malformed list is one line, no run row.
    sources = read_inputs(cfg.inputs)
    run_id = new_run_id()
    summary = RunSummary(run_id=run_id, catalog=cfg.catalog_path, shard_root=cfg.url("shards"), timeline=StageStats(t0))
    # hold=False: the driver opens the file only for each commit, so readers (`vidcorpus sql`,
    # `report`) get in between commits while the run goes on.
    catalog = Catalog(cfg.catalog_path, hold=False)
    try:  # before anything is written: a refused switch leaves the catalog as it was
        check_switches(cfg, recipe_in_force(cfg, catalog))
    except Exception:
        catalog.close()
        raise
    catalog.begin_run(run_id, "pipeline", json.dumps(cfg.model_dump(mode="json")), __version__)
    status = "failed"
    try:
        # The catalog's active recipe decides (a recipe the config names explicitly replaces it, said
        # here); the stages get its content, so a later file edit or config default cannot slip in.
        cfg = pin_recipe(cfg, adopt_recipe(cfg, catalog, run_id, "run"))
        todo = _sources_to_do(catalog, sources, summary, retry_failed, error_class)
        _stream_and_complete(cfg, catalog, run_id, todo, summary, progress)
        summary.stages = summary.timeline.finish()
        write_stage_stats(catalog, run_id, summary.stages)
        status = "succeeded"
    finally:
        summary.seconds = time.time() - t0
        catalog.finish_run(run_id, status, {k: v for k, v in summary.__dict__.items()
                                            if k not in ("shards", "timeline", "stages")}
                           | {"n_shards": len(summary.shards)})
        catalog.close()
    return summary


def _preflight(cfg: Config) -> Config:
    """The config with the models this run loads resolved, each checked before anything is written."""
    needed = curation_models(cfg)
    cfg = cfg.model_copy(update={"models": resolve_models(cfg.models, only=needed)})
    preflight_pipeline(cfg.models, needed)
    if "transnetv2" in cfg.split.detectors:  # the `models` extra: fail here, not once per source in a worker
        transnet.require_transnet(cfg.models.transnet)
    elif transnet.on_cpu(cfg.split, cfg.models.preset) and not transnet.installed():
        logger.warning("split.transnet_on_cpu: TransNetV2 is not installed, so shots come from the listed detectors "
                       "alone (dissolves may stay inside clips): pip install -e \".[models]\", or "
                       "--set split.transnet_on_cpu=false")
    preflight_frame_models(cfg)
    check_names(cfg, [s for part in split_stages(cfg) for s in part])
    check_task_shares(cfg, [s for part in split_stages(cfg) for s in part])
    return cfg


def _sources_to_do(catalog, sources: list[dict], summary: RunSummary, retry_failed: bool,
                   error_class: str | None) -> list[dict]:
    """The sources this run processes (not done yet, or with --retry-failed the failed ones); rows
    that named no usable source are committed as failures here."""
    summary.sources_seen = len(sources)
    bad_rows = [r for r in sources if r["source_id"] is None]
    sources = [r for r in sources if r["source_id"] is not None]
    if retry_failed:
        wanted = catalog.failed_source_ids(error_class)
        todo = [r for r in sources if r["source_id"] in wanted]
    else:
        done = catalog.done_source_ids()
        todo = [r for r in sources if r["source_id"] not in done]
    summary.sources_skipped = len(sources) - len(todo)
    logger.info(f"run {summary.run_id}: {len(todo)} sources to process, {summary.sources_skipped} already done")
    if bad_rows:
        catalog.commit_results(summary.run_id, bad_rows)
        summary.failures += len(bad_rows)
    return todo


def _stream_and_complete(cfg: Config, catalog, run_id: str, todo: list[dict], summary: RunSummary,
                         progress: bool) -> None:
    """The stream over ``todo``, then the derived work the decisions call for: clips a re-decision
    kept get captions and shards here too (not those whose captioning just failed: they stay pending
    for the next run or sync). A full store is raised as one clear error, out of Ray's wrappers."""
    try:
        failed_captions = (_process(cfg, catalog, run_id, todo, summary, progress) if todo else None) or set()
        _captions, summary.shards = complete_pending(cfg, catalog, run_id, progress=progress,
                                                     skip=failed_captions, timeline=summary.timeline)
    except Exception as e:
        if (full := storage_full(e)) is not None:
            raise full from e
        raise


def caption_actor_args(cfg: Config, captioning: list[type[Stage]], plans: dict) -> dict:
    """Ray options of a caption actor (one actor runs the captioning stages in turn): their CPUs and
    memory summed, the largest GPU share, restarts, and the model actors' priority (ray.actor_nice)."""
    chain = {"num_cpus": sum(plans[s].cpus for s in captioning),
             "num_gpus": max(plans[s].gpus for s in captioning),
             "max_restarts": 3, "max_task_retries": 3,  # a killed actor restarts and redoes its batch
             **actor_priority(cfg.ray.actor_nice)}
    if any(plans[s].memory_mb for s in captioning):
        chain["memory"] = sum(plans[s].memory_mb or 0 for s in captioning) * 2**20
    return chain


def _process(cfg: Config, catalog, run_id: str, todo: list[dict], summary: RunSummary, progress: bool) -> set[str]:
    """Stream the sources through one Ray Data pipeline and commit as results come; model actors
    (the stream's and the caption pool's) live for the whole run. Returns the clips whose
    captioning failed (pending, not retried in this run)."""
    import ray  # inside: Ray starts only when a run streams (this module's helpers serve tests and bench scripts)
    from ray.data import DataContext, ExecutionResources

    init_ray(cfg)
    resources = ray.cluster_resources()
    gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 2.0)
    stream, captioning = split_stages(cfg)
    check_names(cfg, stream + captioning)
    cpus_without_gpu = cpus_on_nodes_without_gpu(ray.nodes()) if gpus else 0.0
    plans = resolve(stream + captioning, cfg, gpus, cpus, cpus_without_gpu)
    if (note := without_gpu_note(cfg, gpus)) is not None:
        logger.warning(note)
    for s in stream:
        if cpus_without_gpu and s.resources_for(cfg).gpus and not plans[s].gpus:
            logger.info(f"{s.name}: no GPU share for its tasks, so they also run on the {cpus_without_gpu:g} CPUs of "
                        f"nodes without a GPU (--set stages.{s.name}.gpus=0.01 keeps them on GPU nodes)")
    cfg = pin_plans(cfg, plans)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.verbose_progress = False
    pool, held = None, (0.0, 0.0)  # (CPUs, GPUs) the caption actors hold
    if captioning:
        chain = caption_actor_args(cfg, captioning, plans)
        pool = CaptionPool(cfg, captioning, plans[captioning[0]], chain, cfg.ray.caption_batches_in_flight)
        held = (chain["num_cpus"] * len(pool.actors), chain["num_gpus"] * len(pool.actors))
    # Ray Data plans the stream's tasks and actors within what the caption actors leave, and buffers
    # at most object_store_mb of blocks in flight (its backpressure).
    ctx.execution_options.resource_limits = ExecutionResources(
        cpu=max(0.5, cpus - held[0]), gpu=max(0.0, gpus - held[1]),
        object_store_memory=cfg.ray.object_store_mb * 2**20 if cfg.ray.object_store_mb else None)
    committer = RunCommitter(cfg, catalog, run_id, summary, pool)
    summary.timeline.pipeline_started(len(todo))  # start-up ends; the sources are queued for the first stage
    try:
        ds = build_dataset(cfg, todo, gpus, cpus, stream, plans)
        for batch in ds.iter_batches(batch_size=cfg.ray.commit_rows, batch_format="pyarrow",
                                     prefetch_batches=cfg.ray.prefetch_batches):
            committer.add(batch)
        committer.finish()
    finally:
        if pool is not None:
            pool.close()
    return committer.caption_failed
