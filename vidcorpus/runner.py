"""The job runner: one Ray Data pipeline composed from stage classes, committed by the driver.

download -> probe -> split -> extract -> technical -> motion -> clip/aesthetic -> decide -> caption
(kept clips only: captioning is the most expensive stage) -> driver commits rows to the catalog
-> shard writer tasks -> driver commits shards. Data flows one way; stages never touch the catalog.
"""

from __future__ import annotations

import functools
import logging
import json
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa

from vidcorpus import __version__
from vidcorpus import events as stage_events
from vidcorpus.config import Config
from vidcorpus.errors import storage_full
from vidcorpus.ids import new_run_id
from vidcorpus.filters.frame_models import preflight_frame_models, with_frame_model_stages
from vidcorpus.presets import preflight_pipeline, resolve_models
from vidcorpus.schemas import rows_to_table
from vidcorpus.stage import Stage
from vidcorpus.stage_stats import StageRow, StageStats

COMMIT_ROWS = 64  # result rows per catalog transaction: what a killed driver can lose at most
WORKER_ENV = {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "TOKENIZERS_PARALLELISM": "false"}


def pipeline_stages() -> list[type[Stage]]:
    """The stage classes of a run, in order (imported here so `vidcorpus --help` stays fast)."""
    from vidcorpus.captioning.stage import CaptionStage
    from vidcorpus.filters.clip_scores import CaptionAlignStage
    from vidcorpus.filters.recipes import DecideStage
    from vidcorpus.filters.scorers import ClipScoreStage, MotionStage, TechnicalStage
    from vidcorpus.ingest.download import DownloadStage
    from vidcorpus.ingest.extract import ExtractStage
    from vidcorpus.ingest.probe import ProbeStage
    from vidcorpus.ingest.split import SplitStage

    return [DownloadStage, ProbeStage, SplitStage, ExtractStage, TechnicalStage, MotionStage, ClipScoreStage,
            DecideStage, CaptionStage, CaptionAlignStage]


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
    """Task form of a stateless stage: a fresh instance per batch (setup is cheap for CPU stages)."""
    return stage_cls(cfg)(batch)


def actor_gpu_plan(stages: list[type[Stage]], gpus_available: float) -> dict[type[Stage], tuple[int, float]]:
    """(pool size, GPUs per actor) of every actor stage.

    A GPU stage gets one replica per GPU; GPU stages share each GPU in equal fractions, because a
    streaming pipeline needs all of its actor pools alive at once (two stages asking for a whole
    GPU each would wait forever on a one-GPU machine). CPU actors get one replica and no GPU.
    """
    gpu_stages = [s for s in stages if s.resources.actor and getattr(s, "wants_gpu", False)]
    n_gpus = int(gpus_available)
    plan: dict[type[Stage], tuple[int, float]] = {}
    for s in stages:
        if not s.resources.actor:
            continue
        if n_gpus >= 1 and s in gpu_stages:
            plan[s] = (n_gpus, 1.0 / len(gpu_stages))
        else:
            plan[s] = (1, 0.0)
    return plan


