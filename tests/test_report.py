"""`vidcorpus report`: the static audit page of a real (small) catalog, checked in headless Chromium.

The catalog comes from the pipeline's own stage classes run in-process (no Ray) with the tiny
models on a few synthetic videos, so every score and caption is real model/scorer output. One
source text and one extra caption carry markup, as hostile user input and model output would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from vidcorpus.catalog.store import Catalog
from vidcorpus.jobs.report.build import build_report
from vidcorpus.jobs.report.scope import load_report_data, source_domain

HOSTILE = '<script>console.error("xss");window.__pwned=1</script><b>bold</b> & more'
CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, model_cache) -> dict:
    from vidcorpus.config import load_config
    from vidcorpus.ingest.sources import read_inputs
    from vidcorpus.jobs.models import resolve_models
    from vidcorpus.jobs.curate.pipeline import pipeline_stages
    from vidcorpus.schemas import rows_to_table
    from vidcorpus.synth import make_corpus

    d = tmp_path_factory.mktemp("report")
    truth = make_corpus(d / "corpus", n_videos=3, n_images=1, include_real=False)
    lines = [json.loads(x) for x in Path(truth["list"]).read_text().splitlines()]
    lines[0]["text"] = "user text " + HOSTILE
    Path(truth["list"]).write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg = load_config(None, [], workdir=str(d / "work"),
                      **{"models.preset": "tiny", "models.cache_dir": model_cache, "filters.recipe": "demo_v1"})
    cfg = cfg.model_copy(update={"models": resolve_models(cfg.models)})
    table = rows_to_table(read_inputs([truth["list"]]))
    for stage_cls in pipeline_stages():  # what the runner's Ray Data pipeline does, in-process
        table = stage_cls(cfg)(table)
    rows = table.to_pylist()
    hostile = next(r for r in rows if r.get("kept") and not r.get("error_class"))
    hostile["captions"] = list(hostile["captions"]) + [
        {"version": "v0-hostile", "kind": "long", "text": HOSTILE, "model": "untrusted", "prompt_version": "p0",
         "meta_json": json.dumps({"degenerate": True})}]
    failed = {r["source_id"] for r in rows if r.get("error_class")}
    with Catalog(cfg.catalog_path) as cat:
        cat.begin_run("run-a", "pipeline", "{}", "test")
        cat.commit_results("run-a", rows, failed_before=failed)
        cat.mark_sources_done({r["source_id"] for r in rows} - failed)
        cat.finish_run("run-a", "succeeded", {})
    return {"path": cfg.catalog_path, "rows": rows, "hostile": hostile["clip_id"], "dir": d}


def _artifacts(tmp_path: Path) -> Path:
    root = Path(os.environ.get("VIDCORPUS_TEST_ARTIFACTS") or tmp_path / "artifacts")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _refs(page: Path) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]*)"', page.read_text())


def _check_links(out: Path, catalog_path: str) -> list[Path]:
    """Every page of the report refers only to files inside it that exist; one page per clip."""
    pages = [out / "index.html"] + sorted((out / "clips").glob("*.html"))
    with Catalog(catalog_path, read_only=True) as cat:
        assert len(pages) - 1 == cat.query_dicts("SELECT count(*) AS n FROM clips")[0]["n"]
    for page in pages:
        for ref in _refs(page):
            assert not re.match(r"[a-z]+://|//", ref), f"{page.name} refers outside the report: {ref}"
            target = ref.split("#")[0]
            if target:
                assert (page.parent / target).resolve().is_file(), f"{page.name}: {ref} does not exist"
    return pages


def test_source_domain():
    assert source_domain("https://Videos.Example.com:443/a.mp4") == "videos.example.com"
    assert source_domain("s3://bucket/key.mp4") == "bucket"
    assert source_domain("file:///tmp/a.mp4") == "local"
    assert source_domain("/tmp/a.mp4") == "local"
    assert source_domain(None) == "?"


def test_report_data_follows_the_catalog_and_filters_by_run(catalog, tmp_path):
    with Catalog(catalog["path"], read_only=True) as cat:
        data = load_report_data(cat)
        assert data.count("report_clips") == cat.query_dicts("SELECT count(*) AS n FROM clips")[0]["n"]
        assert data.recipe is not None and data.recipe_id == "demo_v1@1"
        assert data.one("SELECT count(*) FROM report_clips WHERE kept") == cat.funnel()[4]["n"]
        assert [(r["stage"], r["n"], r["hours"]) for r in data.funnel()] == [
            (r["stage"], r["n"], r["hours"]) for r in cat.funnel()]  # the catalog's one funnel definition
        assert {r["error_class"] for r in data.rows("SELECT error_class FROM report_failures")} == {"not_media"}
        with pytest.raises(ValueError, match="no run 'nope'"):
            load_report_data(cat, run="nope")
    # a second run that rewrites two clips: --run selects exactly what each run wrote
    copy = tmp_path / "c.duckdb"
    shutil.copy(catalog["path"], copy)
    good = [r for r in catalog["rows"] if r.get("clip_id") and not r.get("error_class")]
    with Catalog(copy) as cat:
        cat.begin_run("run-b", "pipeline", "{}", "test")
        cat.commit_results("run-b", good[:2])
        cat.finish_run("run-b", "succeeded", {})
    seen = {}
    for run in ("run-a", "run-b"):  # one scope per connection at a time: its views are the connection's
        with Catalog(copy, read_only=True) as cat:
            d = load_report_data(cat, run=run)
            seen[run] = ([r["clip_id"] for r in d.rows("SELECT clip_id FROM report_clips ORDER BY clip_id")],
                         d.count("report_failures"))
            assert [(r["stage"], r["n"]) for r in d.funnel()] == [(r["stage"], r["n"]) for r in cat.funnel(run)]
    assert seen["run-b"][0] == sorted(r["clip_id"] for r in good[:2])
    assert len(seen["run-a"][0]) == len(good) - 2 and not seen["run-b"][1] and seen["run-a"][1]


def test_release_report_shows_the_release_recipe_population(catalog, tmp_path):
    from vidcorpus.config import load_config
    from vidcorpus.jobs.release import create_release

    copy = tmp_path / "c.duckdb"
    shutil.copy(catalog["path"], copy)
    cfg = load_config(None, [], workdir=str(tmp_path / "work"), catalog=str(copy))
    with Catalog(copy, read_only=True) as cat:
        kept = cat.query_dicts("SELECT clip_id, duration_s FROM clips_wide WHERE kept ORDER BY duration_s")
    cut = kept[len(kept) // 2]["duration_s"]
    create_release(cfg, "long", "demo_v1", select=f"duration_s >= {cut}", progress=False)
    with Catalog(copy, read_only=True) as cat:
        members = cat.release_clip_ids("long")
        with pytest.raises(ValueError, match="no release 'nope'.*long"):
            load_report_data(cat, release="nope")
        data = load_report_data(cat, release="long")
        clips = data.rows("SELECT clip_id, kept, reason FROM report_clips")
        funnel = {r["stage"]: r["n"] for r in data.funnel()}
    assert {c["clip_id"] for c in clips if c["kept"]} == members and funnel["kept"] == len(members)
    left_out = [c for c in clips if c["clip_id"] in {k["clip_id"] for k in kept} - members]
    assert left_out and {c["reason"] for c in left_out} == {"outside the release's selection"}
    assert all(c["reason"] for c in clips if not c["kept"])  # every drop still has its reason
    result = build_report(str(copy), tmp_path / "rep", release="long")
    assert "release <code>long</code>" in (tmp_path / "rep" / "index.html").read_text() and result.plots


def test_report_is_self_contained_escaped_and_renders_in_chromium(catalog, tmp_path):
    from vidcorpus.cli.app import app

    out = tmp_path / "report"
    t0 = time.time()
    res = CliRunner().invoke(app, ["report", "--catalog", catalog["path"], "-o", str(out)])
    seconds = time.time() - t0
    assert res.exit_code == 0, res.output
    assert seconds < 30, f"report took {seconds:.1f} s"
    assert "funnel" in res.output and "drop reasons" in res.output and "not_media" in res.output

    index = out / "index.html"
    pngs = sorted((out / "plots").glob("*.png"))
    names = {p.stem for p in pngs}
    assert {"funnel", "reasons", "failures", "caption_length", "caption_qa", "scatter_aesthetic_clip_text",
            "score_aesthetic", "score_motion", "score_blur"} <= names
    assert "caption QA per version" in index.read_text() and ">caption_clip<" in index.read_text()
    for p in pngs:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width > 100 and im.height > 100
    pages = _check_links(out, catalog["path"])
    thumbs = [r for r in _refs(index) if r.startswith("thumbs/")]
    assert thumbs and all(Image.open(out / t).width > 0 for t in thumbs)
    hostile_page = out / "clips" / f"{catalog['hostile']}.html"
    for page in pages:
        assert "<script" not in page.read_text().lower(), f"unescaped markup in {page.name}"
    text = hostile_page.read_text()
    assert "&lt;script&gt;console.error(&quot;xss&quot;)" in text and "&lt;b&gt;bold&lt;/b&gt; &amp; more" in text

    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    profile = tmp_path / "chromium-profile"
    # A harness page loads the report pages in iframes and writes what it finds into its DOM.
    harness = tmp_path / "harness.html"
    harness.write_text(_HARNESS.replace("PAGES", json.dumps([index.as_uri(), hostile_page.as_uri()])))
    proc = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--allow-file-access-from-files",
                           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000", "--dump-dom",
                           harness.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="result">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"no result from chromium: {proc.stdout[-2000:]} {proc.stderr[-2000:]}"
    results = json.loads(m.group(1))
    assert len(results) == 2, results
    for r in results:
        assert r["n"] > 0 and r["broken"] == [] and r["pwned"] is False, r
    assert results[0]["n"] >= len(pngs) + len(thumbs)
    console = [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln]
    assert console == [], console  # the report runs no scripts, so any console message is a fault

    shot = _artifacts(tmp_path) / "report-screenshot.png"
    subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}",
                    "--window-size=1280,2000", index.as_uri()], capture_output=True, timeout=120)
    with Image.open(shot) as im:
        assert im.size == (1280, 2000)
    print(f"report screenshot: {shot}")


_HARNESS = """<!DOCTYPE html><html><head><meta charset="utf-8"></head><body><pre id="result">pending</pre>
<script>
const pages = PAGES, results = [];
function finish() { document.getElementById("result").textContent = JSON.stringify(results); }
function next(i) {
  if (i >= pages.length) return finish();
  const f = document.createElement("iframe");
  f.style.width = "1280px"; f.style.height = "800px";
  f.addEventListener("load", () => {
    let d = null;
    try { d = f.contentDocument; } catch (e) {}
    if (!d) { results.push({page: pages[i], n: 0, broken: ["no access"], pwned: null}); return next(i + 1); }
    const imgs = Array.from(d.images);
    results.push({page: pages[i], n: imgs.length, pwned: f.contentWindow.__pwned !== undefined,
                  broken: imgs.filter(im => !(im.complete && im.naturalWidth > 0)).map(im => im.getAttribute("src"))});
    next(i + 1);
  });
  f.src = pages[i];
  document.body.appendChild(f);
}
next(0);
</script></body></html>
"""


@pytest.mark.slow
def test_report_of_the_demo_takes_under_30_s(demo, tmp_path):
    """The issue's bar, on the demo's own catalog (shared with the other demo tests of the session)."""
    catalog_path = demo["config"].catalog_path
    result = build_report(catalog_path, tmp_path / "demo-report")
    assert result.seconds < 30, f"report of the demo took {result.seconds:.1f} s"
    assert result.clip_pages > 0 and all(p.stat().st_size > 0 for p in result.plots)
    _check_links(tmp_path / "demo-report", catalog_path)


# -- every figure is SQL: checked against the figures computed in Python from the rows (the old report) --

def _rows(cat, sql, params=None) -> list[dict]:
    return cat.query_dicts(sql, params)


def test_report_figures_equal_what_the_rows_say(catalog):
    """Histograms, retention curves, reasons, galleries, caption and failure tables of the SQL report
    equal the same figures computed in numpy from every row (what the report did before issue 24)."""
    import numpy as np

    from vidcorpus.jobs.report import figure_queries as rq

    ops = {">=": np.greater_equal, ">": np.greater, "<=": np.less_equal, "<": np.less, "==": np.equal,
           "!=": np.not_equal}
    with Catalog(catalog["path"], read_only=True) as cat:
        data = load_report_data(cat)
        clips = _rows(cat, "SELECT * FROM clips_wide ORDER BY clip_id")
        scores: dict[str, dict[str, float]] = {}
        for r in _rows(cat, "SELECT clip_id, scorer, arg_max(value, written_at) AS v FROM scores GROUP BY ALL"):
            if r["v"] is not None:
                scores.setdefault(r["scorer"], {})[r["clip_id"]] = r["v"]
        assert sorted(data.scores) == sorted(scores) and len(scores) > 5
        kept = np.array([bool(c["kept"]) for c in clips])
        x_of = {n: np.array([scores[n].get(c["clip_id"], np.nan) for c in clips]) for n in scores}
        ranges = rq.score_ranges(data)
        edges = {n: rq.bin_edges(*ranges[n][1:]) for n in scores}
        counts = rq.histograms(data, edges)
        for name, x in x_of.items():
            has = np.isfinite(x)
            assert ranges[name][0] == has.sum()
            assert (counts[name][0] == np.histogram(x[has & kept], edges[name])[0]).all(), name
            assert (counts[name][1] == np.histogram(x[has & ~kept], edges[name])[0]).all(), name
        recipe = data.recipe
        passes = []
        for p in recipe.predicates:
            x = x_of.get(p.score, np.full(len(clips), np.nan))
            with np.errstate(invalid="ignore"):
                passes.append(np.where(np.isnan(x), (p.missing or recipe.missing) == "keep", ops[p.op](x, p.value)))
        for i, p in enumerate(recipe.predicates):
            x = x_of.get(p.score, np.full(len(clips), np.nan))
            others = np.logical_and.reduce([m for j, m in enumerate(passes) if j != i] or [np.ones(len(clips), bool)])
            lo, hi = ranges.get(p.score, (0, None, None))[1:]
            xs, ys = rq.retention_curve(data, i, lo, hi)
            with np.errstate(invalid="ignore"):
                want = [int(np.sum(others & np.where(np.isnan(x), (p.missing or recipe.missing) == "keep",
                                                     ops[p.op](x, t)))) for t in xs]
            assert list(ys) == want, p
            dist = np.abs(x - p.value)
            near = [clips[j]["clip_id"] for j in np.argsort(dist, kind="stable") if kept[j] and np.isfinite(x[j])][:6]
            assert [c["clip_id"] for c in rq.near_threshold(data, p, True, 6)] == near
            idx = np.flatnonzero(np.isfinite(x))
            if idx.size:
                order = idx[np.argsort(x[idx], kind="stable")]
                want_deciles = [clips[int(part[len(part) // 2])]["clip_id"]
                                for part in np.array_split(order, min(10, order.size))]
                got = rq.decile_clips(data, p.score, idx.size, *ranges[p.score][1:])
                assert [c["clip_id"] for _, c in got] == want_deciles and [d for d, _ in got] == list(
                    range(1, len(want_deciles) + 1))
        dropped = [c["reason"] or "(none)" for c in clips if c["kept"] is False]
        assert rq.reasons(data) == list(dict.fromkeys((r, dropped.count(r)) for r in dropped))
        caps = _rows(cat, "SELECT version, kind, text, meta_json, decode FROM captions")
        stats, boxes = rq.caption_stats(data)
        assert [(s["version"], s["kind"]) for s in stats] == sorted({(c["version"], c["kind"]) for c in caps})
        for s in stats:
            group = [c for c in caps if (c["version"], c["kind"]) == (s["version"], s["kind"])]
            words = np.array([len((c["text"] or "").split()) for c in group])
            flags = [json.loads(c["meta_json"] or "{}").get("degenerate") for c in group]
            assert (s["n"], s["max_words"]) == (len(group), words.max())
            assert s["mean_words"] == pytest.approx(words.mean()) and s["median_words"] == np.median(words)
            assert s["degenerate"] == (sum(bool(f) for f in flags if f is not None) if any(
                "degenerate" in json.loads(c["meta_json"] or "{}") for c in group) else None)
            box = boxes[f"{s['version']}/{s['kind']}"]
            assert box["q1"] == np.percentile(words, 25) and box["q3"] == np.percentile(words, 75)
        assert any(s["degenerate"] for s in stats)  # the hostile caption is flagged degenerate
        qa: dict[str, list[float]] = {}
        for r in _rows(cat, "SELECT scorer, version, arg_max(value, written_at) AS v FROM scores "
                            "WHERE scorer LIKE 'caption%' GROUP BY clip_id, scorer, version"):
            if r["v"] is not None:
                qa.setdefault(f"{r['scorer']} {r['version']}", []).append(r["v"])
        got = rq.caption_qa(data)
        assert sorted(got) == sorted(qa) and qa
        for k, v in qa.items():
            assert (got[k]["n"], got[k]["lo"], got[k]["hi"]) == (len(v), min(v), max(v))
            assert got[k]["mean"] == pytest.approx(np.mean(v)) and got[k]["med"] == pytest.approx(np.median(v))
        fails = _rows(cat, "SELECT stage, error_class FROM failures")
        groups = rq.failure_groups(data)
        assert [(g["stage"], g["error_class"], g["n"]) for g in groups] == sorted(
            {(f["stage"], f["error_class"], fails.count(f)) for f in fails}, key=lambda g: -g[2])


def test_the_domain_in_sql_is_source_domain():
    import duckdb

    from vidcorpus.jobs.report.scope import domain_key_sql, domain_sql

    uris = ["https://Videos.Example.com:443/a.mp4", "http://user:pw@host.org/x?y#z", "s3://bucket/key.mp4",
            "file:///tmp/a.mp4", "/tmp/a.mp4", "C:\\videos\\a.mp4", "relative/a.mp4", "", None, "gs://b/k",
            "http://[::1]:8080/v.mp4", "hf:datasets/x", "HTTPS://UPPER.example/A", "s3:/one-slash", "/x/y://z",
            "bad!scheme:x", "ftp://h.example?q=1", "https://host.example#frag"]
    con = duckdb.connect()
    for expr in (domain_sql("u"), domain_sql(f"({domain_key_sql('u')})")):  # the funnel groups by the key
        got = [r[0] for r in con.execute(f"SELECT {expr} FROM (SELECT unnest(?) AS u, generate_subscripts(?, 1) AS i) "
                                         "ORDER BY i", [uris, uris]).fetchall()]
        assert got == [source_domain(u) for u in uris]


def test_caption_words_flags_and_box_statistics_match_python_and_matplotlib():
    import duckdb
    import numpy as np
    from matplotlib.cbook import boxplot_stats

    from vidcorpus.jobs.report import figure_queries as rq
    from vidcorpus.jobs.report.scope import ReportData

    texts = ["a b c", "  lead", "trail ", "two  spaces", "tab\there", "new\nline", "", None, "one", "nbsp\xa0word",
             "ideographic\u3000space", "unit\x1fsep", "vertical\x0btab", "é è"]
    con = duckdb.connect()
    got = [r[0] for r in con.execute(f"SELECT {rq.WORDS} FROM (SELECT unnest(?) AS text, generate_subscripts(?, 1) "
                                     "AS i) ORDER BY i", [texts, texts]).fetchall()]
    assert got == [len((t or "").split()) for t in texts]
    metas = ['{"degenerate": true}', '{"degenerate": false}', '{"degenerate": null}', '{"degenerate": "x"}',
             '{"degenerate": ""}', '{"degenerate": 0}', '{"degenerate": 2.5}', '{"degenerate": []}', '{"degenerate": [1]}',
             '{"degenerate": {}}', '{"degenerate": {"a": 1}}', "{}", "not json: degenerate", '[{"degenerate": true}]', None]

    def flag(meta):  # what the report did with each caption's meta before issue 24
        try:
            meta = json.loads(meta or "{}")
        except ValueError:
            meta = {}
        return bool(meta["degenerate"]) if isinstance(meta, dict) and "degenerate" in meta else None

    got = [r[0] for r in con.execute(f"SELECT {rq.DEGENERATE_FLAG} FROM (SELECT {rq.DEGENERATE_JSON} AS j, i FROM "
                                     "(SELECT unnest(?) AS meta_json, generate_subscripts(?, 1) AS i)) ORDER BY i",
                                     [metas, metas]).fetchall()]
    assert got == [flag(m) for m in metas]
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0, 1, 500), [9.0, -7.5, 12.0]])
    con.execute("CREATE TABLE v AS SELECT 'g' AS grp, unnest(?) AS v", [values.tolist()])
    box = rq.box_stats(ReportData("", None, con), "SELECT grp, v FROM v")["g"]
    want = boxplot_stats(values)[0]
    for key in ("mean", "med", "q1", "q3", "whislo", "whishi"):
        assert box[key] == pytest.approx(want[key], rel=1e-12), key
    assert sorted(box["fliers"]) == sorted(want["fliers"])
    words = np.array([3, 3, 4, 7, 7, 7, 30])
    values, counts = np.unique(words, return_counts=True)
    wbox, want = rq.weighted_box(values.astype(float), counts), boxplot_stats(words)[0]
    assert all(wbox[k] == pytest.approx(want[k]) for k in ("mean", "med", "q1", "q3", "whislo", "whishi"))
    assert list(wbox["fliers"]) == list(want["fliers"])
