"""Pages that measure filters from labels: per-filter precision and recall, the sampling mode that
makes them unbiased, and the comparison of two recipes (or a recipe and a proposed change)."""

from __future__ import annotations

import random

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vidcorpus.catalog.sql_names import ident
from vidcorpus.serve import grid_queries, measure
from vidcorpus.serve.pages import render
from vidcorpus.serve.recipe_sql import kept_sql, with_change
from vidcorpus.serve.security import Refused, check_recipe_id

SAMPLE_SIZE = 24
COMPARE_LIMIT = 120


def measure_page(request: Request) -> Response:
    with request.app.state.access.read() as con:
        recipe = grid_queries.recorded_recipe(con)
        rows = measure.filter_quality(con, recipe) if recipe else []
    return render("measure.html", recipe=recipe, rows=rows)


def _predicate(recipe, score: str):
    pred = next((p for p in (recipe.predicates if recipe else []) if p.score == score), None)
    if pred is None:
        raise Refused(f"the active recipe has no filter on {score[:40]!r}")
    return pred


def sample_page(request: Request) -> Response:
    """A uniform random sample of the clips one filter drops and of those it keeps (half each),
    not yet labelled from this sample; labels given from here count as the filter's sample."""
    score = request.query_params.get("score", "")
    seed = request.query_params.get("seed") or str(random.randrange(1 << 30))
    if not seed.isdigit():
        raise Refused("seed is a whole number")
    with request.app.state.access.read() as con:
        recipe = grid_queries.recorded_recipe(con)
        pred = _predicate(recipe, score)
        scores = grid_queries.score_columns(con)
        if pred.score not in scores and pred.score not in grid_queries.SORTABLE_CLIP_COLUMNS:
            raise Refused(f"no clip has a {pred.score} score")
        have_labels = "labels" in grid_queries.tables(con)
        unlabelled = ("AND clip_id NOT IN (SELECT clip_id FROM labels WHERE origin = ?)" if have_labels else "")
        halves = {}
        score = ident(pred.score)
        for name, cond in (("flagged", f"NOT ({score} {pred.op} ?)"), ("passed", f"{score} {pred.op} ?")):
            params = [pred.value] + ([f"sample:{pred.score}"] if have_labels else []) + [seed, SAMPLE_SIZE // 2]
            ids = [r[0] for r in con.execute(
                f"SELECT clip_id FROM clips_wide WHERE {score} IS NOT NULL AND {cond} {unlabelled} "
                f"ORDER BY hash(clip_id || ?), clip_id LIMIT ?", params).fetchall()]
            q = grid_queries.GridQuery(clip_ids=ids, per_page=grid_queries.MAX_PER_PAGE)
            halves[name] = grid_queries.grid(con, q, scores)[0] if ids else []
    return render("sample.html", pred=pred, halves=halves, seed=seed, link_suffix=f"?origin=sample:{pred.score}")


def compare_page(request: Request) -> Response:
    """Clips whose decision differs between recipe A and B (B may be A with one changed threshold)."""
    p = request.query_params
    with request.app.state.access.read() as con:
        recipes = [r[0] for r in con.execute("SELECT recipe FROM recipes ORDER BY created_at DESC").fetchall()]
        active = grid_queries.recorded_recipe(con)
        a_id = p.get("a") or (active.id if active else "")
        if not a_id:
            return render("compare.html", recipes=recipes, a=None, b=None, change="", result=None)
        a = grid_queries.recipe_by_id(con, check_recipe_id(a_id))
        if a is None:
            raise Refused(f"no recipe {a_id} in the catalog")
        change = (p.get("change") or "").strip()
        if change:
            try:
                b = with_change(a, change)
            except ValueError as e:
                raise Refused(str(e)) from None
        elif p.get("b"):
            b = grid_queries.recipe_by_id(con, check_recipe_id(p["b"]))
            if b is None:
                raise Refused(f"no recipe {p['b']} in the catalog")
        else:
            return render("compare.html", recipes=recipes, a=a, b=None, change="", result=None)
        columns = set(grid_queries.clips_wide_columns(con))
        try:
            a_sql, a_params = kept_sql(a, columns)
            b_sql, b_params = kept_sql(b, columns)
        except ValueError as e:
            raise Refused(str(e)) from None
        scores = grid_queries.score_columns(con)
        result = {}
        for name, cond, params in (("newly kept", f"NOT {a_sql} AND {b_sql}", a_params + b_params),
                                   ("newly dropped", f"{a_sql} AND NOT {b_sql}", a_params + b_params)):
            n = con.execute(f"SELECT count(*) FROM clips_wide WHERE {cond}", params).fetchall()[0][0]
            ids = [r[0] for r in con.execute(f"SELECT clip_id FROM clips_wide WHERE {cond} ORDER BY clip_id LIMIT ?",
                                             [*params, COMPARE_LIMIT]).fetchall()]
            page = grid_queries.GridQuery(clip_ids=ids, per_page=grid_queries.MAX_PER_PAGE)
            rows = grid_queries.grid(con, page, scores)[0] if ids else []
            result[name] = {"n": n, "rows": rows}
    return render("compare.html", recipes=recipes, a=a, b=b, change=change, result=result)


def measure_routes() -> list[Route]:
    return [Route("/measure", measure_page), Route("/sample", sample_page), Route("/compare", compare_page)]
