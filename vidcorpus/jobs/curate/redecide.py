"""Score duplicates of new clips and re-decide the clips whose duplicate scores changed: a run does it
per window of whole sources (``commit.py``), `vidcorpus filter dedup` over the whole catalog."""

from __future__ import annotations

import logging

from vidcorpus.config import Config
from vidcorpus.filters.apply import apply_recipe
from vidcorpus.filters.dedup import DedupIndex
from vidcorpus.filters.recipes import load_recipe

logger = logging.getLogger(__name__)


def dedup_and_redecide(cfg: Config, catalog, run_id: str, new_clip_ids: list[str] | None,
                       index=None) -> int:
    """Duplicate scores for the new clips against the run and the catalog, then re-decide the clips
    whose dup scores were written (new ones, and earlier ones decided by this recipe). Returns the
    number of clips re-decided. `index` (a filters.dedup.DedupIndex kept across a run's windows)
    gives the same scores as a fresh read of the catalog, without reading it again."""
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
        logger.info(f"dedup: {len(ids)} clips scored for duplicates; {res.newly_dropped} dropped as duplicates or "
                    f"otherwise by {recipe.id}")
    return len(ids)
