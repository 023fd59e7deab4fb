"""Values that look like SQL (quotes, ``;``, ``--``) are data: every catalog statement takes values
as parameters, so they go through the commands a user runs and come back as they went in.

Works on a copy of the session's demo catalog, through the CLI (and the web app's label API).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import requests
import yaml
from PIL import Image
from serve_helpers import ThreadServer
from typer.testing import CliRunner

from vidcorpus.catalog.store import Catalog
from vidcorpus.cli.app import app
from vidcorpus.filters.recipes import RECIPE_DIR
from vidcorpus.serve.app import ServeSettings, make_app

HOSTILE = "it's; DROP TABLE clips; --"
cli = CliRunner()


def _vc(workdir: Path, *args) -> str:
    result = cli.invoke(app, [*args, "--workdir", str(workdir)])
    assert result.exit_code == 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return " ".join(result.output.split())


def _rows(catalog: Path, sql: str, params=None) -> list[dict]:
    with Catalog(catalog, read_only=True) as cat:
        return cat.query_dicts(sql, params)


def test_quotes_semicolons_and_comments_in_a_source_a_recipe_and_a_label_come_back_intact(demo, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    catalog = work / "catalog.duckdb"
    shutil.copy(demo["config"].catalog_path, catalog)
    clips_before = _rows(catalog, "SELECT count(*) AS n FROM clips")[0]["n"]

    # a source whose file name and caption text are SQL-looking
    media = tmp_path / f"{HOSTILE}.png"
    pixels = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(media)
    inputs = tmp_path / "sources.jsonl"
    inputs.write_text(json.dumps({"url": str(media), "text": HOSTILE}) + "\n")
    _vc(work, "run", str(inputs), "--no-progress")
    source = _rows(catalog, "SELECT source_id, uri, text, status FROM sources WHERE text = ?", [HOSTILE])
    uri = f"file://{media}"  # local inputs are stored as file:// URIs, the name as it is
    assert [(s["uri"], s["status"]) for s in source] == [(uri, "done")]
    clip_ids = [r["clip_id"] for r in _rows(catalog, "SELECT clip_id FROM clips_wide WHERE source_text = ? AND uri = ?",
                                            [HOSTILE, uri])]
    assert len(clip_ids) == 1
    assert _rows(catalog, "SELECT count(*) AS n FROM clips")[0]["n"] == clips_before + 1

    # a recipe whose name is SQL-looking: applied, in force, its pending work done by sync
    data = yaml.safe_load((RECIPE_DIR / "demo_v1.yaml").read_text())
    data["name"] = HOSTILE
    data["predicates"] = [p for p in data["predicates"] if p["score"] != "motion"]
    recipe_file = tmp_path / "hostile.yaml"
    recipe_file.write_text(yaml.safe_dump(data))
    _vc(work, "filter", "apply", str(recipe_file))
    recipe_id = f"{HOSTILE}@1"
    assert {r["recipe"] for r in _rows(catalog, "SELECT DISTINCT recipe FROM clips_wide")} == {recipe_id}
    assert recipe_id in _vc(work, "status")
    _vc(work, "sync", "--no-progress")
    from vidcorpus.catalog.corpus_state import active_recipe_id, pending_work, state_gaps
    from vidcorpus.config import load_config
    from vidcorpus.jobs.shard_selection import select_training_shards

    with Catalog(catalog, read_only=True) as cat:
        assert active_recipe_id(cat) == recipe_id
        assert pending_work(cat, "v1").total == 0 and state_gaps(cat) == []
        assert cat.recipe_ids(HOSTILE) == [recipe_id]
    # training's default selection (the recipe in force) passes the recipe id as a value
    _specs, keys, what = select_training_shards(load_config(None, [], workdir=str(work)))
    assert keys and keys == {r["clip_id"] for r in _rows(
        catalog, "SELECT clip_id FROM clips_wide WHERE kept AND captioned AND shard_id IS NOT NULL AND recipe = ?",
        [recipe_id])}
    assert recipe_id in what

    # a label whose reason is SQL-looking, through the web app
    clip = clip_ids[0]
    reason = "it's; -- fine"
    srv = ThreadServer(make_app(ServeSettings(catalog=str(catalog), who="tester")))
    try:
        r = requests.post(srv.url + "/api/labels", json={"clip_id": clip, "label": "bad", "reason": reason},
                          headers={"X-Vidcorpus": "1"}, timeout=30)
        assert r.status_code == 200, r.text
    finally:
        srv.stop()
    assert _rows(catalog, "SELECT reason, recipe FROM labels WHERE clip_id = ?", [clip]) == [
        {"reason": reason, "recipe": recipe_id}]

    # nothing was dropped or deleted, and the catalog agrees with itself
    assert _rows(catalog, "SELECT count(*) AS n FROM clips")[0]["n"] == clips_before + 1
    assert "catalog consistent" in _vc(work, "catalog", "verify", "--deep")
    with Catalog(catalog, read_only=True) as cat:
        assert cat.verify(deep=True) == []


def test_a_recipe_name_with_like_wildcards_matches_only_itself(tmp_path):
    """``_`` and ``%`` in a recipe name are letters: its versions are found, not other recipes' (the
    lookup once matched the name as a LIKE pattern)."""
    with Catalog(tmp_path / "catalog.duckdb") as cat:
        cat.record_decisions("r1", [{"clip_id": "c1", "recipe": "axb@1", "kept": True},
                                    {"clip_id": "c2", "recipe": "a_b@1", "kept": True},
                                    {"clip_id": "c3", "recipe": "100%@2", "kept": False},
                                    {"clip_id": "c4", "recipe": "100 sure@1", "kept": False}])
        assert cat.recipe_ids("a_b") == ["a_b@1"]
        assert cat.recipe_ids("100%") == ["100%@2"]
        assert cat.recipe_ids("a_b@1") == ["a_b@1"]


def test_a_snapshot_table_name_with_a_quote_is_one_line_not_sql(tmp_path):
    """Table names come from a snapshot's manifest.json, which anyone can edit: `catalog info` counts
    the named tables, and a name that is not a plain identifier is refused in one line."""
    with Catalog(tmp_path / "c.duckdb") as cat:
        cat.record_decisions("r1", [{"clip_id": "c1", "recipe": "r@1", "kept": True}])
        cat.export(str(tmp_path / "snap"))
    info = cli.invoke(app, ["catalog", "info", "--catalog", str(tmp_path / "snap")])
    assert info.exit_code == 0, info.output
    assert "decisions" in info.output and "snapshot" in info.output

    manifest_file = tmp_path / "snap" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["tables"]["it's\"; DROP TABLE clips; --"] = manifest["tables"].pop("decisions")
    manifest_file.write_text(json.dumps(manifest))
    info = cli.invoke(app, ["catalog", "info", "--catalog", str(tmp_path / "snap")])
    assert info.exit_code == 2 and isinstance(info.exception, SystemExit), info.output
    assert len(info.output.strip().splitlines()) == 1 and "not a plain SQL identifier" in info.output, info.output
