"""One corpus state (issue 21): the active recipe is catalog state and derived work follows it.

Every test works on a copy of the session's demo catalog (new shards and releases go to the
test's own workdir; the demo's files are only read), through the CLI as a user runs it.
"""

from __future__ import annotations

import json
import random
import shutil
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from typer.testing import CliRunner

from vidcorpus.catalog.store import Catalog
from vidcorpus.cli.app import app
from vidcorpus.filters.recipes import RECIPE_DIR

cli = CliRunner()
CLIP_STAGES = ("shots", "scored", "kept", "captioned", "sharded", "trained_on")


def _recipe_file(path: Path, name: str, edit) -> str:
    data = yaml.safe_load((RECIPE_DIR / "demo_v1.yaml").read_text())
    data["name"] = name
    data["predicates"] = edit(data["predicates"])
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.fixture()
def ws(demo, tmp_path):
    """A workdir holding a copy of the demo catalog, the demo's inputs without the broken file (all
    done, so `run` starts no Ray), a lenient recipe (no motion predicate: keeps the slow shots) and
    a strict one (clips of at least 1.7 s)."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(demo["config"].catalog_path, work / "catalog.duckdb")
    broken = {str(Path(b)) for b in demo["truth"]["broken"]}
    lines = [ln for ln in Path(demo["truth"]["list"]).read_text().splitlines()
             if ln.strip() and str(Path(json.loads(ln)["url"])) not in broken]
    inputs = tmp_path / "sources.jsonl"
    inputs.write_text("\n".join(lines) + "\n")
    return SimpleNamespace(
        workdir=str(work), catalog=str(work / "catalog.duckdb"), inputs=str(inputs), tmp=tmp_path,
        lenient=_recipe_file(tmp_path / "lenient_v1.yaml", "lenient_v1", lambda ps: [p for p in ps if p["score"] != "motion"]),
        strict=_recipe_file(tmp_path / "strict_v1.yaml", "strict_v1",
                            lambda ps: ps + [{"score": "duration_s", "op": ">=", "value": 1.7}]))


def vc(ws, *args, code: int | tuple = 0) -> str:
    """Run one vidcorpus command on the workspace; its output with rich's wrapping undone."""
    result = cli.invoke(app, [*args, "--workdir", ws.workdir])
    codes = code if isinstance(code, tuple) else (code,)
    assert result.exit_code in codes, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception  # no traceback
    return " ".join(result.output.split())


def q(ws, sql: str, params=None) -> list[dict]:
    with Catalog(ws.catalog, read_only=True) as cat:
        return cat.query_dicts(sql, params)


def funnel(ws) -> dict[str, int]:
    with Catalog(ws.catalog, read_only=True) as cat:
        return {r["stage"]: r["n"] for r in cat.funnel()}


def assert_monotone(ws) -> dict[str, int]:
    f = funnel(ws)
    counts = [f[s] for s in CLIP_STAGES]
    assert counts == sorted(counts, reverse=True), f
    return f


def kept_by(ws, recipe_id: str) -> set[str]:
    return {r["clip_id"] for r in q(ws, "SELECT clip_id FROM decisions WHERE recipe = ? AND kept", [recipe_id])}


def problems(ws) -> list[dict]:
    """`catalog verify`'s problems (gaps listed apart), with shard files checked."""
    with Catalog(ws.catalog, read_only=True) as cat:
        roots = sorted({u.rsplit("/", 2)[0] for (u,) in cat.con.execute("SELECT url FROM shards").fetchall()}
                       | {ws.workdir + "/shards"})
        return cat.verify(shard_roots=roots, deep=True)


def pending(ws):
    from vidcorpus.catalog.corpus_state import pending_work

    with Catalog(ws.catalog, read_only=True) as cat:
        return pending_work(cat, "v1")


def shard_texts(ws, clip_ids: set[str]) -> dict[str, str]:
    """clip id -> the txt its shard carries."""
    urls = {r["url"] for r in q(ws, "SELECT DISTINCT s.url FROM shards s JOIN shard_members m USING (shard_id) "
                                    "WHERE m.clip_id IN (SELECT unnest(?))", [sorted(clip_ids)])}
    out = {}
    for url in urls:
        with tarfile.open(url) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                if ext == "txt" and key in clip_ids:
                    out[key] = tar.extractfile(member).read().decode()
    return out


