"""A recipe's keep rule as one SQL expression over clips_wide, to compare recipes at catalog scale.

``Recipe.decide`` walks predicates in Python per clip; comparing two recipes over millions of clips
needs the same rule inside DuckDB: each predicate ``score op value`` holds when the score is there
and passes, and a missing score counts as the predicate's (or the recipe's) missing policy.
Values are parameters; score names must be plain identifiers (and a score without a column is
missing everywhere).
"""

from __future__ import annotations

import re

from vidcorpus.catalog.sql_names import ident
from vidcorpus.recipe_model import Predicate, Recipe

CHANGE = re.compile(r"\s*([a-z][a-z0-9_]*)\s*(>=|<=|==|!=|>|<)\s*(-?[0-9.]+(?:e-?[0-9]+)?)\s*")


def kept_sql(recipe: Recipe, columns: set[str]) -> tuple[str, list]:
    """(SQL boolean, parameters): TRUE where the recipe keeps the clip."""
    parts, params = [], []
    for p in recipe.predicates:
        score = ident(p.score)  # ValueError unless a plain identifier
        keep_missing = "TRUE" if (p.missing or recipe.missing) == "keep" else "FALSE"
        if p.score not in columns:
            parts.append(keep_missing)
            continue
        parts.append(f"(CASE WHEN {score} IS NULL OR isnan({score}) THEN {keep_missing} "
                     f"ELSE {score} {p.op} ? END)")
        params.append(p.value)
    return ("(" + " AND ".join(parts) + ")" if parts else "TRUE"), params


def with_change(recipe: Recipe, change: str) -> Recipe:
    """The recipe with one threshold changed or added, from text like ``aesthetic>=4.8``."""
    m = CHANGE.fullmatch(change or "")
    if not m:
        raise ValueError(f"a change is one predicate like aesthetic>=4.8, not {change[:60]!r}")
    new = Predicate(score=m.group(1), op=m.group(2), value=float(m.group(3)))
    preds = [p for p in recipe.predicates if not (p.score == new.score and p.op[0] == new.op[0])]
    index = next((i for i, p in enumerate(recipe.predicates) if p.score == new.score), len(preds))
    preds.insert(min(index, len(preds)), new)
    return recipe.model_copy(update={"predicates": preds, "version": f"{recipe.version}+{new}"})
