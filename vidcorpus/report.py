"""`vidcorpus report`: a static, self-contained HTML audit of a catalog, plus rich terminal tables.

Data engineers audit filtering by looking: the funnel per source domain, every score's histogram
with the recipe's thresholds and the retention curve of each threshold, the failure taxonomy,
caption lengths per caption version, first-frame galleries near each threshold and per score
decile, and one drill-down page per clip shown. Everything (PNGs, thumbnails) is written into the
output folder, so the page opens from file:// with no network and no scripts. Every text from the
catalog is HTML-escaped: captions are model output and source texts are user input.

``run`` limits the report to rows that run wrote (sources, clips, scores, decisions, captions,
failures with that run_id); shard and training membership of those clips count whatever run made it.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import duckdb
import numpy as np
from rich.console import Console
from rich.table import Table

from vidcorpus.catalog.store import Catalog

FUNNEL_STAGES = ("sources", "failed", "shots", "scored", "kept", "captioned", "sharded", "trained_on")
SCATTER = ("aesthetic", "clip_text")
_OPS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    ">=": np.greater_equal, ">": np.greater, "<=": np.less_equal, "<": np.less, "==": np.equal, "!=": np.not_equal}


def source_domain(uri: str | None) -> str:
    """Host of an http(s)/s3 URI, 'local' for files and plain paths, '?' when unknown."""
    if not uri:
        return "?"
    parts = urlsplit(uri)
    if parts.scheme in ("", "file") or len(parts.scheme) == 1:  # 'C:' paths too
        return "local"
    return (parts.hostname or parts.scheme).lower()


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def _e(value: Any) -> str:
    """HTML-escaped text of a value (floats shortened)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return html.escape(f"{value:.4g}")
    return html.escape(str(value), quote=True)


# -- data ----------------------------------------------------------------------------------------

@dataclass
class ReportData:
    """What the report shows, read once from the catalog (optionally limited to one run)."""

    catalog: str
    run: str | None
    clips: list[dict]                       # one per clip: ids, uri, domain, duration, decision, caption flags
    scores: dict[str, dict[str, float]]     # clip_id -> scorer -> latest value
    sources: list[dict]
    failures: list[dict]
    captions: list[dict]
    recipe: Any = None                      # vidcorpus.filters.recipes.Recipe or None
    recipe_id: str | None = None
    notes: list[str] = field(default_factory=list)
    release: str | None = None
    caption_qa: list[dict] = field(default_factory=list)  # clip_id, scorer (caption_*), version, value
    events: list[dict] = field(default_factory=list)  # warnings raised in stages (catalog events), counted

    @property
    def scorers(self) -> list[str]:
        return sorted({s for v in self.scores.values() for s in v})

    def values(self, scorer: str) -> np.ndarray:
        """Values of one score aligned with ``clips`` (NaN where a clip lacks it)."""
        return np.array([self.scores.get(c["clip_id"], {}).get(scorer, np.nan) for c in self.clips], dtype=float)

    def kept_mask(self) -> np.ndarray:
        return np.array([bool(c["kept"]) for c in self.clips], dtype=bool)


def _where(run: str | None, alias: str = "") -> str:
    return f" WHERE {alias}run_id = $run" if run else ""