@pytest.mark.parametrize("cmd", [["status"], ["sync"], ["shards", "write"], ["release", "create"]])
def test_state_commands_explain_themselves(cmd):
    out = " ".join(cli.invoke(app, [*cmd, "--help"]).output.split())
    assert "Usage" in out and ("active recipe" in out or "--allow-uncaptioned" in out)


# -- case 1: a re-decision's newly kept clips get captions, then shards with those captions ----------
def test_redecide_then_status_and_sync_caption_and_shard_the_newly_kept_clips(ws):
    before = kept_by(ws, "demo_v1@1")
    out = vc(ws, "filter", "apply", ws.lenient)
    assert "active recipe: lenient_v1@1 (was demo_v1@1)" in out
    newly = kept_by(ws, "lenient_v1@1") - before
    assert newly and not (before - kept_by(ws, "lenient_v1@1"))

    pw = pending(ws)
    assert pw.recipe == "lenient_v1@1" and set(pw.uncaptioned) == newly and set(pw.unsharded) == newly
    assert set(pw.unextracted) == newly  # filter before you encode: a dropped clip was never extracted
    out = vc(ws, "status")
    assert "active recipe: lenient_v1@1" in out and f"{3 * len(newly)} pending" in out and "vidcorpus sync" in out
    out = vc(ws, "catalog", "verify")  # consistent, but the gaps are listed
    assert "catalog consistent" in out and "pending_caption" in out and "pending_shard" in out

    # shards refuse the unextracted, uncaptioned clips (they once went out with 0-byte captions), releases too
    out = vc(ws, "shards", "write")
    assert f"{len(newly)} kept clips have no clip file yet and were not sharded" in out
    assert not q(ws, "SELECT clip_id FROM shard_members WHERE clip_id IN (SELECT unnest(?))", [sorted(newly)])
    out = vc(ws, "release", "create", "too-early", code=2)
    assert "have no v1 caption" in out and "vidcorpus sync" in out

    out = vc(ws, "sync", "--no-progress")
    assert f"{len(newly)} clips captioned" in out and "0 still pending" in out
    # where the sync's time went (issue 22): printed, and in the catalog with the sync's run id
    assert "where the time went in sync" in out and "bound by: " in out
    sync_run = q(ws, "SELECT run_id FROM runs WHERE kind = 'sync' ORDER BY started_at DESC LIMIT 1")[0]["run_id"]
    steps = {r["stage"]: r for r in q(ws, "SELECT * FROM stage_stats WHERE run_id = ?", [sync_run])}
    assert steps["caption"]["rows_in"] == len(newly) and steps["caption"]["setup_s"] > 0
    assert {"caption", "commit", "shards"} <= set(steps)
    assert all(r["busy_s"] + r["wait_input_s"] + r["wait_output_s"] == pytest.approx(r["wall_s"]) for r in steps.values())
    caps = q(ws, "SELECT clip_id, kind, text FROM captions WHERE version = 'v1' AND clip_id IN (SELECT unnest(?))",
             [sorted(newly)])
    assert {(c["clip_id"], c["kind"]) for c in caps} == {(c, k) for c in newly for k in ("long", "short")}
    qa = q(ws, "SELECT DISTINCT clip_id FROM scores WHERE scorer = 'caption_clip' AND clip_id IN (SELECT unnest(?))",
           [sorted(newly)])
    assert {r["clip_id"] for r in qa} == newly  # the caption stage's QA came along
    long_caption = {c["clip_id"]: c["text"] for c in caps if c["kind"] == "long"}
    texts = shard_texts(ws, newly)
    assert set(texts) == newly and all(texts[c] and texts[c] == long_caption[c] for c in newly)

    f = assert_monotone(ws)
    assert f["kept"] == f["captioned"] == f["sharded"] == len(kept_by(ws, "lenient_v1@1"))
    assert problems(ws) == [] and pending(ws).total == 0
    out = vc(ws, "catalog", "verify")
    assert "catalog consistent" in out and "pending_" not in out
    out = vc(ws, "release", "create", "lenient")  # the active recipe by default
    assert "the active recipe lenient_v1@1" in out
    members = {r["clip_id"] for r in q(ws, "SELECT clip_id FROM release_members WHERE name = 'lenient'")}
    assert members == kept_by(ws, "lenient_v1@1")


