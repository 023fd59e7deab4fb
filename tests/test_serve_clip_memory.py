"""The clip page's reads answered from memory once per catalog state (serve/timelines.py: each source's
timeline; serve/decision_history.py: each clip's decisions; serve/clip_rows.py: labels and shards) must equal the index probes they replace, row for
row and in the same order, and the rendered cards (serve/cards.py) must be the HTML the Jinja
macro they replace made; a commit must make the next clip page fresh."""

from __future__ import annotations

import datetime as dt
import random

import duckdb
import pytest
from jinja2 import Environment

from vidcorpus.serve import cards, clip_rows, decision_history, grid_queries, timelines
from vidcorpus.serve.clip_rows import ClipRows
from vidcorpus.serve.decision_history import DecisionHistory
from vidcorpus.serve.grid_index import grid_columns
from vidcorpus.serve.timelines import SourceTimelines


def _catalog() -> duckdb.DuckDBPyConnection:
    """Sources with and without clips, rows, segments; ties, NULLs and row-id holes."""
    con = duckdb.connect()
    con.execute("CREATE TABLE sources (source_id VARCHAR PRIMARY KEY, uri VARCHAR, n_frames INTEGER, fps DOUBLE, "
                "duration_s DOUBLE)")
    con.execute("CREATE TABLE clips_wide (clip_id VARCHAR PRIMARY KEY, source_id VARCHAR, media_type VARCHAR, "
                "kept BOOLEAN, reason VARCHAR, first_frame INTEGER, last_frame INTEGER, shard_id VARCHAR)")
    con.execute("CREATE TABLE dropped_segments (source_id VARCHAR, first_frame BIGINT, last_frame BIGINT, "
                "reason VARCHAR, detector VARCHAR)")
    con.execute("CREATE TABLE labels (label_id VARCHAR PRIMARY KEY, clip_id VARCHAR, label VARCHAR, reason VARCHAR, "
                "who VARCHAR, labeled_at TIMESTAMP, recipe VARCHAR, origin VARCHAR)")
    con.execute("CREATE TABLE shards (shard_id VARCHAR PRIMARY KEY, url VARCHAR, sha256 VARCHAR)")
    con.execute("CREATE TABLE decisions (clip_id VARCHAR, recipe VARCHAR, kept BOOLEAN, reason VARCHAR, "
                "run_id VARCHAR, decided_at TIMESTAMP, PRIMARY KEY (clip_id, recipe))")
    rnd = random.Random(5)
    # s0 to s11 have clips; s9 has no sources row; s12 has a sources row and segments but no clip
    con.executemany("INSERT INTO sources VALUES (?, ?, ?, ?, ?)",
                    [(f"s{i}", f"file:///v/{i}.mp4", rnd.choice([None, 0, 500]), 25.0, 20.0)
                     for i in range(13) if i != 9])
    clips = []
    for i in rnd.sample(range(300), 300):  # inserted out of id order
        first = rnd.choice([None, 0, 10, 10, 40, 100 + i])  # ties and missing frames
        kept = rnd.choice([True, False, None])
        clips.append((f"{rnd.choice('ab')}{i:04d}", f"s{i % 12}", rnd.choice(["video", "image"]), kept,
                      rnd.choice(["aesthetic<4", "motion<1"]) if kept is False else None, first,
                      None if first is None else first + rnd.randint(0, 30),
                      rnd.choice([None, "sh-1", "sh-2", "sh-gone"])))
    con.executemany("INSERT INTO clips_wide VALUES (?, ?, ?, ?, ?, ?, ?, ?)", clips)
    con.execute("DELETE FROM clips_wide WHERE clip_id LIKE 'b01%'")  # row ids with holes
    con.executemany("INSERT INTO dropped_segments VALUES (?, ?, ?, ?, ?)",
                    [(f"s{rnd.randint(0, 12)}", f, f + rnd.randint(0, 5), rnd.choice(["transition", "too_short"]),
                      rnd.choice(["split", "extract"])) for f in [rnd.choice([0, 10, 50, 70]) for _ in range(80)]])
    at = dt.datetime(2026, 12, 5, 12)
    con.executemany("INSERT INTO labels VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(f"l{k:03d}", f"a{rnd.randint(0, 20):04d}", rnd.choice(["good", "bad"]),
                      rnd.choice([None, "static"]), "tester", at + dt.timedelta(seconds=rnd.randint(0, 3)), None,
                      "browse") for k in range(60)])  # several per clip, ties in time
    decided = [(c[0], f"r@{v}", rnd.choice([True, False]), rnd.choice([None, "blur<2"]), "run",
                rnd.choice([None, at, at, at + dt.timedelta(hours=v)]))  # ties in time, and no time
               for c in clips for v in range(rnd.randint(0, 3))]
    con.executemany("INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?)",
                    decided + [("zz-not-a-clip", "r@1", True, None, "run", at)])
    con.executemany("INSERT INTO shards VALUES (?, ?, ?)", [("sh-1", "file:///s/1.tar", "aa"),
                                                            ("sh-2", "file:///s/2.tar", "bb")])
    return con


@pytest.fixture(scope="module")
def catalog():
    con = _catalog()
    return con, grid_queries.tables(con)


