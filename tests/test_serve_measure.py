"""Filter quality from labels: precision and recall with intervals (stratified sample labels are
weighted to the catalog), `vidcorpus filter suggest`, the sampling page and recipe comparison."""

from __future__ import annotations

import re

import pytest
import requests
from typer.testing import CliRunner

from serve_helpers import ThreadServer, card_ids
from vidcorpus.catalog.corpus_state import set_active_recipe
from vidcorpus.catalog.store import Catalog
from vidcorpus.cli.app import app
from vidcorpus.recipe_model import recipe_from_text
from vidcorpus.serve.access import CatalogAccess
from vidcorpus.serve.app import ServeSettings, make_app
from vidcorpus.serve.labels import add_label
from vidcorpus.serve.measure import estimate, suggest

RECIPE = "name: test_aesthetic\nversion: 1\nmissing: keep\npredicates:\n  - {score: aesthetic, op: '>=', value: 5}\n"
STRICT = "name: test_aesthetic\nversion: 2\nmissing: keep\npredicates:\n  - {score: aesthetic, op: '>=', value: 6}\n"


def _clip(i: int) -> str:
    return f"00000000000000{i:02d}-0000000-0000010"


@pytest.fixture()
def catalog(tmp_path) -> str:
    """40 clips with aesthetic 0, 0.25, ... 9.75; the recipe drops aesthetic < 5 (20 clips)."""
    from vidcorpus.filters.apply import apply_recipe

    path = str(tmp_path / "catalog.duckdb")
    with Catalog(path) as cat:
        with cat.transaction():
            cat._upsert("clips", [{"clip_id": _clip(i), "source_id": "0000000000000000", "media_type": "video",
                                   "first_frame": 0, "last_frame": 10, "duration_s": 2.0} for i in range(40)])
        cat.write_scores("run-s", [{"clip_id": _clip(i), "scorer": "aesthetic", "model": "m", "version": "1",
                                    "value": i * 0.25} for i in range(40)])
        for text in (STRICT, RECIPE):  # the second one applied is the active recipe
            recipe = recipe_from_text(text)
            apply_recipe(cat, recipe, "run-d")
            set_active_recipe(cat, recipe, origin="test")
    return path


def _labels(path: str, clips: dict[int, str], origin: str) -> None:
    access = CatalogAccess(path)
    for i, label in clips.items():
        add_label(access, _clip(i), label, None, "tester", origin)


def _estimate(path: str):
    recipe = recipe_from_text(RECIPE)
    with Catalog(path, read_only=True) as cat:
        return estimate(cat.con, recipe.predicates[0])


def test_sample_labels_are_weighted_by_their_stratum_and_browse_labels_are_marked_biased(catalog):
    # browsing: 3 bad of 4 flagged looked at, 1 bad of 2 passed: raw shares, said to be biased
    _labels(catalog, {1: "bad", 2: "bad", 3: "bad", 19: "good", 30: "bad", 35: "good"}, "browse")
    e = _estimate(catalog)
    assert not e.sampled and (e.labels, e.bad_labels) == (6, 4)
    assert e.precision == pytest.approx(3 / 4) and e.recall == pytest.approx(3 / 4)
    # a sample: 5 of the 20 flagged (3 bad), 4 of the 20 passed (1 bad): only these count, weighted 20/5, 20/4
    _labels(catalog, {0: "bad", 4: "bad", 8: "bad", 16: "good", 19: "good"}, "sample:aesthetic")
    _labels(catalog, {20: "bad", 25: "good", 30: "good", 39: "good"}, "sample:aesthetic")
    e = _estimate(catalog)
    assert e.sampled and (e.flagged, e.passed, e.labels, e.bad_labels) == (20, 20, 9, 4)
    assert e.precision == pytest.approx(3 / 5)
    assert e.recall == pytest.approx(20 * 3 / 5 / (20 * 3 / 5 + 20 * 1 / 4))  # 12 / 17
    for value, (lo, hi) in ((e.precision, e.precision_ci), (e.recall, e.recall_ci)):
        assert 0 <= lo <= value <= hi <= 1 and hi - lo > 0.05  # nine labels cannot pin it down
    assert _estimate(catalog) == e  # seeded: the same numbers every time


