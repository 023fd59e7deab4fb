"""What a report covers, as temporary DuckDB views: the catalog, one run, or one release.

The report never loads rows into Python: it creates three temp views on its read-only connection
(``report_clips``, ``report_sources``, ``report_failures``) and every figure aggregates or samples
them in SQL (``vidcorpus/jobs/report/figure_queries.py``). ``report_clips`` is ``clips_wide`` (the one wide
definition) narrowed to the scope, with the source domain and the scores whose names a clip column
shadows (``duration_s``, ``fps``, ...: they stay in the long table) joined in.

``run`` limits the report to what that run wrote (sources and failures with its run_id, clips whose
latest writer it was, as ``funnel_by_run`` counts them); a ``release`` shows the clips its recipe
decided, kept = released.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from vidcorpus.catalog.schema import CLIP_COLUMNS, funnel_body
from vidcorpus.catalog.sql_names import ident, name_literal
from vidcorpus.catalog.store import Catalog
from vidcorpus.catalog.wide_spec import latest_score
from vidcorpus.filters.recipes import load_recipe
from vidcorpus.storage import url_scheme

_SCHEME = r"^([A-Za-z][A-Za-z0-9+.-]*):"
SMALL_CATALOG = 100_000  # clips below which the report's queries run on one DuckDB thread


def source_domain(uri: str | None) -> str:
    """Host of an http(s)/s3 URI, 'local' for files and plain paths, '?' when unknown."""
    if not uri:
        return "?"
    if url_scheme(uri) == "file":  # 'C:' paths too
        return "local"
    parts = urlsplit(uri)
    return (parts.hostname or parts.scheme).lower()


def domain_sql(col: str) -> str:
    """``source_domain`` as a SQL expression over the column ``col`` (tested against it)."""
    scheme = f"lower(regexp_extract({col}, '{_SCHEME}', 1))"
    host = (f"lower(regexp_replace(regexp_extract({col}, '{_SCHEME[:-1]}://(?:[^@/?#]*@)?(\\[[^\\]/?#]*\\]|[^:/?#]*)', 2), "
            "'^\\[|\\]$', '', 'g'))")
    return (f"CASE WHEN {col} IS NULL OR {col} = '' THEN '?' "
            f"WHEN {scheme} IN ('', 'file') OR length({scheme}) = 1 THEN 'local' "
            f"ELSE coalesce(nullif({host}, ''), {scheme}) END")


def domain_key_sql(col: str) -> str:
    """What ``source_domain`` of ``col`` depends on, with string functions only: the scheme and
    authority of a URI with '://', the scheme of one without, '/' for a plain path. Funnels group
    by it (a few values) and name the groups with ``domain_sql``."""
    return (f"CASE WHEN {col} IS NULL OR {col} = '' THEN {col} "
            f"WHEN contains({col}, '://') THEN split_part({col}, '/', 1) || '//' || split_part({col}, '/', 3) "
            f"WHEN NOT contains({col}, ':') OR contains(split_part({col}, ':', 1), '/') THEN '/' "
            f"ELSE split_part({col}, ':', 1) || ':' END")


@dataclass
class ReportData:
    """The scope of one report: its temp views live on ``con`` (open while the report is built)."""

    catalog: str
    run: str | None
    con: Any                                # the read-only DuckDB connection holding the views
    scores: dict[str, str] = field(default_factory=dict)  # scorer -> SQL column of report_clips
    recipe: Any = None                      # vidcorpus.filters.recipes.Recipe or None
    recipe_id: str | None = None
    notes: list[str] = field(default_factory=list)
    release: str | None = None
    events: list[dict] = field(default_factory=list)  # warnings raised in stages (catalog events), counted

    @property
    def scorers(self) -> list[str]:
        return sorted(self.scores)

    def rows(self, sql: str, params: list | None = None) -> list[dict]:
        cur = self.con.execute(sql, params or [])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    def one(self, sql: str, params: list | None = None) -> Any:
        return self.con.execute(sql, params or []).fetchall()[0][0]

    def rows_filter(self) -> str:
        """Which rows of a per-clip long table (captions, scores) the scope covers: all of them, those
        the run wrote, or those of the release's clips."""
        if self.release:
            return "clip_id IN (SELECT clip_id FROM report_clips)"
        return "run_id = getvariable('report_run')" if self.run else "TRUE"

    def count(self, view: str) -> int:
        return int(self.one(f"SELECT count(*) FROM {view}"))

    def funnel(self, by_domain: bool = False, in_force: bool | None = None) -> list[dict]:
        """The catalog's funnel (``catalog.schema.funnel_body``) over this scope, overall or per domain.

        Per domain it is keyed by ``domain_key_sql`` (string functions, no regex per row), and the
        few keys are then named by ``domain_sql`` and summed per domain.
        """
        in_force = self.release is None if in_force is None else in_force
        if not by_domain:
            body = funnel_body(None, "report_clips", "report_sources", "report_failures", in_force=in_force)
            return self.rows(f"SELECT NULL AS domain, stage, n, hours FROM ({body}) ORDER BY step")
        body = funnel_body(domain_key_sql("uri"), "report_clips", "report_sources", "report_failures", in_force=in_force)
        return self.rows(f"SELECT {domain_sql('key')} AS domain, step, stage, sum(n)::BIGINT AS n, sum(hours) AS hours "
                         f"FROM ({body}) GROUP BY ALL ORDER BY domain, step")