@pytest.mark.parametrize("segments_in_memory", [True, False])
def test_every_sources_timeline_from_memory_equals_the_sql(catalog, monkeypatch, segments_in_memory):
    con, have = catalog
    if not segments_in_memory:
        monkeypatch.setattr(timelines, "SEGMENTS_IN_MEMORY", 0)  # too many to hold: each page probes them
    kept = SourceTimelines(con, grid_columns(con), have)
    for i in range(12):
        answer = kept.timeline(con, f"s{i}")
        assert answer == grid_queries.timeline(con, f"s{i}", have), f"s{i}"
        assert answer["spans"]
    assert kept.timeline(con, "s12") is None  # no clip of it in memory: the SQL answers
    assert kept.timeline(con, "nope") is None
    assert kept.timeline(con, "s9")["source"] == {"source_id": "s9"}  # clips but no sources row, as the SQL says


def test_each_clips_decision_history_from_memory_equals_the_probe(catalog, monkeypatch):
    con, _ = catalog
    clip_ids = [r[0] for r in con.execute("SELECT clip_id FROM clips_wide").fetchall()]
    history = DecisionHistory(con, grid_columns(con))
    assert sum(len(history.of(c)) > 1 for c in clip_ids) >= 20  # several recipes of one clip
    for clip_id in clip_ids:
        assert history.of(clip_id) == grid_queries.clip_decisions(con, clip_id), clip_id
    assert history.of("zz-not-a-clip") is None and history.of("a0000x") is None  # not a clip: the probe answers
    monkeypatch.setattr(decision_history, "DECISIONS_IN_MEMORY", 0)  # too many to hold: each page probes
    assert DecisionHistory(con, grid_columns(con)).of(clip_ids[0]) is None


def test_labels_and_shards_from_memory_equal_the_probes(catalog, monkeypatch):
    con, have = catalog
    clip_ids = [r[0] for r in con.execute("SELECT clip_id FROM clips_wide").fetchall()]
    shard_ids = [None, "sh-1", "sh-2", "sh-gone"]
    for small in (True, False):
        if not small:
            monkeypatch.setattr(clip_rows, "ROWS_IN_MEMORY", 0)  # too many: each page probes them
        rows = ClipRows(con, have)
        assert (rows.labels is not None) == small and (rows.shards is not None) == small
        assert sum(len(rows.labels_of(con, c)) > 1 for c in clip_ids) >= 5  # several labels of one clip
        for clip_id in clip_ids:
            assert rows.labels_of(con, clip_id) == grid_queries.clip_labels(con, clip_id, have), clip_id
        for shard_id in shard_ids:
            assert rows.shard_of(con, shard_id) == grid_queries.clip_shard(con, shard_id), shard_id
    # a caller may edit what it got without changing what the next page gets
    rows = ClipRows(con, have)
    some = next(c for c in clip_ids if rows.labels_of(con, c))
    rows.labels_of(con, some)[0]["label"] = "edited"
    assert rows.labels_of(con, some) == grid_queries.clip_labels(con, some, have)


OLD_MACRO = """{% macro card(r, sort_score=none, link_suffix='') -%}
<figure class="card {{ 'kept' if r.kept else ('dropped' if r.kept == false else 'undecided') }}" data-clip="{{ r.clip_id }}">
  <a href="/clip/{{ r.clip_id }}{{ link_suffix }}">
  {% if r.media_type == 'image' %}
    <img src="/media/clip/{{ r.clip_id }}" alt="{{ r.clip_id }}" loading="lazy">
  {% else %}
    <video class="hoverplay" muted loop playsinline preload="none" poster="/media/still/{{ r.clip_id }}"
           src="/media/clip/{{ r.clip_id }}"></video>
  {% endif %}
  </a>
  <figcaption>
    <span class="decision">{{ 'kept' if r.kept else (r.reason or 'undecided') }}</span>
    <span class="id">{{ r.clip_id }}</span>
    {% if sort_score %}<span class="score">{{ sort_score }} {{ r[sort_score]|num }}</span>{% endif %}
  </figcaption>
</figure>
{%- endmacro %}"""
"""The card macro the pages used before serve/cards.py (templates/_cards.html), as it was."""


def test_cards_are_the_html_the_template_macro_made():
    env = Environment(autoescape=True)
    env.filters["num"] = cards.num
    macro = env.from_string(OLD_MACRO).module.card
    rows = [{"clip_id": "a-1", "kept": True, "reason": None, "media_type": "video", "aesthetic": 4.56789},
            {"clip_id": "a-2", "kept": False, "reason": "aesthetic<4 & <b>", "media_type": "image", "aesthetic": 3.0},
            {"clip_id": "a-3", "kept": None, "reason": None, "media_type": None, "aesthetic": None},
            {"clip_id": "a-4", "kept": False, "reason": None, "media_type": "video", "width": 1280},
            {"clip_id": "a-5", "kept": None, "reason": "x"}]
    for r in rows:
        for sort_score in (None, "aesthetic", "width"):
            for suffix in ("", "?origin=sample:aesthetic", '?x="<q>"'):
                assert cards.card(r, sort_score, suffix) == macro(r, sort_score, suffix), (r, sort_score, suffix)
    assert cards.cards(rows, "aesthetic") == "".join(macro(r, "aesthetic") for r in rows)
