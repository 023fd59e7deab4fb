"""What a recipe is: versioned, declarative keep/drop rules over a clip's scores, and its one
canonical text.

A recipe is YAML (bundled ones in filters/recipes/, loaded by ``filters.recipes.load_recipe``)::

    name: demo_v1
    version: 1
    description: ...
    missing: keep            # clips lacking a score a predicate needs: keep (skip it) or drop
    predicates:
      - {score: duration_s, op: ">=", value: 1.0}
      - {score: motion, op: ">=", value: 0.5, missing: keep}   # per-predicate override

Predicates are checked in order; the first that fails (or whose score is missing under the drop
policy) names the reason, e.g. "duration_s<1" (the negated predicate, which is what the clip
has) or "motion missing". Every row records recipe "name@version", so decisions stay reproducible.

The model lives in the core because several layers read it: the filters' decide stage and
``filter apply``, the catalog (which stores each recipe's canonical YAML and knows the one in
force), the web app and the report.
"""

from __future__ import annotations

import math
import operator
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

Op = Literal[">=", ">", "<=", "<", "==", "!="]
_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq, "!=": operator.ne}
_NEGATED = {">=": "<", ">": "<=", "<=": ">", "<": ">=", "==": "!=", "!=": "=="}


def _fmt(value: float) -> str:
    return f"{value:g}"  # 4.5 -> "4.5", 256.0 -> "256"


class Predicate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    score: str
    op: Op
    value: float
    missing: Literal["drop", "keep"] | None = Field(None, description="Overrides the recipe's missing policy.")

    def holds(self, x: float) -> bool:
        return not math.isnan(x) and _OPS[self.op](x, self.value)

    def failure(self) -> str:
        """Readable, stable reason text: what the clip has, e.g. 'aesthetic<4.5'."""
        return f"{self.score}{_NEGATED[self.op]}{_fmt(self.value)}"

    def __str__(self) -> str:
        return f"{self.score}{self.op}{_fmt(self.value)}"


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    version: str
    description: str = ""
    missing: Literal["drop", "keep"] = "drop"
    predicates: list[Predicate] = Field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def scores_needed(self) -> list[str]:
        return sorted({p.score for p in self.predicates})

    def decide(self, scores: dict[str, float]) -> tuple[bool, str | None]:
        """(kept, reason): reason names the first failed predicate, None when kept."""
        for p in self.predicates:
            x = scores.get(p.score)
            if x is None:
                if (p.missing or self.missing) == "drop":
                    return False, f"{p.score} missing"
                continue
            if not p.holds(float(x)):
                return False, p.failure()
        return True, None


def recipe_from_text(text: str, where: str = "recipe") -> Recipe:
    """A recipe from its YAML text (how the catalog stores each recipe's content)."""
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{where}: a recipe is a mapping (name, version, predicates, ...)")
    data["version"] = str(data.get("version", ""))
    return Recipe.model_validate(data)


def canonical_yaml(recipe: Recipe) -> str:
    """The recipe's content in one canonical form (what the catalog hashes and stores)."""
    return yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True), sort_keys=True)


def register(catalog, recipe: Recipe, run_id: str | None = None) -> str:
    """Record the recipe in the catalog's `recipes` table (refused if name@version changed content);
    the caller passes its ``Catalog``."""
    return catalog.register_recipe(recipe.id, recipe.name, recipe.version, canonical_yaml(recipe),
                                   recipe.description, run_id)