def test_filter_suggest_proposes_the_threshold_the_labels_argue_for(catalog, monkeypatch):
    from vidcorpus.cli.output import console

    monkeypatch.setattr(console, "width", 250)  # one line per filter
    # every clip labelled; bad exactly below 4: the filter at 5 drops 4 good clips too
    _labels(catalog, {i: ("bad" if i * 0.25 < 4 else "good") for i in range(0, 40, 2)}, "browse")
    recipe = recipe_from_text(RECIPE)
    with Catalog(catalog, read_only=True) as cat:
        s = suggest(cat.con, recipe.predicates[0])
    assert s.current.precision == pytest.approx(8 / 10) and s.current.recall == pytest.approx(1.0)
    assert s.proposed.predicate == "aesthetic>=4" and s.proposed.precision == pytest.approx(1.0)
    result = CliRunner().invoke(app, ["filter", "suggest", "--catalog", catalog])
    assert result.exit_code == 0, result.output
    flat = re.sub(r"[│┃\s]+", " ", result.output)
    assert "aesthetic>=5" in flat and "aesthetic>=4" in flat and "0.80" in flat and "browse (biased)" in flat
    bad = CliRunner().invoke(app, ["filter", "suggest", "motion", "--catalog", catalog])
    assert bad.exit_code == 2 and "no filter on 'motion'" in bad.output


def test_too_few_labels_give_no_suggestion_and_no_interval(catalog):
    _labels(catalog, {1: "bad"}, "browse")
    recipe = recipe_from_text(RECIPE)
    with Catalog(catalog, read_only=True) as cat:
        s = suggest(cat.con, recipe.predicates[0])
    assert s.proposed is None and "needs 10+ labels" in s.note
    assert s.current.precision == 1.0 and s.current.precision_ci is None and s.current.recall_ci is None


@pytest.fixture()
def server(catalog, tmp_path):
    srv = ThreadServer(make_app(ServeSettings(catalog=catalog, roots=[str(tmp_path)], who="tester")))
    yield srv
    srv.stop()


def test_the_sample_page_draws_half_from_each_side_of_a_filter_and_skips_sampled_labels(catalog, server):
    page = requests.get(server.url + "/sample", params={"score": "aesthetic", "seed": "7"}, timeout=30).text
    flagged, passed = page.split('id="sample-passed"')
    dropped_ids, kept_ids = card_ids(flagged), card_ids(passed)
    assert len(dropped_ids) == len(kept_ids) == 12
    assert all(int(c[14:16]) < 20 for c in dropped_ids) and all(int(c[14:16]) >= 20 for c in kept_ids)
    assert "?origin=sample:aesthetic" in page  # labels given from here count as this filter's sample
    assert requests.get(server.url + "/sample", params={"score": "aesthetic", "seed": "7"}, timeout=30).text == page
    _labels(catalog, {int(dropped_ids[0][14:16]): "bad"}, "sample:aesthetic")
    again = requests.get(server.url + "/sample", params={"score": "aesthetic", "seed": "7"}, timeout=30).text
    assert dropped_ids[0] not in card_ids(again)
    assert requests.get(server.url + "/sample", params={"score": "nope"}, timeout=30).status_code == 400


def test_compare_shows_exactly_the_clips_that_change_decision(catalog, server):
    page = requests.get(server.url + "/compare", params={"a": "test_aesthetic@1", "b": "test_aesthetic@2"},
                        timeout=30).text
    kept_part, dropped_part = page.split('id="newly-dropped"')
    assert card_ids(kept_part) == []
    assert card_ids(dropped_part) == [_clip(i) for i in range(20, 24)]  # 5 <= aesthetic < 6
    proposed = requests.get(server.url + "/compare", params={"a": "test_aesthetic@1", "change": "aesthetic>=4.5"},
                            timeout=30).text
    kept_part, dropped_part = proposed.split('id="newly-dropped"')
    assert card_ids(kept_part) == [_clip(i) for i in (18, 19)] and card_ids(dropped_part) == []
    for bad in ({"a": "x'; DROP TABLE clips; --"}, {"a": "test_aesthetic@1", "change": "aesthetic>=1; DELETE"},
                {"a": "test_aesthetic@1", "b": "missing@9"}):
        assert requests.get(server.url + "/compare", params=bad, timeout=30).status_code == 400
    measure = requests.get(server.url + "/measure", timeout=30).text
    assert "aesthetic&gt;=5" in measure and "20 / 20" in measure


def test_the_report_shows_each_filters_precision_and_recall(catalog, tmp_path):
    from vidcorpus.jobs.report.build import build_report

    _labels(catalog, {i: ("bad" if i * 0.25 < 4 else "good") for i in range(0, 40, 2)}, "browse")
    index = build_report(catalog, tmp_path / "report").index
    section = index.read_text().split('id="filter-quality"')[1].split("</section>")[0]
    assert "aesthetic&gt;=5" in section and "0.80 [" in section and "aesthetic&gt;=4" in section
