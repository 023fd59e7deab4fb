"""Filter recipes: versioned, declarative keep/drop rules over a clip's scores.

A recipe is a YAML file (bundled ones in filters/recipes/, or any path)::

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
"""

from __future__ import annotations

import math
import operator
from pathlib import Path
from typing import ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from vidcorpus.stage import Resources, Stage

RECIPE_DIR = Path(__file__).parent / "recipes"

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


def bundled_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def recipe_from_text(text: str, where: str = "recipe") -> Recipe:
    """A recipe from its YAML text (how the catalog stores each recipe's content)."""
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{where}: a recipe is a mapping (name, version, predicates, ...)")
    data["version"] = str(data.get("version", ""))
    return Recipe.model_validate(data)


def load_recipe(name_or_path: str) -> Recipe:
    """A bundled recipe by name ("demo_v1"), a YAML file path, or a recipe's YAML text itself (the
    driver pins the catalog's active recipe by content, so workers never re-read a file)."""
    if "\n" in name_or_path:  # no name or path holds a newline
        return recipe_from_text(name_or_path)
    path = Path(name_or_path)
    if not path.is_file():
        bundled = RECIPE_DIR / f"{name_or_path}.yaml"
        if not bundled.is_file():
            raise FileNotFoundError(
                f"recipe {name_or_path!r} is neither a file nor a bundled recipe ({', '.join(bundled_recipes())})"
            )
        path = bundled
    return recipe_from_text(path.read_text(), str(path))


def row_scores(row: dict) -> dict[str, float]:
    """Score name -> value of a row (the last entry wins if a scorer appears twice)."""
    return {s["scorer"]: s["value"] for s in (row.get("scores") or []) if s.get("value") is not None}


class DecideStage(Stage):
    """Applies filters.recipe to every clip: sets recipe, kept and reason (CPU, no model)."""

    name: ClassVar[str] = "decide"
    resources: ClassVar[Resources] = Resources(cpus=0.25)
    batch_rows: ClassVar[int] = 64

    def setup(self) -> None:
        self.recipe = load_recipe(self.config.filters.recipe)

    def process_row(self, row: dict) -> dict:
        if not hasattr(self, "recipe"):
            self.setup()
        kept, reason = self.recipe.decide(row_scores(row))
        return dict(row, recipe=self.recipe.id, kept=kept, reason=reason)