def test_a_recipe_from_a_file_stays_readable_from_the_catalog(ws):
    from vidcorpus.catalog.corpus_state import active_recipe, recipe_history, stored_recipe

    vc(ws, "filter", "apply", ws.lenient)
    Path(ws.lenient).unlink()  # the file is gone; the catalog keeps its content
    with Catalog(ws.catalog, read_only=True) as cat:
        r = stored_recipe(cat, "lenient_v1")
        assert r is not None and r.id == "lenient_v1@1" and "motion" not in r.scores_needed
        assert active_recipe(cat).id == "lenient_v1@1"
        history = recipe_history(cat)
    assert [h["recipe"] for h in history][-2:] == ["demo_v1@1", "lenient_v1@1"]
    assert history[-1]["origin"] == "filter apply" and len(history[-1]["sha256"]) == 64
    out = vc(ws, "sync", "--no-progress")  # deciding, captioning and sharding need no file
    assert "under lenient_v1@1" in out
    from vidcorpus.jobs.report.scope import load_report_data

    with Catalog(ws.catalog, read_only=True) as cat:  # and the report draws its thresholds
        data = load_report_data(cat)
    assert data.recipe is not None and data.recipe.id == "lenient_v1@1"


def test_a_missing_short_caption_is_pending_work_of_its_version(ws):
    vc(ws, "filter", "apply", ws.lenient)
    vc(ws, "sync", "--no-progress")
    victim = sorted(kept_by(ws, "lenient_v1@1"))[0]
    import duckdb

    with duckdb.connect(ws.catalog) as con:  # as if captioning had stopped between the two kinds
        con.execute("DELETE FROM captions WHERE clip_id = ? AND kind = 'short'", [victim])
    assert pending(ws).uncaptioned == [victim]
    vc(ws, "sync", "--no-progress")
    assert pending(ws).total == 0
    assert q(ws, "SELECT count(*) AS n FROM captions WHERE clip_id = ? AND version = 'v1'", [victim])[0]["n"] == 2


# -- case 2: dedup (and any later run) keeps the active recipe; another recipe is a said change -----
def test_dedup_and_run_keep_the_active_recipe(ws):
    vc(ws, "filter", "apply", ws.strict)
    strict = kept_by(ws, "strict_v1@1")
    assert 0 < len(strict) < len(kept_by(ws, "demo_v1@1"))

    out = vc(ws, "filter", "dedup")
    assert "active recipe strict_v1@1" in out
    current = q(ws, "SELECT recipe, kept, count(*) AS n FROM clips_wide GROUP BY ALL")
    assert {r["recipe"] for r in current} == {"strict_v1@1"}
    assert funnel(ws)["kept"] == len(strict) == sum(r["n"] for r in current if r["kept"])

    out = vc(ws, "run", ws.inputs, "--no-progress")  # nothing new: no source is processed again
    assert {r["recipe"] for r in q(ws, "SELECT DISTINCT recipe FROM clips_wide")} == {"strict_v1@1"}
    assert funnel(ws)["kept"] == len(strict) and "recipe change" not in out

    # a config that names another recipe changes it, out loud, and every clip follows
    out = vc(ws, "run", ws.inputs, "--no-progress", "--set", "filters.recipe=demo_v1")
    assert "recipe change: the config (filters.recipe) names demo_v1@1; the catalog's active recipe was strict_v1@1" in out
    assert {r["recipe"] for r in q(ws, "SELECT DISTINCT recipe FROM clips_wide")} == {"demo_v1@1"}
    assert_monotone(ws)
    assert problems(ws) == []


# -- case 4: the production preset names a production recipe; train's default selection -----------
def test_production_preset_decides_with_a_production_recipe_and_says_so(ws):
    out = " ".join(cli.invoke(app, ["config", "show", "--preset", "production"]).output.split())
    assert "recipe: pretrain_v1" in out
    assert "recipe: finetune_hq_v1" in " ".join(cli.invoke(
        app, ["config", "show", "--preset", "production", "--set", "filters.recipe=finetune_hq_v1"]).output.split())
    assert "recipe: demo_v1" in " ".join(cli.invoke(app, ["config", "show"]).output.split())

    # on a catalog decided by demo_v1, the production preset is an explicit change, said on the terminal
    out = vc(ws, "sync", "--preset", "production", "--no-progress")
    assert "recipe change: the production preset names pretrain_v1@1" in out
    assert {r["recipe"] for r in q(ws, "SELECT DISTINCT recipe FROM clips_wide")} == {"pretrain_v1@1"}
    assert_monotone(ws)


