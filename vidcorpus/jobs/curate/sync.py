"""Derived work follows decisions (issue 21): adopt the recipe in force, then complete what it needs.

``adopt_recipe`` is how every deciding command (run, sync, filter dedup) picks its recipe: the
catalog's active one, unless the config names another explicitly (``filters.recipe`` in a file or
``--set``, or ``--preset production``), which is a change said on the terminal, recorded, and
followed by a re-decision of every clip. ``sync`` then completes the active recipe's pending work
through the pipeline's own stages: clips it has not decided, kept clips without a caption of
``captioning.version`` (the caption stage, with its QA scores), kept clips in no shard.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import Progress

from vidcorpus import __version__, gpu_busy
from vidcorpus import events as stage_events
from vidcorpus.catalog.corpus_state import active_recipe, pending_work, recipe_history, set_active_recipe
from vidcorpus.catalog.latent_state import encode_command
from vidcorpus.catalog.stage_stats_table import write as write_stage_stats
from vidcorpus.catalog.store import Catalog, CatalogError
from vidcorpus.config import Config, caption_batch_size
from vidcorpus.filters.apply import apply_recipe
from vidcorpus.filters.recipes import load_recipe
from vidcorpus.ids import new_run_id
from vidcorpus.jobs.curate.extract_pending import extract_clips
from vidcorpus.jobs.models import resolve_models
from vidcorpus.jobs.pack_shards import write_pending_shards
from vidcorpus.recipe_model import Recipe, canonical_yaml
from vidcorpus.stage_settings import local_gpus, pin_plans, resolve
from vidcorpus.stage_stats import StageStats
from vidcorpus.storage import is_url, local_path

logger = logging.getLogger(__name__)

PRODUCTION_RECIPE = "pretrain_v1"


def named_recipe(cfg: Config) -> tuple[str, str] | None:
    """(recipe, who names it) when the config names a recipe explicitly; None for the default."""
    if "recipe" not in cfg.filters.model_fields_set:
        return None
    if cfg.models.preset == "production" and cfg.filters.recipe == PRODUCTION_RECIPE:
        return cfg.filters.recipe, "the production preset"
    return cfg.filters.recipe, "the config (filters.recipe)"


def adopt_recipe(cfg: Config, cat, run_id: str, origin: str) -> Recipe:
    """The recipe this command decides with; every clip ends up decided by it.

    A catalog's active recipe wins over the config's default; a recipe the config names explicitly
    replaces it, said on the terminal. A catalog without one adopts the config's recipe."""
    active = active_recipe(cat)
    named = named_recipe(cfg)
    recipe = recipe_in_force(cfg, cat)
    if active is not None and named is None:
        if not recipe_history(cat):  # a catalog from before the history: record what is in force
            set_active_recipe(cat, recipe, origin, run_id)
    else:
        if active is None:
            set_active_recipe(cat, recipe, origin, run_id)
            logger.info(f"active recipe: {recipe.id} (from {named[1] if named else 'the default filters.recipe'}), "
                        "recorded in the catalog")
        elif canonical_yaml(recipe) != canonical_yaml(active):
            set_active_recipe(cat, recipe, origin, run_id)
            logger.info(f"recipe change: {named[1]} names {recipe.id}; the catalog's active recipe was {active.id}. "
                        f"Every clip is re-decided with {recipe.id} (`vidcorpus filter apply {active.name}` goes back).")
    undecided = [r["clip_id"] for r in cat.query_dicts(
        "SELECT clip_id FROM clips_wide WHERE recipe IS DISTINCT FROM ? ORDER BY clip_id", [recipe.id])]
    if undecided:
        res = apply_recipe(cat, recipe, run_id, clip_ids=undecided)
        logger.info(f"{recipe.id} decided {res.clips} clips: {res.kept} kept")
    return recipe


def recipe_in_force(cfg: Config, cat) -> Recipe:
    """The recipe ``adopt_recipe`` will decide with, read without writing anything (so a command can
    check it before it changes the catalog): the catalog's active one unless the config names one."""
    active = active_recipe(cat)
    named = named_recipe(cfg)
    if active is not None and named is None:
        return active
    return load_recipe(named[0] if named else cfg.filters.recipe)