def _dicts(cat: Catalog, sql: str, params: Any = None) -> list[dict]:
    cur = cat.con.execute(sql, params) if params else cat.con.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def load_report_data(cat: Catalog, run: str | None = None, recipe_path: str | None = None,
                     release: str | None = None) -> ReportData:
    """Read everything the report needs; ``recipe_path`` is the configured recipe, tried when the
    catalog's recipe name is not a bundled one; ``release`` narrows it to one release."""
    p = {"run": run} if run else {}

    def q(sql: str) -> list[dict]:
        return _dicts(cat, sql, p)

    if run and not q("SELECT run_id FROM runs" + _where(run)):
        known = ", ".join(r["run_id"] for r in cat.query_dicts("SELECT run_id FROM runs ORDER BY started_at"))
        raise ValueError(f"no run {run!r} in {cat.path} (runs: {known or 'none'})")
    sources = q("SELECT source_id, uri, text, status, media_type, duration_s FROM sources" + _where(run))
    uri_of = {r["source_id"]: r["uri"] for r in cat.query_dicts("SELECT source_id, uri FROM sources")}
    clips = q(
        "SELECT c.clip_id, c.source_id, c.media_type, c.duration_s, c.width, c.height, c.first_frame_path, "
        "c.clip_path, c.run_id FROM clips c" + _where(run, "c.") + " ORDER BY c.clip_id")
    decided = {r["clip_id"]: r for r in q(
        "SELECT clip_id, arg_max(kept, decided_at) AS kept, arg_max_null(reason, decided_at) AS reason, "
        "arg_max(recipe, decided_at) AS recipe FROM decisions" + _where(run) + " GROUP BY clip_id")}
    scores: dict[str, dict[str, float]] = defaultdict(dict)
    for r in q("SELECT clip_id, scorer, arg_max(value, written_at) AS value FROM scores" + _where(run)
               + " GROUP BY clip_id, scorer"):
        if r["value"] is not None:
            scores[r["clip_id"]][r["scorer"]] = float(r["value"])
    try:
        captions = q("SELECT clip_id, version, kind, text, model, prompt_version, meta_json, decode FROM captions"
                     + _where(run))
    except duckdb.BinderException:  # a snapshot exported before captions recorded their decode path
        captions = q("SELECT clip_id, version, kind, text, model, prompt_version, meta_json, NULL AS decode "
                     "FROM captions" + _where(run))
    caption_qa = [r for r in q("SELECT clip_id, scorer, version, arg_max(value, written_at) AS value FROM scores"
                               + _where(run) + " GROUP BY clip_id, scorer, version")
                  if r["scorer"].startswith("caption_") and r["value"] is not None]
    long_captioned = {c["clip_id"] for c in captions if c["kind"] == "long" and c["text"]}
    versions: dict[str, set[str]] = defaultdict(set)
    for c in captions:
        versions[c["clip_id"]].add(c["version"])
    sharded = {r["clip_id"] for r in cat.query_dicts("SELECT DISTINCT clip_id FROM shard_members")}
    trained = {r["clip_id"] for r in cat.query_dicts("SELECT DISTINCT clip_id FROM train_samples")}
    for c in clips:
        d = decided.get(c["clip_id"], {})
        c.update(uri=uri_of.get(c["source_id"]), domain=source_domain(uri_of.get(c["source_id"])),
                 kept=d.get("kept"), reason=d.get("reason"), recipe=d.get("recipe"),
                 caption_version=", ".join(sorted(versions.get(c["clip_id"], ()))),
                 scored=c["clip_id"] in scores, captioned=c["clip_id"] in long_captioned,
                 sharded=c["clip_id"] in sharded, trained=c["clip_id"] in trained)
    failures = q("SELECT item_id, stage, source_id, uri, error_class, error, attempts, run_id FROM failures"
                 + _where(run) + " ORDER BY stage, error_class, item_id")
    data = ReportData(cat.path, run, clips, dict(scores), sources, failures, captions, caption_qa=caption_qa,
                      events=cat.events(run))
    if release:
        _limit_to_release(cat, data, release)
    stored = {r["recipe"]: r["yaml"] for r in _dicts(cat, "SELECT recipe, yaml FROM recipes", {})}
    _attach_recipe(data, recipe_path, stored)
    return data


def _limit_to_release(cat: Catalog, data: ReportData, name: str) -> None:
    """Report a release: the clips its recipe decided, kept = released, reasons from that recipe.

    A clip the recipe kept that the release's selection left out is shown as dropped with reason
    "outside the release's selection"; sources and failures narrow to those clips' sources.
    """
    row = cat.release(name)
    if row is None:
        known = ", ".join(r["name"] for r in cat.releases())
        raise ValueError(f"no release {name!r} in {cat.path} (releases: {known or 'none'})")
    decided = {r["clip_id"]: r for r in cat.query_dicts(
        "SELECT clip_id, kept, reason FROM decisions WHERE recipe = ?", [row["recipe"]])}
    members = cat.release_clip_ids(name)
    clips = []
    for c in data.clips:
        d = decided.get(c["clip_id"])
        if d is None:
            continue
        member = c["clip_id"] in members
        reason = d["reason"] if not d["kept"] else (None if member else "outside the release's selection")
        clips.append(dict(c, kept=member, reason=reason, recipe=row["recipe"]))
    data.clips = clips
    ids = {c["clip_id"] for c in clips}
    srcs = {c["source_id"] for c in clips}
    data.scores = {k: v for k, v in data.scores.items() if k in ids}
    data.captions = [c for c in data.captions if c["clip_id"] in ids]
    data.caption_qa = [c for c in data.caption_qa if c["clip_id"] in ids]
    data.sources = [s for s in data.sources if s["source_id"] in srcs]
    data.failures = [f for f in data.failures if f["source_id"] in srcs or f["item_id"] in ids]
    data.release = name
    data.notes.append(f"release {name}: {len(members)} of the {len(clips)} clips that {row['recipe']} decided"
                      + (f", selection {row['select_sql']}" if row["select_sql"] else ""))