def _check_run(cat: Catalog, run: str) -> None:
    if not cat.query_dicts("SELECT run_id FROM runs WHERE run_id = ?", [run]):
        known = ", ".join(r["run_id"] for r in cat.query_dicts("SELECT run_id FROM runs ORDER BY started_at"))
        raise ValueError(f"no run {run!r} in {cat.path} (runs: {known or 'none'})")


def _score_columns(cat: Catalog) -> tuple[list[str], list[str]]:
    """(scorers with a clips_wide column, scorers a clip column shadows: read from the long table)."""
    wide = [r["column_name"] for r in cat.query_dicts(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'clips_wide' "
        "AND table_schema = 'main' ORDER BY ordinal_position") if r["column_name"] not in CLIP_COLUMNS]
    shadowed = [r["scorer"] for r in cat.query_dicts(
        "SELECT DISTINCT scorer FROM scores WHERE scorer IN (SELECT unnest(?)) ORDER BY 1", [sorted(CLIP_COLUMNS)])]
    return wide, shadowed


def load_report_data(cat: Catalog, run: str | None = None, recipe_path: str | None = None,
                     release: str | None = None) -> ReportData:
    """Create the report's views on ``cat``'s connection; ``recipe_path`` is the configured recipe,
    tried when the catalog's recipe name is not a bundled one; ``release`` narrows it to one release."""
    if run:
        _check_run(cat, run)
    con = cat.con
    if con.execute("SELECT count(*) FROM clips_wide").fetchall()[0][0] < SMALL_CATALOG:
        con.execute("SET threads = 1")  # dozens of tiny queries: waking threads costs more than they save
    wide, shadowed = _score_columns(cat)
    joins, cols = "", ""
    for i, name in enumerate(shadowed):  # clips_wide's own pivot column, over that scorer's rows only
        joins += (f" LEFT JOIN (SELECT clip_id, {latest_score(name)} AS v FROM scores WHERE scorer = {name_literal(name)} "
                  f"GROUP BY clip_id) s{i} USING (clip_id)")
        cols += f", s{i}.v AS {ident('score__' + name)}"
    # views take no parameters: the run (and release) go in through session variables, never into SQL text
    con.execute("SET VARIABLE report_run = ?", [run])
    where = " WHERE w.run_id = getvariable('report_run')" if run else ""
    base = f"SELECT w.*{cols} FROM clips_wide w{joins}{where}"

    data = ReportData(str(cat.path), run, con, events=cat.events(run))
    if release:
        base = _release_clips(cat, data, release, base)
        src_sql = "SELECT * FROM sources WHERE source_id IN (SELECT source_id FROM report_clips)"
        fail_sql = ("SELECT * FROM failures WHERE source_id IN (SELECT source_id FROM report_clips) "
                    "OR item_id IN (SELECT clip_id FROM report_clips)")
    else:
        src_sql = "SELECT * FROM sources" + (" WHERE run_id = getvariable('report_run')" if run else "")
        fail_sql = "SELECT * FROM failures" + (" WHERE run_id = getvariable('report_run')" if run else "")
    for view, sql in (("report_clips", base), ("report_sources", src_sql), ("report_failures", fail_sql)):
        con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS {sql}")
    present = data.rows("SELECT " + ", ".join(
        [f"count({ident(n)}) AS {ident(n)}" for n in wide] + [f"count({ident('score__' + n)}) AS {ident(n)}" for n in shadowed]
        or ["1"])
        + " FROM report_clips")[0] if wide or shadowed else {}
    data.scores = {n: ident(n) for n in wide if present.get(n)}
    data.scores.update({n: ident("score__" + n) for n in shadowed if present.get(n)})
    _attach_recipe(data, recipe_path, {r["recipe"]: r["yaml"] for r in cat.query_dicts("SELECT recipe, yaml FROM recipes")})
    return data


