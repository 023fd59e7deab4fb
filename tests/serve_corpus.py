"""A small real catalog for the `vidcorpus serve` tests: pipeline stages run in-process (no Ray) with
the tiny models on a few synthetic videos and one image, decided by demo_v1, shards written."""

from __future__ import annotations

import json
from pathlib import Path


def build_serve_catalog(root: Path, model_cache: str) -> dict:
    from vidcorpus.catalog.corpus_state import set_active_recipe
    from vidcorpus.catalog.store import Catalog
    from vidcorpus.config import load_config
    from vidcorpus.filters.dedup import write_embedding_batch
    from vidcorpus.filters.recipes import load_recipe
    from vidcorpus.ingest.sources import read_inputs
    from vidcorpus.jobs.models import resolve_models
    from vidcorpus.jobs.curate.pipeline import pipeline_stages
    from vidcorpus.jobs.pack_shards import pack_clips
    from vidcorpus.schemas import rows_to_table
    from vidcorpus.synth import make_corpus

    truth = make_corpus(root / "corpus", n_videos=3, n_images=1, include_real=False)
    cfg = load_config(None, [], workdir=str(root / "work"),
                      **{"models.preset": "tiny", "models.cache_dir": model_cache, "filters.recipe": "demo_v1"})
    cfg = cfg.model_copy(update={"models": resolve_models(cfg.models)})
    table = rows_to_table(read_inputs([truth["list"]]))
    for stage_cls in pipeline_stages():  # what the runner's Ray Data pipeline does, in-process
        table = stage_cls(cfg)(table)
    rows = table.to_pylist()
    failed = {r["source_id"] for r in rows if r.get("error_class")}
    with Catalog(cfg.catalog_path, hold=False) as cat:
        cat.begin_run("run-a", "pipeline", "{}", "test")
        index = write_embedding_batch(cfg.url("embeddings"), "run-a", 0, rows)  # as the runner does
        cat.commit_results("run-a", rows, failed_before=failed)
        cat.commit_embeddings("run-a", index)
        cat.mark_sources_done({r["source_id"] for r in rows} - failed)
        set_active_recipe(cat, load_recipe("demo_v1"), origin="test")
        shards = pack_clips(cfg, cat, "run-a", cat.unsharded_kept(), progress=False)
        cat.finish_run("run-a", "succeeded", {})
        clips = cat.query_dicts("SELECT clip_id, media_type, kept, reason, source_id, clip_path FROM clips_wide "
                                "ORDER BY clip_id")
    return {"catalog": cfg.catalog_path, "workdir": cfg.workdir, "clips": clips, "shards": shards,
            "truth": json.loads(json.dumps(truth, default=str))}