def _attach_recipe(data: ReportData, recipe_path: str | None, stored: dict[str, str] | None = None) -> None:
    """The recipe most clips were decided by: its content as the catalog stored it (so a recipe
    from a file draws its thresholds after the file is gone), else by name or the configured path."""
    from vidcorpus.filters.recipes import load_recipe

    used = Counter(c["recipe"] for c in data.clips if c["recipe"])
    if not used:
        data.notes.append("no decisions: no recipe thresholds to draw")
        return
    data.recipe_id = used.most_common(1)[0][0]
    if len(used) > 1:
        data.notes.append("clips were decided by several recipes: " + ", ".join(f"{k} ({n})" for k, n in used.items())
                          + f"; thresholds drawn are those of {data.recipe_id}")
    name = data.recipe_id.rsplit("@", 1)[0]
    first = [stored[data.recipe_id]] if stored and data.recipe_id in stored else []
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


# -- numbers ------------------------------------------------------------------------------------

def funnel_rows(data: ReportData, domain: str | None = None) -> list[dict]:
    """Counts and hours per stage (overall or for one source domain), like the catalog's funnel view."""
    srcs = [s for s in data.sources if domain is None or source_domain(s["uri"]) == domain]
    clips = [c for c in data.clips if domain is None or c["domain"] == domain]
    fails = [f for f in data.failures if domain is None or source_domain(f["uri"]) == domain]

    def hours(rows: list[dict]) -> float:
        return sum(r["duration_s"] or 0.0 for r in rows) / 3600

    picks = {"shots": clips, "scored": [c for c in clips if c["scored"]], "kept": [c for c in clips if c["kept"]],
             "captioned": [c for c in clips if c["kept"] and c["captioned"]],
             "sharded": [c for c in clips if c["sharded"]], "trained_on": [c for c in clips if c["trained"]]}
    rows = [{"stage": "sources", "n": len(srcs), "hours": hours([s for s in srcs if s["status"] == "done"])},
            {"stage": "failed", "n": len({f["source_id"] or f["item_id"] for f in fails}), "hours": None}]
    rows += [{"stage": k, "n": len(v), "hours": hours(v)} for k, v in picks.items()]
    return rows


def domains(data: ReportData) -> list[str]:
    return sorted({source_domain(s["uri"]) for s in data.sources} | {c["domain"] for c in data.clips})


def predicate_masks(data: ReportData) -> list[tuple[Any, np.ndarray, np.ndarray]]:
    """(predicate, values, passes) per recipe predicate, with its missing-score policy applied."""
    out = []
    if data.recipe is None:
        return out
    for pred in data.recipe.predicates:
        x = data.values(pred.score)
        with np.errstate(invalid="ignore"):
            ok = _OPS[pred.op](x, pred.value)
        missing_keeps = (pred.missing or data.recipe.missing) == "keep"
        out.append((pred, x, np.where(np.isnan(x), missing_keeps, ok)))
    return out