def test_train_without_a_selection_trains_on_the_active_recipes_kept_captioned_clips(ws):
    from vidcorpus.config import load_config
    from vidcorpus.jobs.shard_selection import select_training_shards

    vc(ws, "filter", "apply", ws.strict)
    strict = kept_by(ws, "strict_v1@1")
    sharded = {r["clip_id"] for r in q(ws, "SELECT DISTINCT clip_id FROM shard_members")}
    assert strict < sharded  # clips the re-decision dropped are still in the demo's shards

    _specs, keys, what = select_training_shards(load_config(None, [], workdir=ws.workdir))
    assert keys == strict and "strict_v1@1" in what
    out = vc(ws, "train", "--steps", "1", "--no-progress", "-o", str(ws.tmp / "run"))
    assert "the active recipe strict_v1@1's kept, captioned clips" in out
    trained = {r["clip_id"] for r in q(ws, "SELECT clip_id FROM train_samples WHERE run_id = "
                                           "(SELECT max(run_id) FROM train_runs)")}
    assert trained and trained <= strict
    # an explicit selection is the user's
    _specs, keys, _what = select_training_shards(load_config(None, [], workdir=ws.workdir, **{"train.select": "TRUE"}))
    assert keys == sharded


# -- case 5: the funnel counts the active recipe's population, so it never rises ------------------
def test_funnel_is_monotone_through_apply_dedup_and_sync(ws):
    assert_monotone(ws)
    vc(ws, "filter", "apply", ws.strict)
    f = assert_monotone(ws)
    assert f["kept"] == len(kept_by(ws, "strict_v1@1")) and f["sharded"] <= f["kept"] and f["trained_on"] <= f["kept"]
    vc(ws, "filter", "dedup")
    assert assert_monotone(ws) == f
    vc(ws, "filter", "apply", ws.lenient)
    f = assert_monotone(ws)
    assert f["captioned"] < f["kept"]  # newly kept, not captioned yet
    vc(ws, "sync", "--no-progress")
    f = assert_monotone(ws)
    assert f["kept"] == f["captioned"] == f["sharded"] == len(kept_by(ws, "lenient_v1@1"))


# -- property: any sequence of the commands leaves the catalog consistent and the funnel monotone ---
def _step(ws, rng: random.Random, i: int) -> str:
    choice = rng.choice(["run", "apply", "dedup", "sync", "release", "train"])
    if choice == "run":
        vc(ws, "run", ws.inputs, "--no-progress")
    elif choice == "apply":
        recipe = rng.choice([ws.lenient, ws.strict, "demo_v1"])
        vc(ws, "filter", "apply", recipe)
        choice += " " + Path(recipe).stem
    elif choice == "dedup":
        vc(ws, "filter", "dedup")
    elif choice == "sync":
        vc(ws, "sync", "--no-progress")
    elif choice == "release":
        # refused (exit 2, one line) while a kept clip waits for its caption
        out = vc(ws, "release", "create", f"rel-{i}", code=(0, 2))
        assert "Traceback" not in out
    else:
        vc(ws, "train", "--steps", "1", "--no-progress", "-o", str(ws.tmp / f"train-{i}"), code=(0, 2))
    return choice


# Seeded (a failure replays exactly). These three draw every command and re-decisions followed by
# release/sync/train/dedup/run: [apply lenient, release, sync, apply demo_v1], [train, dedup, dedup,
# apply lenient, run], [apply lenient, dedup, train, apply strict].
@pytest.mark.parametrize("seed", [22, 27, 32])
def test_random_command_sequences_keep_the_catalog_consistent_and_the_funnel_monotone(ws, seed):
    rng = random.Random(seed)
    done = []
    for i in range(rng.randint(4, 5)):
        done.append(_step(ws, rng, i))
        assert problems(ws) == [], done
        assert_monotone(ws)
    vc(ws, "sync", "--no-progress")
    assert pending(ws).total == 0, done
    f = assert_monotone(ws)
    assert f["kept"] == f["captioned"] == f["sharded"], (done, f)
    assert problems(ws) == [], done
