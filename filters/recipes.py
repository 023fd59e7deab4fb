"""The bundled recipes (``filters/recipes/*.yaml``), loading a recipe by name, path or text, and the
decide stage that applies one to each row. What a recipe is: ``vidcorpus/recipe_model.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from vidcorpus.recipe_model import Recipe, recipe_from_text
from vidcorpus.stage import Resources, Stage

RECIPE_DIR = Path(__file__).parent / "recipes"


def bundled_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


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