def retention_curve(data: ReportData, masks, index: int, points: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """Clips the whole recipe keeps as predicate ``index``'s threshold sweeps its score's range.

    The sweep covers the values clips have (a threshold far outside them would flatten the curve).
    """
    pred, x, _ = masks[index]
    others = np.ones(len(data.clips), dtype=bool)
    for j, (_, _, m) in enumerate(masks):
        if j != index:
            others &= m
    finite = x[np.isfinite(x)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (pred.value - 1, pred.value + 1)
    pad = (hi - lo) * 0.05 or 0.5
    xs = np.linspace(lo - pad, hi + pad, points)
    missing_keeps = (pred.missing or data.recipe.missing) == "keep"
    ys = np.empty(points)
    for i, t in enumerate(xs):
        with np.errstate(invalid="ignore"):
            passes = np.where(np.isnan(x), missing_keeps, _OPS[pred.op](x, t))
        ys[i] = int(np.sum(others & passes))
    return xs, ys


def caption_stats(data: ReportData) -> list[dict]:
    """Per caption version and kind: count, words (mean, median, max), degenerate flags if recorded."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for c in data.captions:
        groups[(c["version"], c["kind"])].append(c)
    out = []
    for (version, kind), rows in sorted(groups.items()):
        words = np.array([len((r["text"] or "").split()) for r in rows])
        flags = []
        for r in rows:
            try:
                meta = json.loads(r["meta_json"] or "{}")
            except ValueError:
                meta = {}
            if isinstance(meta, dict) and "degenerate" in meta:
                flags.append(bool(meta["degenerate"]))
        decodes = Counter(r.get("decode") or "not generated" for r in rows)
        out.append({"version": version, "kind": kind, "n": len(rows), "words": words,
                    "decode": ", ".join(f"{k} {n}" for k, n in sorted(decodes.items())),
                    "mean_words": float(words.mean()), "median_words": float(np.median(words)),
                    "max_words": int(words.max()), "degenerate": sum(flags) if flags else None,
                    "flagged": len(flags)})
    return out


# -- terminal -----------------------------------------------------------------------------------

def print_headline(data: ReportData, console: Console) -> None:
    """The report's headline numbers as rich tables: funnel per domain, drop reasons, failures."""
    doms = domains(data)
    per = {d: funnel_rows(data, d) for d in doms}
    t = Table(title=f"funnel{' of run ' + data.run if data.run else ''} (items / hours)")
    t.add_column("stage")
    t.add_column("all", justify="right")
    for d in doms:
        t.add_column(d, justify="right")
    for i, row in enumerate(funnel_rows(data)):
        cells = [row] + [per[d][i] for d in doms]
        t.add_row(row["stage"], *[f"{r['n']}" + ("" if r["hours"] is None else f" / {r['hours']:.3g} h") for r in cells])
    console.print(t)
    reasons = Counter(c["reason"] or "(none)" for c in data.clips if c["kept"] is False)
    if reasons:
        t = Table(title=f"drop reasons ({data.recipe_id})")
        t.add_column("reason")
        t.add_column("clips", justify="right")
        for reason, n in reasons.most_common():
            t.add_row(reason, str(n))
        console.print(t)
    if data.failures:
        t = Table(title="failures by class")
        for col in ("stage", "error_class", "n", "example"):
            t.add_column(col, justify="right" if col == "n" else "left", overflow="fold")
        for (stage, cls), rows in _failure_groups(data).items():
            t.add_row(stage, cls, str(len(rows)), (rows[0]["error"] or "")[:120])
        console.print(t)


def _failure_groups(data: ReportData) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for f in data.failures:
        groups[(f["stage"], f["error_class"])].append(f)
    return dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))