def _release_clips(cat: Catalog, data: ReportData, name: str, base: str) -> str:
    """The release's population: clips its recipe decided; kept = member; a clip the recipe kept that
    the selection left out is dropped with reason "outside the release's selection"."""
    row = cat.release(name)
    if row is None:
        known = ", ".join(r["name"] for r in cat.releases())
        raise ValueError(f"no release {name!r} in {cat.path} (releases: {known or 'none'})")
    cat.con.execute("SET VARIABLE report_release = ?", [name])
    cat.con.execute("SET VARIABLE report_recipe = ?", [row["recipe"]])
    n_members = len(cat.release_clip_ids(name))
    sql = f"""
        WITH d AS (SELECT clip_id, arg_max(kept, decided_at) AS r_kept, arg_max_null(reason, decided_at) AS r_reason
                   FROM decisions WHERE recipe = getvariable('report_recipe') GROUP BY clip_id),
        m AS (SELECT DISTINCT clip_id, TRUE AS member FROM release_members WHERE name = getvariable('report_release'))
        SELECT b.* REPLACE (coalesce(m.member, FALSE) AS kept,
                            CASE WHEN NOT d.r_kept THEN d.r_reason WHEN m.member THEN NULL
                                 ELSE 'outside the release''s selection' END AS reason,
                            getvariable('report_recipe') AS recipe)
        FROM ({base}) b JOIN d USING (clip_id) LEFT JOIN m USING (clip_id)"""
    n = cat.con.execute(f"SELECT count(*) FROM ({sql})").fetchall()[0][0]
    data.release = name
    data.notes.append(f"release {name}: {n_members} of the {n} clips that {row['recipe']} decided"
                      + (f", selection {row['select_sql']}" if row["select_sql"] else ""))
    return sql


def _attach_recipe(data: ReportData, recipe_path: str | None, stored: dict[str, str]) -> None:
    """The recipe most clips were decided by: its content as the catalog stored it (so a recipe
    from a file draws its thresholds after the file is gone), else by name or the configured path."""
    used = data.rows("SELECT recipe, count(*) AS n FROM report_clips WHERE recipe IS NOT NULL GROUP BY recipe")
    if len(used) > 1:  # in the order the clips first show them (by clip id), as ties are broken
        used = data.rows("SELECT recipe, count(*) AS n, min(clip_id) AS first FROM report_clips "
                         "WHERE recipe IS NOT NULL GROUP BY recipe ORDER BY first")
    if not used:
        data.notes.append("no decisions: no recipe thresholds to draw")
        return
    data.recipe_id = sorted(used, key=lambda r: -r["n"])[0]["recipe"]  # most clips; ties: first seen
    if len(used) > 1:
        data.notes.append("clips were decided by several recipes: " + ", ".join(f"{r['recipe']} ({r['n']})" for r in used)
                          + f"; thresholds drawn are those of {data.recipe_id}")
    name = data.recipe_id.rsplit("@", 1)[0]
    first = [stored[data.recipe_id]] if data.recipe_id in stored else []
    for candidate in first + ([recipe_path] if recipe_path else []) + [name]:
        try:
            recipe = load_recipe(candidate)
        except (FileNotFoundError, ValueError):
            continue
        if recipe.name == name:
            if recipe.id != data.recipe_id:
                data.notes.append(f"recipe file is {recipe.id}, clips were decided by {data.recipe_id}")
            data.recipe = recipe
            return
    data.notes.append(f"recipe {data.recipe_id} not found (pass --config with its filters.recipe): no thresholds")
