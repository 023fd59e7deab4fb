"""`vidcorpus filter suggest`: each filter's precision and recall from the labels given in
`vidcorpus serve`, with 95 % intervals, and the threshold the labels argue for (``serve/measure.py``).

Registered on the `filter` group at the end of ``vidcorpus/cli.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from vidcorpus.cli import CatalogOpt, ConfigOpt, WorkdirOpt, _config, console, fail


def _pr(value: float | None, ci: tuple[float, float] | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def register_filter_suggest(filter_app: typer.Typer) -> None:
    @filter_app.command("suggest")
    def filter_suggest(
        score: Optional[str] = typer.Argument(None, help="Only the filters on this score (default: every filter)."),
        recipe: Optional[str] = typer.Option(None, "--recipe", help="A recipe the catalog recorded (name or "
                                             "name@version); default: the active recipe."),
        catalog: Optional[str] = CatalogOpt,
        config: Optional[Path] = ConfigOpt,
        workdir: Optional[str] = WorkdirOpt,
    ) -> None:
        """Precision and recall of each filter from the labels (`vidcorpus serve`), with 95 % intervals,
        and the threshold that separates the labelled bad clips from the good ones best (F1).

        Labels from a filter's sample (serve's /sample page) give unbiased estimates; labels from
        browsing are used, and said to be biased, only when the filter has no sample labels.
        Nothing is changed: try a suggestion with `vidcorpus filter sweep` or serve's /compare page.
        """
        from vidcorpus.catalog.corpus_state import active_recipe, stored_recipe
        from vidcorpus.catalog.store import Catalog, CatalogError
        from vidcorpus.serve.measure import filter_quality

        cfg = _config(config, None, workdir=workdir, catalog=catalog)
        try:
            with Catalog(cfg.catalog_path, read_only=True) as cat:
                r = stored_recipe(cat, recipe) if recipe else active_recipe(cat)
                if r is None:
                    fail(f"no recipe {recipe} in the catalog" if recipe else "no recipe has decided this catalog yet")
                if score and score not in r.scores_needed:
                    fail(f"recipe {r.id} has no filter on {score!r} (it filters {', '.join(r.scores_needed)})")
                rows = filter_quality(cat.con, r, score)
        except CatalogError as e:
            fail(str(e))
        t = Table(title=f"filters of {r.id}: precision and recall from labels (95 % intervals)")
        for col in ("filter", "flagged/passed", "labels (bad)", "from", "precision", "recall", "suggested",
                    "its precision", "its recall"):
            t.add_column(col, overflow="fold")
        for row in rows:
            c, p = row["current"], row["proposed"]
            t.add_row(c.predicate, f"{c.flagged}/{c.passed}", f"{c.labels} ({c.bad_labels})",
                      "sample" if c.sampled else "browse (biased)", _pr(c.precision, c.precision_ci),
                      _pr(c.recall, c.recall_ci), p.predicate if p else row["note"],
                      _pr(p.precision, p.precision_ci) if p else "", _pr(p.recall, p.recall_ci) if p else "")
        console.print(t, markup=False)