def pin_recipe(cfg: Config, recipe: Recipe) -> Config:
    """The config with ``filters.recipe`` set to the recipe's content: stages and workers decide with
    exactly the catalog's recipe, never a file that may have changed or a config default."""
    return cfg.model_copy(update={"filters": cfg.filters.model_copy(update={"recipe": canonical_yaml(recipe)})})


@dataclass
class CaptionResult:
    captioned: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def caption_clips(cfg: Config, cat, run_id: str, clip_ids: list[str],
                  progress: bool = False, timeline=None) -> CaptionResult:
    """Caption these clips with the pipeline's caption stage (long + short, QA scores) and commit the
    captions; a clip that cannot be captioned gets a failure row and stays pending. ``timeline`` (a
    vidcorpus.stage_stats.StageStats) records each batch's caption and commit time."""
    from vidcorpus.captioning.caption_stage import CaptionStage  # inside: torch loads only when clips are captioned

    out = CaptionResult()
    if not clip_ids:
        return out
    loads = {"captioner"} | ({"clip"} if cfg.captioning.qa else set())  # CLIP for caption QA
    cfg = cfg.model_copy(update={"models": resolve_models(cfg.models, only=loads)})
    cfg = pin_plans(cfg, resolve([CaptionStage], cfg, local_gpus()))  # batch sizes for this machine
    rows = cat.query_dicts("SELECT clip_id, source_id, media_type, clip_path, first_frame_path, kept "
                           "FROM clips_wide WHERE clip_id IN (SELECT unnest(?)) ORDER BY clip_id", [list(clip_ids)])
    stage = CaptionStage(cfg)
    warned: set[tuple] = set()
    began = time.time()
    with stage_events.captured(stage.name) as raised:  # loading the model may warn too
        stage.setup()
    setup_s = time.time() - began
    stage_events.log_new(raised, warned, logger.warning)
    cat.add_events(run_id, raised)
    step = caption_batch_size(cfg)
    with Progress(disable=not progress) as bar:
        task = bar.add_task("captioning", total=len(rows))
        for i in range(0, len(rows), step):
            batch = [dict(r, captions=[], scores=[]) for r in rows[i:i + step]]
            device = gpu_busy.current_device()  # (index, name) on CUDA: how busy the batch kept the GPU
            meter = gpu_busy.GpuBusyMeter(device[0]) if device else contextlib.nullcontext()
            with stage_events.captured(stage.name) as raised, meter:  # a fast path switching off, QA failing...
                done = stage.process_rows(batch)
            captioned_at = time.time()
            if timeline is not None:  # the model's setup counts in the first batch, as in a pipeline stage
                timeline.driver_step(stage.name, began, captioned_at, len(batch), setup_s if i == 0 else 0.0,
                                     device[1] if device else None, meter.busy_s if device else None)
            stage_events.log_new(raised, warned, logger.warning)
            cat.add_events(run_id, raised)
            ok, failed = commit_captioned(cat, run_id, done)
            if timeline is not None:
                timeline.driver_step("commit", captioned_at, time.time(), len(done))
            began = time.time()
            out.captioned += ok
            out.failed += failed
            bar.advance(task, len(batch))
    logger.info(f"captioned {len(out.captioned)} clips ({cfg.captioning.version})"
                + (f"; {len(out.failed)} failed (`vidcorpus catalog failures`)" if out.failed else ""))
    return out


def commit_captioned(cat, run_id: str, done: list[dict]) -> tuple[list[str], list[str]]:
    """Commit the caption stage's output rows (captions, their QA scores, failures); returns the
    (captioned, failed) clip ids. Upserts: a rerun after a crash writes the same rows."""
    captions = [dict(c, clip_id=r["clip_id"]) for r in done if not r.get("error_class")
                for c in r.get("captions") or []]
    scores = [dict(s, clip_id=r["clip_id"]) for r in done if not r.get("error_class")
              for s in r.get("scores") or []]
    cat.write_captions(run_id, captions)
    cat.write_scores(run_id, scores)
    for r in done:
        if r.get("error_class"):
            cat.record_failure(r["clip_id"], "caption", r["error_class"], r.get("error") or "", run_id,
                               source_id=r.get("source_id"))
    return ([r["clip_id"] for r in done if not r.get("error_class")],
            [r["clip_id"] for r in done if r.get("error_class")])


