"""Re-deciding from stored scores: apply a recipe to the catalog, and sweep one score's threshold.

Nothing here computes a score: `apply_recipe` reads each clip's latest scores, decides with the
recipe and records one decision per clip (recipe name@version, kept, the reason naming the first
predicate that failed); `sweep` reports retention against a threshold. Driver/CLI-side: the caller
passes a Catalog object (stages never write the catalog).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from vidcorpus.recipe_model import Predicate, Recipe, register


@dataclass
class ApplyResult:
    recipe: str
    clips: int = 0
    kept: int = 0
    reasons: Counter = field(default_factory=Counter)
    newly_kept: int = 0
    newly_dropped: int = 0
    changed_reason: int = 0


def apply_recipe(catalog, recipe: Recipe, run_id: str, clip_ids: list[str] | None = None,
                 dry_run: bool = False) -> ApplyResult:
    """Decide every clip (or the given ones) from its stored scores and record the decisions."""
    register(catalog, recipe, run_id)
    before = catalog.current_decisions()
    scores = catalog.latest_scores(clip_ids)
    result = ApplyResult(recipe=recipe.id)
    decisions = []
    for clip_id in sorted(scores):
        kept, reason = recipe.decide(scores[clip_id])
        decisions.append({"clip_id": clip_id, "recipe": recipe.id, "kept": kept, "reason": reason})
        result.clips += 1
        result.kept += kept
        if not kept:
            result.reasons[reason] += 1
        old = before.get(clip_id)
        if old is not None and old["kept"] is not None:
            result.newly_kept += bool(kept and not old["kept"])
            result.newly_dropped += bool(old["kept"] and not kept)
            result.changed_reason += bool(not kept and not old["kept"] and old["reason"] != reason)
    if not dry_run:
        catalog.record_decisions(run_id, decisions)
    return result


def sweep(catalog, score: str, op: str = ">=", steps: int = 11, recipe: Recipe | None = None,
          thresholds: list[float] | None = None) -> list[dict]:
    """Retention against a threshold on one score.

    Rows: threshold, clips passing `score op threshold` among clips that have the score, and with
    `recipe`, the clips the whole recipe keeps when its predicates on `score` are replaced by this
    one (the recipe's missing policy applies to clips without the score). Thresholds default to
    `steps` quantiles of the score's values (0 %, 10 %, ... 100 % for 11).
    """
    scores = catalog.latest_scores()
    values = np.array([s[score] for s in scores.values() if score in s], dtype=np.float64)
    if values.size == 0:
        raise ValueError(f"no clip has a score named {score!r}")
    if thresholds is None:
        thresholds = sorted(set(np.quantile(values, np.linspace(0, 1, max(2, steps))).tolist()))
    rows = []
    for t in thresholds:
        pred = Predicate(score=score, op=op, value=float(t))
        row = {"threshold": float(t), "scored": int(values.size),
               "kept": int(sum(pred.holds(v) for v in values))}
        row["kept_frac"] = row["kept"] / values.size
        if recipe is not None:
            swapped = recipe.model_copy(update={"predicates": [p for p in recipe.predicates if p.score != score]
                                                + [pred]})
            row["recipe_kept"] = sum(swapped.decide(s)[0] for s in scores.values())
            row["recipe_frac"] = row["recipe_kept"] / max(1, len(scores))
        rows.append(row)
    return rows
