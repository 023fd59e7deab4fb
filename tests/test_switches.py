"""Model scoring and captioning can be switched off for a run, as a data engineer without a GPU or a
captioner does: the run then loads no model at all, its kept clips wait uncaptioned (and unsharded)
until a later `sync` with captioning on, and a switch that would silently change decisions is refused.

Before, the config had no such switch (the CPU-only benchmark patched the runner's stage list), and
every run built or loaded every curation model, used or not.
"""

from __future__ import annotations

import json

import duckdb
from typer.testing import CliRunner

from vidcorpus.cli.app import app

runner = CliRunner()
OFF = ["--set", "filters.clip_scores=false", "--set", "captioning.enabled=false", "--set", "ray.num_cpus=2"]
KEEP_ALL = """name: keep_all_test
version: 1
missing: keep
predicates:
  - {score: duration_s, op: ">=", value: 0.0}
"""


def _inputs(tmp_path):
    from vidcorpus.synth import make_video

    media = tmp_path / "media"
    media.mkdir()
    videos = [make_video(i, media) for i in range(2)]
    listing = tmp_path / "sources.jsonl"
    listing.write_text("".join(json.dumps({"url": v.path, "text": v.text}) + "\n" for v in videos))
    recipe = tmp_path / "keep_all.yaml"
    recipe.write_text(KEEP_ALL)
    return str(listing), str(recipe)


def test_a_switch_that_would_change_decisions_is_refused_at_the_start(tmp_path):
    listing, recipe = _inputs(tmp_path)
    w = str(tmp_path / "w")
    # the default recipe reads aesthetic and clip_text: every clip would be dropped as "missing"
    out = runner.invoke(app, ["run", listing, "--workdir", w, "--no-progress", *OFF, "--set", "filters.dedup=false"])
    assert out.exit_code != 0
    assert "reads aesthetic" in out.output and "filters.clip_scores=false" in out.output
    assert "Traceback" not in out.output
    # dedup compares CLIP embeddings
    out = runner.invoke(app, ["run", listing, "--workdir", w, "--no-progress", *OFF, "--set", f"filters.recipe={recipe}"])
    assert out.exit_code != 0 and "filters.dedup" in out.output and "Traceback" not in out.output
    # and so do the duplicate scores a recipe may read
    dup = tmp_path / "dup.yaml"
    dup.write_text(KEEP_ALL.replace("keep_all_test", "dup_test") + '  - {score: dup_exact, op: "==", value: 0.0}\n')
    out = runner.invoke(app, ["run", listing, "--workdir", w, "--no-progress", *OFF, "--set", "filters.dedup=false",
                              "--set", f"filters.recipe={dup}"])
    assert out.exit_code != 0 and "reads dup_exact" in out.output, out.output


def test_a_run_without_models_then_a_sync_with_captioning_completes_the_corpus(tmp_path, model_cache):
    listing, recipe = _inputs(tmp_path)
    w = str(tmp_path / "w")
    # The production preset, offline: had the run loaded any model it would fail (no weights here).
    # (a caption_align setting from a shared config file stays valid while a switch removes the stage)
    out = runner.invoke(app, ["run", listing, "--workdir", w, "--no-progress", "--preset", "production", *OFF,
                              "--set", "filters.dedup=false", "--set", f"filters.recipe={recipe}",
                              "--set", "stages.caption_align.cpus=1"])
    assert out.exit_code == 0, out.output
    assert "captioning is off" in out.output

    # A refused run changes nothing: naming a CLIP-reading recipe would otherwise have made it the
    # active one and re-decided every clip before the refusal.
    def state():
        con = duckdb.connect(f"{w}/catalog.duckdb", read_only=True)
        got = (con.execute("SELECT recipe, kept, count(*) FROM clips_wide GROUP BY ALL ORDER BY ALL").fetchall(),
               con.execute("SELECT count(*) FROM runs").fetchone()[0])
        con.close()
        return got

    before = state()
    out = runner.invoke(app, ["run", listing, "--workdir", w, "--no-progress", *OFF, "--set", "filters.dedup=false",
                              "--set", "filters.recipe=demo_v1"])
    assert out.exit_code != 0 and "reads aesthetic" in out.output
    assert state() == before
    con = duckdb.connect(f"{w}/catalog.duckdb", read_only=True)
    kept = con.execute("SELECT count(*) FROM clips_wide WHERE kept").fetchone()[0]
    extracted = con.execute("SELECT count(*) FROM clips_wide WHERE kept AND clip_path IS NOT NULL").fetchone()[0]
    model_scores = con.execute("SELECT count(*) FROM scores WHERE scorer LIKE 'aesthetic%' OR scorer LIKE 'clip_text%'").fetchone()[0]
    captions = con.execute("SELECT count(*) FROM captions").fetchone()[0]
    technical = con.execute("SELECT count(*) FROM scores WHERE scorer = 'blur'").fetchone()[0]
    shards = con.execute("SELECT count(*) FROM shards").fetchone()[0]
    con.close()
    assert kept >= 2 and extracted == kept and technical >= kept
    assert model_scores == 0 and captions == 0 and shards == 0  # kept clips are not shipped uncaptioned

    # Later, with a captioner (the tiny preset here): sync captions the waiting clips and shards them.
    out = runner.invoke(app, ["sync", "--workdir", w, "--no-progress"])
    assert out.exit_code == 0, out.output
    con = duckdb.connect(f"{w}/catalog.duckdb", read_only=True)
    captioned = con.execute("SELECT count(DISTINCT clip_id) FROM captions").fetchone()[0]
    sharded = con.execute("SELECT count(*) FROM shard_members").fetchone()[0]
    con.close()
    assert captioned == kept and sharded == kept
    out = runner.invoke(app, ["catalog", "verify", "--workdir", w])
    assert out.exit_code == 0, out.output