def complete_pending(cfg: Config, cat, run_id: str, allow_uncaptioned: bool = False, progress: bool = False,
                     skip: set[str] | frozenset = frozenset(),
                     timeline=None) -> tuple[CaptionResult, list[dict]]:
    """Extract the active recipe's kept clips that have no file (filter before you encode: a clip
    first dropped was never encoded), caption its kept, uncaptioned clips (but those in ``skip``),
    then shard its kept, unsharded ones (``timeline``: a StageStats that records the captioning,
    commits and shards)."""
    pending = pending_work(cat, cfg.captioning.version, cfg.shards.caption_version)
    skip = set(skip)
    if pending.unextracted:
        skip |= set(extract_clips(cfg, cat, run_id, pending.unextracted).failed)
    todo = [c for c in pending.uncaptioned if c not in skip]
    if cfg.captioning.enabled:
        captions = caption_clips(cfg, cat, run_id, todo, progress=progress, timeline=timeline)
    else:
        captions = CaptionResult()
        if todo:
            logger.info(f"captioning is off (captioning.enabled=false): {len(todo)} kept clips stay uncaptioned")
    began = time.time()
    shards = write_pending_shards(cfg, cat, run_id, progress=progress, allow_uncaptioned=allow_uncaptioned)
    if timeline is not None:
        timeline.driver_step("shards", began, time.time(), len(shards))
    say_unencoded(cfg, cat)
    return captions, shards


def say_unencoded(cfg: Config, cat) -> int:
    """Name the command that encodes the kept, sharded clips without latents of the cache key in use.

    Not done here: encoding needs the VAE and CLIP encoders (a GPU's work at production scale) and
    the bucket of a training configuration; sync and run complete the curation stages."""
    pw = pending_work(cat, cfg.captioning.version, cfg.shards.caption_version)
    if pw.unencoded and pw.latent_key is not None:
        logger.info(f"{len(pw.unencoded)} kept, sharded clips have no latents of cache key {pw.latent_key.cache_key}: "
                    f"run `{encode_command(pw.latent_key, cfg)}` on a GPU machine")
    return len(pw.unencoded)


@dataclass
class SyncSummary:
    run_id: str
    recipe: str
    captioned: int
    caption_failures: int
    shards: list[dict]
    pending_after: int
    seconds: float
    stages: list = field(default_factory=list)  # where the time went (vidcorpus.stage_stats.StageRow)


def sync(cfg: Config, allow_uncaptioned: bool = False, progress: bool = False) -> SyncSummary:
    """`vidcorpus sync`: adopt the recipe in force, then complete its pending work (a recorded run)."""
    t0 = time.time()
    if not is_url(cfg.catalog_path) and not Path(local_path(cfg.catalog_path)).exists():
        raise CatalogError(f"no catalog at {cfg.catalog_path}: `vidcorpus run` makes one (or pass --catalog/--workdir)")
    run_id = new_run_id()
    timeline = StageStats(t0)
    with Catalog(cfg.catalog_path) as cat:
        cat.begin_run(run_id, "sync", json.dumps({"allow_uncaptioned": allow_uncaptioned}), __version__)
        status = "failed"
        try:
            recipe = adopt_recipe(cfg, cat, run_id, "sync")
            captions, shards = complete_pending(pin_recipe(cfg, recipe), cat, run_id, allow_uncaptioned,
                                                progress, timeline=timeline)
            left = pending_work(cat, cfg.captioning.version, cfg.shards.caption_version).total
            stages = timeline.finish()
            write_stage_stats(cat, run_id, stages)
            status = "succeeded"
        finally:
            cat.finish_run(run_id, status, {} if status == "failed" else {
                "recipe": recipe.id, "captioned": len(captions.captioned), "shards": len(shards)})
    return SyncSummary(run_id, recipe.id, len(captions.captioned), len(captions.failed), shards, left,
                       time.time() - t0, stages)
