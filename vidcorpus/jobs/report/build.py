"""`vidcorpus report`: a static, self-contained HTML audit of a catalog, plus rich terminal tables.

Data engineers audit filtering by looking: the funnel per source domain, every score's histogram
with the recipe's thresholds and the retention curve of each threshold, the failure taxonomy,
caption lengths per caption version, first-frame galleries near each threshold and per score
decile, and one drill-down page per clip shown. Everything (PNGs, thumbnails) is written into the
output folder, so the page opens from file:// with no network and no scripts.

Every figure is an aggregate or a bounded sample computed inside DuckDB over ``clips_wide`` and the
catalog's funnel definition (``scope.py`` makes the scoped views, ``figure_queries.py`` the SQL,
``sections.py`` the HTML), so a report of 10 M clips holds no per-clip rows in Python.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from vidcorpus.catalog.store import Catalog
from vidcorpus.jobs.report import figure_queries as rq
from vidcorpus.jobs.report import sections as rs
from vidcorpus.jobs.report.footage import footage_plot, footage_rows, footage_section
from vidcorpus.jobs.report.html_pages import CSS, Writer, clip_pages, esc, page, table
from vidcorpus.jobs.report.filter_quality_section import filter_quality_section
from vidcorpus.jobs.report.scope import ReportData, load_report_data
from vidcorpus.jobs.report.stages import SECTION, load_stages, stage_section
from vidcorpus.jobs.report.stages import headline as stage_headline
from vidcorpus.jobs.report.terminal import print_headline
from vidcorpus.serve.measure import filter_quality

@dataclass
class ReportResult:
    index: Path
    plots: list[Path]
    clip_pages: int
    seconds: float


def build_report(catalog: str | Path, out_dir: str | Path, run: str | None = None, recipe_path: str | None = None,
                 console: Console | None = None, per_gallery: int = 6, thumb_px: int = 320,
                 max_clip_pages: int = 2000, release: str | None = None) -> ReportResult:
    """Write ``out_dir/index.html`` and print the headline tables when a console is given.

    Drill-down pages are written for every clip when there are at most ``max_clip_pages``,
    otherwise for the clips the galleries show.
    """
    t0 = time.time()
    out = Path(out_dir)
    with Catalog(catalog, read_only=True) as cat:  # a missing catalog, run or release: no folder made
        data = load_report_data(cat, run, recipe_path, release)
        out.mkdir(parents=True, exist_ok=True)
        clear_report_dir(out)
        w = Writer(out, thumb_px)
        (out / "report.css").write_text(CSS)
        counts = [data.count(v) for v in ("report_clips", "report_sources", "report_failures")]
        head = _Headline(rs.funnel_cells(data), rq.reasons(data), rq.failure_groups(data), load_stages(cat, run))
        sections = _sections(cat, data, w, head, run, counts[0], per_gallery, max_clip_pages)
        n_pages = clip_pages(w, cat.con)
    index = _write_index(out, data, sections, run, release, counts)
    if console is not None:
        print_headline(data, console, head.funnel, head.reasons, head.failures)
        if (line := stage_headline(head.stages)) is not None:  # where the run's time went, in one line
            console.print(line, markup=False)
    return ReportResult(index, list(w.plots), n_pages, time.time() - t0)


@dataclass
class _Headline:
    """What both the page and the terminal show: the funnel, the drop reasons, the failures, the stages."""
    funnel: list
    reasons: list
    failures: list
    stages: object


def _sections(cat: Catalog, data: ReportData, w: Writer, head: _Headline, run: str | None, n_clips: int,
              per_gallery: int, max_clip_pages: int) -> list[tuple[str, str, str]]:
    """(anchor, title, HTML) of every section, in page order."""
    ranges = rq.score_ranges(data)
    sections: list[tuple[str, str, str]] = [("funnel", "Funnel", rs.funnel_section(data, w, head.funnel))]
    # where the footage went: every source frame in a clip or a dropped segment (footage.py)
    footage = footage_rows(cat)
    footage_html = ""
    if footage:
        footage_plot(footage, w.plot("footage"))
        footage_html = w.img(w.plots[-1], "where the footage went")
    sections.append(("footage", "Where the footage went", footage_section(footage, footage_html, table)))
    # where the time goes: the run's stages on one timeline (stages.py)
    sections.append((*SECTION, stage_section(head.stages, w.plot, w.img, table)))
    sections.append(("decisions", "Decisions", rs.decisions_section(data, w, head.reasons, n_clips)))
    quality = filter_quality(cat.con, data.recipe) if data.recipe is not None else []
    sections.append(("filter-quality", "Filter quality from labels", filter_quality_section(quality, table, esc)))
    sections.append(("scores", "Scores and thresholds", rs.scores_section(data, w, ranges, n_clips)))
    sections.append(("galleries", "Galleries", rs.galleries_section(data, w, ranges, per_gallery)))
    sections.append(("failures", "Failure taxonomy", rs.failures_section(w, head.failures)))
    if data.events:  # warnings and fast paths that switched themselves off, raised inside the stages
        sections.append(("warnings", "Warnings in stages", table(
            ["stage", "kind", "count", "runs", "message"],
            [[esc(e["stage"]), esc(e["kind"]), e["count"], e["runs"], esc(e["message"])] for e in data.events],
            {2, 3})))
    sections.append(("captions", "Captions", rs.captions_section(data, w)))
    sections.append(("clips", "Clips", rs.clips_section(data, w, n_clips, max_clip_pages)))
    return sections


def _write_index(out: Path, data: ReportData, sections: list[tuple[str, str, str]], run: str | None,
                 release: str | None, counts: list[int]) -> Path:
    n_clips, n_sources, n_failures = counts
    nav = "<nav>" + "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t, _ in sections) + "</nav>"
    head = (f"<h1>vidcorpus audit report</h1><p>catalog <code>{esc(data.catalog)}</code>"
            f"{' &middot; run <code>' + esc(run) + '</code>' if run else ''}"
            f"{' &middot; release <code>' + esc(release) + '</code>' if release else ''} &middot; {n_clips} clips, "
            f"{n_sources} sources, {n_failures} failures &middot; written "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}</p>")
    body = head + nav + "".join(f'<section id="{a}"><h2>{esc(t)}</h2>{b}</section>' for a, t, b in sections)
    index = out / "index.html"
    index.write_text(page("vidcorpus report", body, "report.css"), encoding="utf-8")
    return index


def clear_report_dir(out_dir: Path) -> None:
    """Remove what an earlier report wrote (only our own subfolders and files)."""
    for sub in ("plots", "thumbs", "clips"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    for name in ("index.html", "report.css"):
        (out_dir / name).unlink(missing_ok=True)