def build_dataset(cfg: Config, sources: list[dict], gpus_available: float = 0.0, cpus: float = 2.0,
                  stages: list[type[Stage]] | None = None):
    """The lazy Ray Dataset of a run: source rows in, decided (and captioned) clip rows out (or
    the rows after `stages`, a first part of the pipeline)."""
    import ray.data

    # Several small blocks so CPU stages run in parallel (one block per task); a few per CPU.
    per_block = max(1, min(256, len(sources) // max(1, int(4 * cpus))))
    blocks = [rows_to_table(sources[i:i + per_block]) for i in range(0, len(sources), per_block)]
    stages = with_frame_model_stages(pipeline_stages(), cfg) if stages is None else stages
    return add_stages(cfg, ray.data.from_arrow(blocks), stages, gpus_available)


def add_stages(cfg: Config, ds, stages: list[type[Stage]], gpus_available: float = 0.0):
    """`ds` mapped through these stages: CPU stages as tasks, model stages as actor pools."""
    import ray.data

    plan = actor_gpu_plan(stages, gpus_available)
    for stage_cls in stages:
        res = stage_cls.resources
        if res.actor:
            pool, gpus = plan[stage_cls]
            ds = ds.map_batches(
                stage_cls,
                fn_constructor_args=(cfg,),
                batch_format="pyarrow",
                batch_size=getattr(stage_cls, "batch_rows", 8),
                compute=ray.data.ActorPoolStrategy(size=pool),
                num_cpus=cfg.ray.actor_cpus,
                num_gpus=gpus,
            )
        else:
            ds = ds.map_batches(
                functools.partial(_run_stage, stage_cls, cfg),
                batch_format="pyarrow",
                batch_size=getattr(stage_cls, "batch_rows", 4),
                num_cpus=cfg.ray.task_cpus,
            )
    return ds


def run_pipeline(
    cfg: Config,
    retry_failed: bool = False,
    error_class: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> RunSummary:
    """Ingest, score, decide, caption, commit and shard everything in cfg.inputs not yet done."""
    from vidcorpus.catalog.stage_stats import write as write_stage_stats
    from vidcorpus.catalog.store import Catalog
    from vidcorpus.ingest.sources import read_inputs

    t0 = time.time()
    cfg = cfg.model_copy(update={"models": resolve_models(cfg.models)})
    preflight_pipeline(cfg.models)
    if "transnetv2" in cfg.split.detectors:  # the `models` extra: fail here, not once per source in a worker
        from vidcorpus.ingest.transnet import require_transnet

        require_transnet(cfg.models.transnet)
    preflight_frame_models(cfg)
    run_id = new_run_id()
    summary = RunSummary(run_id=run_id, catalog=cfg.catalog_path, shard_root=cfg.url("shards"), timeline=StageStats(t0))
    # hold=False: the driver opens the file only for each commit, so readers (`vidcorpus sql`,
    # `report`) get in between commits while the run goes on.
    catalog = Catalog(cfg.catalog_path, hold=False)
    catalog.begin_run(run_id, "pipeline", json.dumps(cfg.model_dump(mode="json")), __version__)
    status = "failed"
    try:
        from vidcorpus.sync import adopt_recipe, complete_pending, pin_recipe

        # The catalog's active recipe decides (a recipe the config names explicitly replaces it, said
        # here); the stages get its content, so a later file edit or config default cannot slip in.
        cfg = pin_recipe(cfg, adopt_recipe(cfg, catalog, run_id, "run", log))
        sources = read_inputs(cfg.inputs)
        summary.sources_seen = len(sources)
        bad_rows = [r for r in sources if r["source_id"] is None]
        sources = [r for r in sources if r["source_id"] is not None]
        done = catalog.done_source_ids()
        if retry_failed:
            wanted = catalog.failed_source_ids(error_class)
            todo = [r for r in sources if r["source_id"] in wanted]
        else:
            todo = [r for r in sources if r["source_id"] not in done]
        summary.sources_skipped = len(sources) - len(todo)
        log(f"run {run_id}: {len(todo)} sources to process, {summary.sources_skipped} already done")
        if bad_rows:
            catalog.commit_results(run_id, bad_rows)
            summary.failures += len(bad_rows)
        try:
            if todo:
                _process(cfg, catalog, run_id, todo, summary, progress, log)
            # derived work follows decisions: clips a re-decision kept get captions and shards here too
            began = time.time()
            _captions, summary.shards = complete_pending(cfg, catalog, run_id, progress=progress, log=log)
            summary.timeline.driver_step("shards", began, time.time(), len(summary.shards))
        except Exception as e:
            if (full := storage_full(e)) is not None:  # out of Ray's wrappers: one clear error
                raise full from e
            raise
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


def _process(cfg: Config, catalog, run_id: str, todo: list[dict], summary: RunSummary, progress: bool, log) -> None:
    import ray
    from ray.data import DataContext

    init_ray(cfg)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.verbose_progress = False
    resources = ray.cluster_resources()
    gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 2.0)
    size = cfg.ray.window_sources
    summary.timeline.pipeline_started(len(todo))  # start-up ends; the sources are queued for the first stage
    windows = [todo[i:i + size] for i in range(0, len(todo), size)]
    commit_windows(cfg, catalog, run_id, _window_batches(cfg, windows, gpus, cpus), summary, log)


def commit_windows(cfg: Config, catalog, run_id: str, batches, summary: RunSummary, log=print) -> None:
    """Commit (window, result batch) pairs as they come; when a window is whole (window, None),
    score its clips' duplicates, re-decide, and mark its sources done."""
    from vidcorpus.filters.dedup import DedupIndex, write_embedding_batch

    # Commit as results stream in: a crash loses at most the batches not yet committed, and a
    # rerun re-processes only sources that were not marked done (upserts keep it duplicate-free).
    # A window's sources are marked done once all its rows are committed (and deduplicated), so a
    # killed driver redoes at most the windows in flight. The dedup index reads the catalog's
    # embeddings once (at the first whole window) and then only what this run commits.
    dedup = DedupIndex(cfg.filters.dedup_floor, run_id) if cfg.filters.dedup else None
    failed: set[str] = set()
    warned: set[tuple] = set()  # (stage, kind, message) already logged in this run
    seen: dict[int, set[str]] = {}
    embedded: dict[int, list[str]] = {}
    for w, batch in batches:
        if batch is None:  # window w is whole
            if dedup is not None and embedded.get(w):
                began = time.time()
                dedup_and_redecide(cfg, catalog, run_id, embedded[w], log, index=dedup)
                summary.timeline.driver_step("dedup", began, time.time(), len(embedded[w]))
            catalog.mark_sources_done(seen.pop(w, set()) - failed)
            embedded.pop(w, None)
            continue
        rows, raised = stage_events.split(batch.to_pylist())
        stage_events.log_new(raised, warned, log)  # workers' output does not reach this terminal
        for r in rows:
            seen.setdefault(w, set()).add(r["source_id"])
            if r.get("error_class"):
                failed.add(r["source_id"])
                summary.failures += 1
        began = time.time()
        index = write_embedding_batch(cfg.url("embeddings"), run_id, summary.rows_committed, rows)
        catalog.commit_results(run_id, rows, failed_before=failed, events=raised)
        catalog.commit_embeddings(run_id, index)  # after the Parquet file is whole
        if dedup is not None:
            dedup.committed([r["clip_id"] for r in rows if r.get("clip_id") and not r.get("error_class")], index)
        embedded.setdefault(w, []).extend(r["clip_id"] for r in index)
        summary.rows_committed += len(rows)
        summary.timeline.add(batch, commit=(began, time.time()))  # the stages' stamps, and this commit's


_CPU_DONE = "cpu stages done"


def _window_batches(cfg: Config, windows: list[list[dict]], gpus: float, cpus: float):
    """(window index, result batch) as they come, then (window index, None) when a window is whole.

    Each window runs in a thread as two Ray Datasets: its CPU stages (up to the first model stage),
    materialised, then its model stages. The next window starts when the newest one's CPU stages
    are done (or it ended), and at most two windows run at once: the next window's CPU stages
    overlap this one's model stages, whose actors start only once their input is complete.
    """
    import queue
    import threading

    results: queue.Queue = queue.Queue()
    stop = threading.Event()
    stages = with_frame_model_stages(pipeline_stages(), cfg)
    split = next((i for i, s in enumerate(stages) if s.resources.actor), len(stages))

    def pump(w: int) -> None:
        try:
            ds = build_dataset(cfg, windows[w], gpus, cpus, stages[:split]).materialize()
            results.put((w, _CPU_DONE))
            for batch in add_stages(cfg, ds, stages[split:], gpus).iter_batches(batch_size=COMMIT_ROWS,
                                                                                 batch_format="pyarrow"):
                if stop.is_set():
                    return
                results.put((w, batch))
            results.put((w, None))
        except BaseException as e:  # noqa: BLE001 - handed to the driver's thread, raised there
            results.put((w, e))

    running: set[int] = set()
    started = 0
    newest_cpu_done = False
    try:
        while started < len(windows) or running:
            if started < len(windows) and (not running or (len(running) < 2 and newest_cpu_done)):
                running.add(started)
                threading.Thread(target=pump, args=(started,), name=f"vidcorpus-window-{started}", daemon=True).start()
                started += 1
                newest_cpu_done = False
            w, item = results.get()
            if isinstance(item, BaseException):
                raise item
            if w == started - 1 and (item is _CPU_DONE or item is None):
                newest_cpu_done = True
            if item is _CPU_DONE:
                continue
            if item is None:
                running.discard(w)
            yield w, item
    finally:
        stop.set()  # a failed window stops the others at their next batch


def dedup_and_redecide(cfg: Config, catalog, run_id: str, new_clip_ids: list[str] | None, log=print,
                       index=None) -> int:
    """Duplicate scores for the new clips against the run and the catalog, then re-decide the clips
    whose dup scores were written (new ones, and earlier ones decided by this recipe). Returns the
    number of clips re-decided. `index` (a filters.dedup.DedupIndex kept across a run's windows)
    gives the same scores as a fresh read of the catalog, without reading it again."""
    from vidcorpus.filters.apply import apply_recipe
    from vidcorpus.filters.dedup import DedupIndex
    from vidcorpus.filters.recipes import load_recipe

    if index is None:  # a fresh index reads the whole catalog, as run_dedup does
        index = DedupIndex(cfg.filters.dedup_floor)
    written = index.score(catalog, run_id, new_clip_ids)
    recipe = load_recipe(cfg.filters.recipe)
    current = catalog.current_decisions()
    new = set(new_clip_ids or [])
    ids = sorted({s["clip_id"] for s in written
                  if s["clip_id"] in new or (current.get(s["clip_id"]) or {}).get("recipe") == recipe.id})
    if ids:
        res = apply_recipe(catalog, recipe, run_id, clip_ids=ids)
        log(f"dedup: {len(ids)} clips scored for duplicates; {res.newly_dropped} dropped as duplicates or "
            f"otherwise by {recipe.id}")
    return len(ids)


def write_pending_shards(cfg: Config, catalog, run_id: str, progress: bool = True, log=print,
                         allow_uncaptioned: bool = False) -> list[dict]:
    """Pack every clip the active recipe keeps that no shard holds yet; publish each shard, then
    commit its rows. A clip without a caption of shards.caption_version is left out (and said)
    unless ``allow_uncaptioned``: its txt would be empty."""
    from vidcorpus.catalog.corpus_state import active_recipe_id, uncaptioned_for

    recipe = active_recipe_id(catalog)
    clips = [c for c in catalog.unsharded_kept() if recipe is None or c["recipe"] == recipe]
    missing = set(uncaptioned_for(catalog, [c["clip_id"] for c in clips], cfg.shards.caption_version))
    if missing and not allow_uncaptioned:
        clips = [c for c in clips if c["clip_id"] not in missing]
        log(f"{len(missing)} kept clips have no {cfg.shards.caption_version} caption and were not sharded "
            f"(`vidcorpus sync` captions them; --allow-uncaptioned packs them with an empty txt)")
    return pack_clips(cfg, catalog, run_id, clips, progress=progress)


def pack_clips(cfg: Config, catalog, run_id: str, clips: list[dict], caption_version: str | None = None,
               progress: bool = True) -> list[dict]:
    """Write shards holding these clips (rows of clips_wide); publish each, then commit its rows."""
    from vidcorpus.shards.writer import plan_shards

    if not clips:
        return []
    ids = [c["clip_id"] for c in clips]
    scores, captions = catalog.scores_of(ids), catalog.captions_of(ids)
    clips = [dict(c, scores=scores[c["clip_id"]], captions=captions[c["clip_id"]]) for c in clips]
    plans = plan_shards(clips, cfg.shards.max_samples, cfg.shards.max_bytes)
    out_root = cfg.url("shards")
    written: list[dict] = []
    from rich.progress import Progress

    with Progress(disable=not progress) as bar:
        task = bar.add_task("writing shards", total=len(plans))
        for manifest in _publish_shards(plans, out_root, caption_version or cfg.shards.caption_version,
                                        cfg.shards.image_format, cfg.ray.task_cpus):
            catalog.commit_shards(run_id, [manifest])  # only after the tar is visible
            written.append(manifest)
            bar.advance(task)
    return written


def _publish_shards(plans, out_root: str, caption_version: str, image_format: str, task_cpus: float):
    """Manifests as shards are published: Ray tasks when Ray is up, else in this process."""
    from vidcorpus.shards.writer import write_shard

    if len(plans) < 2 or not _ray_ready():
        for bucket, members in plans:
            yield write_shard(bucket, members, out_root, caption_version, image_format)
        return
    import ray

    remote = ray.remote(num_cpus=task_cpus)(write_shard)
    pending = [remote.remote(b, m, out_root, caption_version, image_format) for b, m in plans]
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        yield ray.get(ready[0])


def _ray_ready() -> bool:
    try:
        import ray

        return ray.is_initialized()
    except ImportError:
        return False