# -- writing ------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#212529;max-width:1200px}
h1{font-size:24px} h2{font-size:19px;border-bottom:1px solid #dee2e6;padding-bottom:4px;margin-top:32px}
h3{font-size:15px;margin-bottom:4px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #dee2e6;padding:3px 7px;text-align:left;vertical-align:top}
td.n{text-align:right} .note{color:#868e96;font-size:13px}
.gallery{display:flex;flex-wrap:wrap;gap:6px;margin:4px 0 12px}
.gallery a{display:block;text-decoration:none;color:#495057;font-size:11px;width:164px}
.gallery img{width:160px;border:2px solid #dee2e6;display:block}
.kept img{border-color:#2b8a3e} .dropped img{border-color:#c92a2a}
.plots{display:flex;flex-wrap:wrap;gap:8px} .plots img{max-width:100%} .err{font-family:monospace;font-size:12px;white-space:pre-wrap}
nav a{margin-right:10px}
"""


def _page(title: str, body: str, css_href: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<link rel=\"stylesheet\" href=\"{css_href}\"></head><body>\n{body}\n</body></html>\n")


def _table(headers: list[str], rows: list[list[Any]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td{' class=n' if i in numeric else ''}>{cell}</td>"
                                    for i, cell in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


@dataclass
class ReportResult:
    index: Path
    plots: list[Path]
    clip_pages: int
    seconds: float


NSFW_BLUR_AT = 0.2  # thumbnails of clips whose nsfw score reaches this are shown blurred


class _Writer:
    """Writes PNGs, thumbnails and pages into one folder; remembers which clips need a page."""

    def __init__(self, data: ReportData, out: Path, thumb_px: int):
        self.data, self.out, self.thumb_px = data, out, thumb_px
        self.plots: list[Path] = []
        self.pages: set[str] = set()
        for sub in ("plots", "thumbs", "clips"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        self.by_id = {c["clip_id"]: c for c in data.clips}

    def plot(self, name: str) -> Path:
        path = self.out / "plots" / f"{_safe_name(name)}.png"
        self.plots.append(path)
        return path

    def img(self, path: Path, alt: str) -> str:
        return f'<img src="{_e(path.relative_to(self.out).as_posix())}" alt="{_e(alt)}">'

    def thumb(self, clip: dict) -> str:
        """Relative path of the clip's thumbnail (made on first use; a grey tile if the frame is gone)."""
        from PIL import Image, ImageDraw

        rel = f"thumbs/{_safe_name(clip['clip_id'])}.jpg"
        dst = self.out / rel
        if not dst.exists():
            img = None
            src = clip.get("first_frame_path")
            if src:
                try:
                    from vidcorpus.media import open_local_or_remote

                    with open_local_or_remote(src) as f:
                        img = Image.open(f)
                        img.load()
                except Exception:  # noqa: BLE001 - a missing frame must not stop the report
                    img = None
            if img is None:
                img = Image.new("RGB", (self.thumb_px, self.thumb_px * 9 // 16), (222, 226, 230))
                ImageDraw.Draw(img).text((8, 8), "no first frame", fill=(73, 80, 87))
            img = img.convert("RGB")
            img.thumbnail((self.thumb_px, self.thumb_px))
            if self.data.scores.get(clip["clip_id"], {}).get("nsfw", 0.0) >= NSFW_BLUR_AT:
                from PIL import ImageFilter

                img = img.filter(ImageFilter.GaussianBlur(max(4, img.width // 12)))
            img.save(dst, format="JPEG", quality=85)
        return rel

    def page(self, clip: dict) -> str:
        self.pages.add(clip["clip_id"])
        return f"clips/{_safe_name(clip['clip_id'])}.html"

    def link(self, clip: dict) -> str:
        return f'<a href="{_e(self.page(clip))}">{_e(clip["clip_id"])}</a>'

    def tile(self, clip: dict, label: str) -> str:
        cls = "kept" if clip["kept"] else "dropped"
        return (f'<a class="{cls}" href="{_e(self.page(clip))}" title="{_e(clip["clip_id"])}">'
                f'<img src="{_e(self.thumb(clip))}" alt="{_e(clip["clip_id"])}">{_e(label)}</a>')


def build_report(catalog: str | Path, out_dir: str | Path, run: str | None = None, recipe_path: str | None = None,
                 console: Console | None = None, per_gallery: int = 6, thumb_px: int = 320,
                 max_clip_pages: int = 2000, release: str | None = None) -> ReportResult:
    """Write ``out_dir/index.html`` and print the headline tables when a console is given.

    Drill-down pages are written for every clip when there are at most ``max_clip_pages``,
    otherwise for the clips the galleries show.
    """
    from vidcorpus import report_plots as rp
    from vidcorpus.report_footage import footage_plot, footage_rows, footage_section
    from vidcorpus.report_labels import filter_quality_section
    from vidcorpus.serve.measure import filter_quality
    from vidcorpus.report_stages import SECTION, load_stages, stage_section
    from vidcorpus.report_stages import headline as stage_headline

    t0 = time.time()
    out = Path(out_dir)
    with Catalog(catalog, read_only=True) as cat:  # a missing catalog, run or release: no folder made
        data = load_report_data(cat, run, recipe_path, release)
        footage = footage_rows(cat)
        quality = filter_quality(cat.con, data.recipe) if data.recipe is not None else []
        stages = load_stages(cat, run)
    out.mkdir(parents=True, exist_ok=True)
    clear_report_dir(out)
    w = _Writer(data, out, thumb_px)
    (out / "report.css").write_text(CSS)
    kept = data.kept_mask()
    masks = predicate_masks(data)
    sections: list[tuple[str, str, str]] = []  # (anchor, title, html)

    # funnel, overall and per domain
    overall = funnel_rows(data)
    rp.funnel_plot([r["stage"] for r in overall], [r["n"] for r in overall], [r["hours"] for r in overall],
                   w.plot("funnel"))
    doms = domains(data)
    per = {d: funnel_rows(data, d) for d in doms}
    rows = [[_e(r["stage"])] + [f"{x[i]['n']}" + ("" if x[i]["hours"] is None else f" / {x[i]['hours']:.3g} h")
                                for x in [overall] + [per[d] for d in doms]] for i, r in enumerate(overall)]
    sections.append(("funnel", "Funnel", w.img(w.plots[-1], "funnel") + "<h3>items / hours per source domain</h3>"
                     + _table(["stage", "all"] + doms, rows, set(range(1, len(doms) + 2)))))

    # where the footage went: every source frame in a clip or a dropped segment (vidcorpus/report_footage.py)
    footage_html = ""
    if footage:
        footage_plot(footage, w.plot("footage"))
        footage_html = w.img(w.plots[-1], "where the footage went")
    sections.append(("footage", "Where the footage went", footage_section(footage, footage_html, _table)))

    # where the time goes: the run's stages on one timeline (vidcorpus/report_stages.py)
    sections.append((*SECTION, stage_section(stages, w.plot, w.img, _table)))

    # decisions: reasons
    reasons = Counter(c["reason"] or "(none)" for c in data.clips if c["kept"] is False)
    body = f"<p>recipe <b>{_e(data.recipe_id or 'none')}</b>: {int(kept.sum())} of {len(data.clips)} clips kept.</p>"
    if data.recipe is not None:
        body += "<p>predicates, in order: " + ", ".join(f"<code>{_e(str(p))}</code>" for p in data.recipe.predicates) \
            + f" (missing scores: {_e(data.recipe.missing)})</p>"
    if reasons:
        rp.bar_plot(list(reasons), list(reasons.values()), "dropped clips by reason", w.plot("reasons"))
        body += w.img(w.plots[-1], "drop reasons") + _table(
            ["reason", "clips"], [[_e(k), v] for k, v in reasons.most_common()], {1})
    body += "".join(f'<p class="note">{_e(n)}</p>' for n in data.notes)
    sections.append(("decisions", "Decisions", body))
    sections.append(("filter-quality", "Filter quality from labels", filter_quality_section(quality, _table, _e)))

    # scores: histograms with thresholds, retention curves, scatter
    thr: dict[str, list[tuple[str, float]]] = defaultdict(list)
    first_pred: dict[str, int] = {}
    for i, (pred, _, _) in enumerate(masks):
        thr[pred.score].append((pred.op, pred.value))
        first_pred.setdefault(pred.score, i)
    body = ('<p class="note">Stacked histograms of kept (green) and dropped (red) clips; dashed lines are the '
            "recipe's thresholds. Right: clips the whole recipe would keep if only that threshold moved.</p>"
            '<div class="plots">')
    for name in data.scorers:
        x = data.values(name)
        has = np.isfinite(x)
        curve = retention_curve(data, masks, first_pred[name]) if name in first_pred else None
        rp.score_plot(name, x[has & kept], x[has & ~kept], thr.get(name, []), curve, len(data.clips),
                      w.plot(f"score_{name}"))
        body += f'<div id="score-{_e(name)}">' + w.img(w.plots[-1], f"{name} histogram") + "</div>"
    body += "</div>"
    if all(s in data.scorers for s in SCATTER):
        a, b = data.values(SCATTER[0]), data.values(SCATTER[1])
        has = np.isfinite(a) & np.isfinite(b)
        rp.scatter_plot(a[has], b[has], kept[has], *SCATTER, [v for _, v in thr.get(SCATTER[0], [])],
                        [v for _, v in thr.get(SCATTER[1], [])], w.plot("scatter_aesthetic_clip_text"))
        body += "<h3>aesthetic vs CLIP text score</h3>" + w.img(w.plots[-1], "aesthetic vs clip_text")
    sections.append(("scores", "Scores and thresholds", body if data.scorers else "<p>no scores</p>"))

    # galleries
    sections.append(("galleries", "Galleries", _galleries(w, masks, per_gallery)))

    # failures
    groups = _failure_groups(data)
    if groups:
        labels = [f"{s}: {c}" for s, c in groups]
        rp.bar_plot(labels, [len(v) for v in groups.values()], "failures by stage: error class", w.plot("failures"))
        rows = [[_e(s), _e(c), len(v), max(f["attempts"] or 1 for f in v),
                 "".join(f'<div class="err">{_e(f["uri"] or f["item_id"])}\n{_e(f["error"])}</div>' for f in v[:3])]
                for (s, c), v in groups.items()]
        body = w.img(w.plots[-1], "failures") + _table(["stage", "error class", "n", "max attempts", "examples"],
                                                       rows, {2, 3})
    else:
        body = "<p>no failures</p>"
    sections.append(("failures", "Failure taxonomy", body))
    if data.events:  # warnings and fast paths that switched themselves off, raised inside the stages
        sections.append(("warnings", "Warnings in stages", _table(
            ["stage", "kind", "count", "runs", "message"],
            [[_e(e["stage"]), _e(e["kind"]), e["count"], e["runs"], _e(e["message"])] for e in data.events], {2, 3})))

    # captions
    stats = caption_stats(data)
    if stats:
        rp.caption_length_plot({f"{s['version']}/{s['kind']}": s["words"] for s in stats}, w.plot("caption_length"))
        rows = [[_e(s["version"]), _e(s["kind"]), s["n"], f"{s['mean_words']:.1f}", f"{s['median_words']:.0f}",
                 s["max_words"], "" if s["degenerate"] is None else f"{s['degenerate']} of {s['flagged']}",
                 _e(s["decode"])] for s in stats]
        body = w.img(w.plots[-1], "caption length") + _table(
            ["version", "kind", "captions", "mean words", "median", "max", "degenerate", "decode path"], rows,
            {2, 3, 4, 5})
        body += _caption_qa_section(w, data)
    else:
        body = "<p>no captions</p>"
    sections.append(("captions", "Captions", body))

    # every clip, when there are few enough for one page each
    if len(data.clips) <= max_clip_pages:
        rows = [[w.link(c), _e(c["kept"]), _e(c["reason"]), _e(c["domain"]), _e(c["duration_s"]),
                 _e(c["caption_version"])] for c in data.clips]
        body = _table(["clip", "kept", "reason", "domain", "duration (s)", "caption"], rows, {4})
    else:
        body = f'<p class="note">{len(data.clips)} clips: pages only for the clips the galleries show.</p>'
    sections.append(("clips", "Clips", body))

    n_pages = _clip_pages(w)
    nav = "<nav>" + "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t, _ in sections) + "</nav>"
    head = (f"<h1>vidcorpus audit report</h1><p>catalog <code>{_e(data.catalog)}</code>"
            f"{' &middot; run <code>' + _e(run) + '</code>' if run else ''}"
            f"{' &middot; release <code>' + _e(release) + '</code>' if release else ''} &middot; {len(data.clips)} clips, "
            f"{len(data.sources)} sources, {len(data.failures)} failures &middot; written "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}</p>")
    page = head + nav + "".join(f'<section id="{a}"><h2>{_e(t)}</h2>{b}</section>' for a, t, b in sections)
    index = out / "index.html"
    index.write_text(_page("vidcorpus report", page, "report.css"), encoding="utf-8")
    if console is not None:
        print_headline(data, console)
        if (line := stage_headline(stages)) is not None:  # where the run's time went, in one line
            console.print(line, markup=False)
    return ReportResult(index, list(w.plots), n_pages, time.time() - t0)


def _caption_qa_section(w: _Writer, data: ReportData) -> str:
    """Caption-QA distributions per QA score and caption version (the score's version field)."""
    from vidcorpus import report_plots as rp

    groups: dict[str, list[float]] = defaultdict(list)
    for r in data.caption_qa:
        groups[f"{r['scorer']} {r['version']}"].append(float(r["value"]))
    if not groups:
        return '<p class="note">no caption QA scores in this catalog yet (scores named caption_*).</p>'
    arrays = {k: np.array(v) for k, v in sorted(groups.items())}
    rp.box_plot(arrays, "score", "caption QA per score and caption version", w.plot("caption_qa"))
    rows = [[_e(k.split(" ", 1)[0]), _e(k.split(" ", 1)[1]), len(v), f"{v.mean():.3f}", f"{np.median(v):.3f}",
             f"{v.min():.3f}", f"{v.max():.3f}"] for k, v in arrays.items()]
    return ("<h3>caption QA per version</h3>" + w.img(w.plots[-1], "caption QA")
            + _table(["score", "caption version", "captions", "mean", "median", "min", "max"], rows, {2, 3, 4, 5, 6}))


def _galleries(w: _Writer, masks, per_gallery: int) -> str:
    """Clips nearest each threshold on both sides, and one clip per decile of each recipe score."""
    data = w.data
    kept = data.kept_mask()
    body = ""
    for i, (pred, x, _) in enumerate(masks):
        dist = np.abs(x - pred.value)
        failure = pred.failure()
        just_kept = [j for j in np.argsort(dist, kind="stable") if kept[j] and np.isfinite(x[j])][:per_gallery]
        just_dropped = [j for j in np.argsort(dist, kind="stable")
                        if data.clips[j]["reason"] == failure and np.isfinite(x[j])][:per_gallery]
        body += f'<h3 id="near-{i}">near <code>{_e(str(pred))}</code></h3>'
        for label, idx in (("just kept", just_kept), (f"just dropped ({failure})", just_dropped)):
            tiles = "".join(w.tile(data.clips[j], f"{pred.score}={x[j]:.4g}") for j in idx)
            body += f"<div>{_e(label)}: {len(idx)}</div><div class=\"gallery\">{tiles or '<span class=note>none</span>'}</div>"
    names = list(dict.fromkeys([p.score for p, _, _ in masks] + [s for s in SCATTER if s in data.scorers]))
    for name in names:
        x = data.values(name)
        idx = np.flatnonzero(np.isfinite(x))
        if idx.size == 0:
            continue
        order = idx[np.argsort(x[idx], kind="stable")]
        picks: list[tuple[int, int]] = []
        for d, part in enumerate(np.array_split(order, min(10, order.size))):
            picks.append((d + 1, int(part[len(part) // 2])))  # the decile's median clip
        tiles = "".join(w.tile(data.clips[j], f"decile {d}: {x[j]:.4g}") for d, j in picks)
        body += f'<h3>{_e(name)} by decile</h3><div class="gallery">{tiles}</div>'
    return body or "<p>no scores to show</p>"


def _clip_pages(w: _Writer) -> int:
    """One page per clip shown in a gallery: every score, decision and caption the catalog holds."""
    data = w.data
    ids = sorted(w.pages)
    if not ids:
        return 0
    with Catalog(data.catalog, read_only=True) as cat:
        def by_clip(sql: str) -> dict[str, list[dict]]:
            out: dict[str, list[dict]] = defaultdict(list)
            for r in _dicts(cat, sql, [ids]):
                out[r["clip_id"]].append(r)
            return out

        scores = by_clip("SELECT clip_id, scorer, value, model, version, run_id FROM scores "
                         "WHERE clip_id IN (SELECT unnest(?)) ORDER BY scorer, written_at")
        decisions = by_clip("SELECT clip_id, recipe, kept, reason, run_id, decided_at FROM decisions "
                            "WHERE clip_id IN (SELECT unnest(?)) ORDER BY decided_at")
        captions = by_clip("SELECT clip_id, version, kind, text, model, prompt_version, meta_json, run_id FROM captions "
                           "WHERE clip_id IN (SELECT unnest(?)) ORDER BY version, kind")
        shards = by_clip("SELECT m.clip_id, s.shard_id, s.url FROM shard_members m JOIN shards s USING (shard_id) "
                         "WHERE m.clip_id IN (SELECT unnest(?))")
    texts = {s["source_id"]: s["text"] for s in data.sources}
    for cid in ids:
        c = w.by_id[cid]
        meta = [("clip", cid), ("source", c["uri"]), ("source text", texts.get(c["source_id"])),
                ("media", c["media_type"]), ("size", f"{c['width']}x{c['height']}"), ("duration (s)", c["duration_s"]),
                ("kept", c["kept"]), ("reason", c["reason"]), ("recipe", c["recipe"]), ("clip file", c["clip_path"]),
                ("shards", ", ".join(s["url"] for s in shards.get(cid, [])))]
        body = (f'<p><a href="../index.html">&larr; report</a></p><h1>{_e(cid)}</h1>'
                f'<img src="../{_e(w.thumb(c))}" alt="first frame">'
                + _table(["field", "value"], [[_e(k), _e(v)] for k, v in meta])
                + "<h2>scores</h2>" + _table(["scorer", "value", "model", "version", "run"],
                                             [[_e(s["scorer"]), _e(s["value"]), _e(s["model"]), _e(s["version"]),
                                               _e(s["run_id"])] for s in scores.get(cid, [])], {1})
                + "<h2>decisions</h2>" + _table(["recipe", "kept", "reason", "run", "decided at"],
                                                [[_e(d["recipe"]), _e(d["kept"]), _e(d["reason"]), _e(d["run_id"]),
                                                  _e(d["decided_at"])] for d in decisions.get(cid, [])])
                + "<h2>captions</h2>" + _table(["version", "kind", "text", "model", "prompt", "meta"],
                                               [[_e(k["version"]), _e(k["kind"]), _e(k["text"]), _e(k["model"]),
                                                 _e(k["prompt_version"]), f'<span class="err">{_e(k["meta_json"])}</span>']
                                                for k in captions.get(cid, [])]))
        (w.out / "clips" / f"{_safe_name(cid)}.html").write_text(_page(cid, body, "../report.css"), encoding="utf-8")
    return len(ids)


def clear_report_dir(out_dir: Path) -> None:
    """Remove what an earlier report wrote (only our own subfolders and files)."""
    for sub in ("plots", "thumbs", "clips"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    for name in ("index.html", "report.css"):
        (out_dir / name).unlink(missing_ok=True)
