"""`vidcorpus filter ...`: re-decide from stored scores (apply a recipe, sweep a threshold, score
duplicates) and measure each filter against the labels given in `vidcorpus serve` (suggest)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from vidcorpus import __version__
from vidcorpus.cli.options import CatalogOpt, ConfigOpt, SetOpt, WorkdirOpt, effective_config, require_catalog
from vidcorpus.cli.output import console
from vidcorpus.cli.user_errors import fail
from vidcorpus.ids import new_run_id

filter_app = typer.Typer(help="Re-decide from stored scores: apply recipes, sweep thresholds, find duplicates.",
                         no_args_is_help=True, rich_markup_mode=None)


@filter_app.command("apply")
def filter_apply(
    recipe: str = typer.Argument(..., help="Bundled recipe name (pretrain_v1, finetune_hq_v1, demo_v1) or a YAML path."),
    catalog: Optional[str] = CatalogOpt,
    config: Optional[Path] = ConfigOpt,
    workdir: Optional[str] = WorkdirOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would change; record nothing."),
) -> None:
    """Decide every clip again with RECIPE from the scores in the catalog (no score is recomputed).

    Each clip gets a decision naming the recipe version and, when dropped, the first predicate it
    failed; the recipe is recorded by content, so a changed recipe needs a new version.
    """
    from vidcorpus.catalog.corpus_state import active_recipe_id, set_active_recipe  # inside: keeps --help fast
    from vidcorpus.catalog.store import Catalog, CatalogError
    from vidcorpus.filters.apply import apply_recipe
    from vidcorpus.filters.recipes import load_recipe

    cfg = effective_config(config, None, workdir=workdir, catalog=catalog)
    try:
        r = load_recipe(recipe)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    run_id = new_run_id()
    try:
        with Catalog(require_catalog(cfg)) as cat:
            if not dry_run:
                cat.begin_run(run_id, "filter-apply", json.dumps({"recipe": r.id}), __version__)
            was = active_recipe_id(cat)
            res = apply_recipe(cat, r, run_id, dry_run=dry_run)
            if not dry_run:
                set_active_recipe(cat, r, "filter apply", run_id)  # in force for every later command
                cat.finish_run(run_id, "succeeded", {"recipe": r.id, "clips": res.clips, "kept": res.kept})
    except CatalogError as e:
        fail(str(e))
    t = Table(title=f"{r.id}: {res.kept} of {res.clips} clips kept" + (" (dry run)" if dry_run else ""))
    t.add_column("dropped by", overflow="fold")
    t.add_column("clips", justify="right")
    t.add_column("share", justify="right")
    for reason, n in res.reasons.most_common():
        t.add_row(reason, str(n), f"{n / max(1, res.clips):.1%}")
    console.print(t)
    console.print(f"against the previous decisions: {res.newly_kept} newly kept, {res.newly_dropped} newly dropped, "
                  f"{res.changed_reason} dropped for another reason; scores untouched")
    if not dry_run:
        console.print(f"active recipe: {r.id}" + (f" (was {was})" if was and was != r.id else "")
                      + "; `vidcorpus status` lists the captions and shards it still needs, `vidcorpus sync` makes them",
                      markup=False)


@filter_app.command("sweep")
def filter_sweep(
    score: str = typer.Argument(..., help="Score name, e.g. aesthetic, motion, blur, dup_sim."),
    op: str = typer.Option(">=", "--op", help="Comparison a clip must pass: >=, >, <=, <."),
    steps: int = typer.Option(11, "--steps", help="Thresholds at this many quantiles of the score."),
    threshold: Optional[List[float]] = typer.Option(None, "--threshold", "-t", help="Explicit thresholds (repeatable)."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Also show what the whole recipe keeps with this threshold."),
    catalog: Optional[str] = CatalogOpt,
    config: Optional[Path] = ConfigOpt,
    workdir: Optional[str] = WorkdirOpt,
) -> None:
    """Print retention against a threshold on SCORE, from the stored scores (read-only)."""
    from vidcorpus.catalog.store import Catalog, CatalogError  # inside: keeps --help fast
    from vidcorpus.filters.apply import sweep
    from vidcorpus.filters.recipes import load_recipe

    if op not in (">=", ">", "<=", "<"):
        fail(f"--op must be one of >=, >, <=, < (got {op!r})")
    cfg = effective_config(config, None, workdir=workdir, catalog=catalog)
    try:
        r = load_recipe(recipe) if recipe else None
        with Catalog(cfg.catalog_path, read_only=True) as cat:
            rows = sweep(cat, score, op, steps, r, thresholds=threshold or None)
    except (CatalogError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    t = Table(title=f"retention of {score} {op} threshold ({rows[0]['scored']} clips scored)")
    t.add_column("threshold", justify="right")
    t.add_column("kept", justify="right")
    t.add_column("retained", justify="right")
    if r is not None:
        t.add_column(f"kept by {r.id}", justify="right")
        t.add_column("retained (recipe)", justify="right")
    for row in rows:
        cells = [f"{row['threshold']:.4g}", str(row["kept"]), f"{row['kept_frac']:.1%}"]
        if r is not None:
            cells += [str(row["recipe_kept"]), f"{row['recipe_frac']:.1%}"]
        t.add_row(*cells)
    console.print(t)


@filter_app.command("dedup")
def filter_dedup(
    catalog: Optional[str] = CatalogOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    workdir: Optional[str] = WorkdirOpt,
) -> None:
    """Score duplicates (dup_exact, dup_sim) of every clip with an embedding, then re-decide them with
    the catalog's active recipe (a filters.recipe set in --config/--set replaces it, said). Runs use
    the same code on their new clips."""
    from vidcorpus.catalog.store import Catalog  # inside: keeps --help fast (duckdb, ray, the jobs)
    from vidcorpus.jobs.curate.redecide import dedup_and_redecide
    from vidcorpus.jobs.curate.sync import adopt_recipe, pin_recipe

    cfg = effective_config(config, set_, workdir=workdir, catalog=catalog)
    run_id = new_run_id()
    with Catalog(require_catalog(cfg)) as cat:
        cat.begin_run(run_id, "filter-dedup", json.dumps({"recipe": cfg.filters.recipe}), __version__)
        recipe = adopt_recipe(cfg, cat, run_id, "filter dedup")
        cfg = pin_recipe(cfg, recipe)
        console.print(f"deciding with the active recipe {recipe.id}", markup=False)
        ids = cat.query_dicts("SELECT clip_id FROM embeddings")
        n = dedup_and_redecide(cfg, cat, run_id, [r["clip_id"] for r in ids])
        cat.finish_run(run_id, "succeeded", {"clips": n})
    console.print(f"{n} clips scored for duplicates and re-decided")


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
    from vidcorpus.catalog.corpus_state import active_recipe, stored_recipe  # inside: keeps --help fast
    from vidcorpus.catalog.store import Catalog, CatalogError
    from vidcorpus.serve.measure import filter_quality

    cfg = effective_config(config, None, workdir=workdir, catalog=catalog)
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


def _pr(value: float | None, ci: tuple[float, float] | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
