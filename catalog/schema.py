"""The catalog's schema as numbered migrations, applied in order when a writer opens the file."""

from __future__ import annotations

import re

from vidcorpus.catalog.sql_names import name_literal
from vidcorpus.catalog.wide_spec import FIXED_NAMES, rebuild_sql

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE runs (
            run_id VARCHAR PRIMARY KEY, kind VARCHAR, status VARCHAR,
            started_at TIMESTAMP, finished_at TIMESTAMP,
            config_json VARCHAR, code_version VARCHAR, stats_json VARCHAR
        );
        CREATE TABLE sources (
            source_id VARCHAR PRIMARY KEY, uri VARCHAR, text VARCHAR, meta_json VARCHAR,
            media_type VARCHAR, source_path VARCHAR, sha256 VARCHAR, bytes BIGINT,
            container VARCHAR, codec VARCHAR, width INTEGER, height INTEGER, fps DOUBLE,
            n_frames BIGINT, duration_s DOUBLE,
            status VARCHAR,             -- 'done' or 'failed'
            run_id VARCHAR, updated_at TIMESTAMP
        );
        CREATE TABLE clips (
            clip_id VARCHAR PRIMARY KEY, source_id VARCHAR, media_type VARCHAR,
            first_frame BIGINT, last_frame BIGINT, start_s DOUBLE, end_s DOUBLE, duration_s DOUBLE,
            n_frames BIGINT, fps DOUBLE, width INTEGER, height INTEGER,
            clip_path VARCHAR, first_frame_path VARCHAR, run_id VARCHAR, updated_at TIMESTAMP
        );
        CREATE TABLE scores (
            clip_id VARCHAR, scorer VARCHAR, model VARCHAR, version VARCHAR, value DOUBLE,
            run_id VARCHAR, written_at TIMESTAMP,
            PRIMARY KEY (clip_id, scorer, model, version)
        );
        CREATE TABLE captions (
            clip_id VARCHAR, version VARCHAR, kind VARCHAR, text VARCHAR, model VARCHAR,
            prompt_version VARCHAR, meta_json VARCHAR, run_id VARCHAR, written_at TIMESTAMP,
            PRIMARY KEY (clip_id, version, kind)
        );
        CREATE TABLE decisions (
            clip_id VARCHAR, recipe VARCHAR, kept BOOLEAN, reason VARCHAR, run_id VARCHAR,
            decided_at TIMESTAMP,
            PRIMARY KEY (clip_id, recipe)
        );
        CREATE TABLE shards (
            shard_id VARCHAR PRIMARY KEY, url VARCHAR, sha256 VARCHAR, bytes BIGINT, n BIGINT,
            bucket VARCHAR, caption_version VARCHAR, run_id VARCHAR, created_at TIMESTAMP
        );
        CREATE TABLE shard_members (
            shard_id VARCHAR, clip_id VARCHAR,
            PRIMARY KEY (shard_id, clip_id)
        );
        CREATE TABLE failures (
            item_id VARCHAR, stage VARCHAR, source_id VARCHAR, uri VARCHAR,
            error_class VARCHAR, error VARCHAR, run_id VARCHAR, failed_at TIMESTAMP,
            attempts INTEGER,
            PRIMARY KEY (item_id, stage)
        );
        CREATE TABLE train_runs (
            run_id VARCHAR PRIMARY KEY, stage VARCHAR, select_sql VARCHAR, steps INTEGER,
            final_loss DOUBLE, checkpoint VARCHAR, shard_urls VARCHAR, config_json VARCHAR,
            started_at TIMESTAMP, finished_at TIMESTAMP
        );
        CREATE TABLE train_samples (
            run_id VARCHAR, step INTEGER, clip_id VARCHAR,
            PRIMARY KEY (run_id, step, clip_id)
        );
        CREATE VIEW failures_by_class AS
            SELECT stage, error_class, count(*) AS n, any_value(error) AS example
            FROM failures GROUP BY ALL ORDER BY n DESC;
        """,
    ),
    (2, "ALTER TABLE clips ADD COLUMN extract_mode VARCHAR;"),  # precise | copy | image
    (
        3,  # probe facts of each source (issue 4)
        """
        ALTER TABLE sources ADD COLUMN bitrate BIGINT;
        ALTER TABLE sources ADD COLUMN has_audio BOOLEAN;
        ALTER TABLE sources ADD COLUMN audio_codec VARCHAR;
        ALTER TABLE sources ADD COLUMN rotation INTEGER;
        """,
    ),
    (
        4,  # dataset releases (issue 7): an immutable, named set of shards with a manifest
        """
        CREATE TABLE releases (
            name VARCHAR PRIMARY KEY, recipe VARCHAR, caption_version VARCHAR, select_sql VARCHAR,
            manifest_url VARCHAR, manifest_sha256 VARCHAR, n_shards BIGINT, n_clips BIGINT, bytes BIGINT,
            catalog_snapshot VARCHAR, run_id VARCHAR, created_at TIMESTAMP
        );
        CREATE TABLE release_members (
            name VARCHAR, clip_id VARCHAR, shard_id VARCHAR,
            PRIMARY KEY (name, clip_id)
        );
        """,
    ),
    (
        5,  # issue 3: the wide clip table is materialised (the driver maintains it on every commit)
        """
        DROP VIEW IF EXISTS funnel;
        DROP VIEW IF EXISTS clips_wide;
        CREATE TABLE clips_wide (
            clip_id VARCHAR PRIMARY KEY, source_id VARCHAR, media_type VARCHAR,
            first_frame BIGINT, last_frame BIGINT, start_s DOUBLE, end_s DOUBLE, duration_s DOUBLE,
            n_frames BIGINT, fps DOUBLE, width INTEGER, height INTEGER,
            clip_path VARCHAR, first_frame_path VARCHAR, run_id VARCHAR, updated_at TIMESTAMP,
            extract_mode VARCHAR,
            uri VARCHAR, source_text VARCHAR, source_sha256 VARCHAR,
            recipe VARCHAR, kept BOOLEAN, reason VARCHAR,
            caption VARCHAR, short_caption VARCHAR, caption_version VARCHAR,
            shard_id VARCHAR, shard_url VARCHAR,
            scored BOOLEAN, captioned BOOLEAN, trained BOOLEAN  -- flags the funnels count (no string scans)
        );
        """,
    ),
    (
        6,  # filters (issue 5): versioned recipes by content, and the index of clip embeddings in Parquet
        """
        CREATE TABLE recipes (
            recipe VARCHAR PRIMARY KEY,     -- name@version, as decisions.recipe names it
            name VARCHAR, version VARCHAR, sha256 VARCHAR, yaml VARCHAR, description VARCHAR,
            run_id VARCHAR, created_at TIMESTAMP
        );
        CREATE TABLE embeddings (
            clip_id VARCHAR, model VARCHAR, dim INTEGER, url VARCHAR, content_sha256 VARCHAR,
            run_id VARCHAR, written_at TIMESTAMP,
            PRIMARY KEY (clip_id, model)
        );
        """,
    ),
    (
        7,  # latent cache (issue 7): sidecar shards of encoder outputs, keyed by shard and cache key
        """
        CREATE TABLE latent_shards (
            shard_id VARCHAR, cache_key VARCHAR, url VARCHAR, sha256 VARCHAR, bytes BIGINT, n BIGINT,
            encoders_json VARCHAR, params_json VARCHAR, run_id VARCHAR, created_at TIMESTAMP,
            PRIMARY KEY (shard_id, cache_key)
        );
        """,
    ),
    (
        8,  # issue 21: the active recipe is catalog state, with its history (catalog/corpus_state.py)
        """
        CREATE TABLE recipe_history (
            seq BIGINT PRIMARY KEY, recipe VARCHAR, sha256 VARCHAR, origin VARCHAR, run_id VARCHAR,
            set_at TIMESTAMP
        );
        """,
    ),
    (
        9,  # issue 20: nothing silent. Warnings and fast-path switch-offs raised in stages, per run; and
        # which decode path wrote each caption (static_graph or transformers' default generate)
        """
        CREATE TABLE IF NOT EXISTS events (
            run_id VARCHAR, stage VARCHAR, kind VARCHAR, message VARCHAR, count BIGINT,
            first_at TIMESTAMP, last_at TIMESTAMP,
            PRIMARY KEY (run_id, stage, kind, message)
        );
        ALTER TABLE captions ADD COLUMN IF NOT EXISTS decode VARCHAR;
        """,
    ),
    (
        12,  # issue 21: every frame accounted for (numbered past 8-11 so that parallel branches merge cleanly)
        """
        ALTER TABLE sources ADD COLUMN split_frames BIGINT;   -- frames the shot splitter read
        CREATE TABLE dropped_segments (
            source_id VARCHAR, first_frame BIGINT, last_frame BIGINT,
            reason VARCHAR,    -- transition, too_short, trimmed, not_extracted, or a detector's own
            detector VARCHAR,  -- split (the splitter's rules), extract, or the detector that reported it
            start_s DOUBLE, end_s DOUBLE, run_id VARCHAR, written_at TIMESTAMP,
            PRIMARY KEY (source_id, first_frame, last_frame)
        );
        """,
    ),
    (
        13,  # issue 22: where the time goes. Per run and stage: rows, busy and waiting seconds over the run's
        # wall time, GPU busy share (vidcorpus/stage_stats.py); and the intervals the report draws as a timeline
        """
        CREATE TABLE IF NOT EXISTS stage_stats (
            run_id VARCHAR, stage VARCHAR, step INTEGER,   -- step: the stage's place in the pipeline
            rows_in BIGINT, rows_out BIGINT, batches BIGINT, workers INTEGER,
            wall_s DOUBLE, busy_s DOUBLE, wait_input_s DOUBLE, wait_output_s DOUBLE,  -- these three add to wall_s
            work_s DOUBLE,            -- batch seconds summed over workers (> busy_s when they ran side by side)
            setup_s DOUBLE,           -- model loading and other setup inside batches
            gpu_busy_share DOUBLE,    -- GPU-busy seconds / (wall_s x GPUs used); NULL on CPU or without NVML
            bound_by BOOLEAN,         -- the stage busy for the largest share of the run
            written_at TIMESTAMP,
            PRIMARY KEY (run_id, stage)
        );
        CREATE TABLE IF NOT EXISTS stage_intervals (
            run_id VARCHAR, stage VARCHAR,
            state VARCHAR,            -- busy | wait_output (idle with input queued); the rest is wait_input
            start_s DOUBLE, end_s DOUBLE  -- seconds from the run's start
        );
        """,
    ),
    (
        14,  # issue 25: people's verdicts on clips (`vidcorpus serve`); append-only, the newest per clip counts
        """
        CREATE TABLE IF NOT EXISTS labels (
            label_id VARCHAR PRIMARY KEY,   -- time-ordered (ULID)
            clip_id VARCHAR, label VARCHAR, -- 'good' or 'bad'
            reason VARCHAR,                 -- text_overlay, static, cut_inside, bad_caption, ... or free text
            who VARCHAR, labeled_at TIMESTAMP,
            recipe VARCHAR,                 -- the recipe in force when it was given
            origin VARCHAR                  -- 'browse', or 'sample:<score>' for a uniform sample (unbiased estimates)
        );
        """,
    ),
    (
        15,  # issue 25: what the clip page reads is index probes. DuckDB does not use a composite primary key
        # for its first column alone: `decisions WHERE clip_id = ?` scanned every decision (11 ms at 1 M clips),
        # and the source's timeline scanned clips_wide by source_id (41 ms of CPU at 10 M). DuckDB refuses to
        # DROP or RENAME a column of a table with an index: a later migration doing so drops the index first.
        """
        CREATE INDEX IF NOT EXISTS decisions_by_clip ON decisions (clip_id);
        CREATE INDEX IF NOT EXISTS embeddings_by_clip ON embeddings (clip_id);  -- its model and duplicates, likewise
        CREATE INDEX IF NOT EXISTS dropped_segments_by_source ON dropped_segments (source_id);  -- its timeline
        CREATE INDEX IF NOT EXISTS clips_wide_by_source ON clips_wide (source_id);
        """,
    ),
    (
        16,  # issue 24: checkpoints stay small. A run's per-step clip ids stream to per-rank Parquet parts
        # (train/sample_log.py); train_samples is filled from them, and these rows say which parts it came from
        """
        CREATE TABLE IF NOT EXISTS train_sample_files (
            run_id VARCHAR, rank INTEGER, url VARCHAR,
            first_step INTEGER, end_step INTEGER,  -- the part holds the rank's rows of steps [first_step, end_step)
            rows BIGINT,
            PRIMARY KEY (run_id, url)
        );
        """,
    ),
]

# Python steps run right after a migration's DDL, in the same transaction (method names of Catalog).
MIGRATION_HOOKS: dict[int, str] = {5: "rebuild_wide"}

LATEST_VERSION = max(v for v, _ in MIGRATIONS)

CLIP_COLUMNS = frozenset({
    "clip_id", "source_id", "media_type", "first_frame", "last_frame", "start_s", "end_s", "duration_s", "n_frames",
    "fps", "width", "height", "clip_path", "first_frame_path", "run_id", "updated_at", "extract_mode",
}) | FIXED_NAMES
"""Column names of clips_wide that are not scores; a scorer with one of these names stays in the long table."""

SCORER_NAME = re.compile(r"[a-z][a-z0-9_]*")


def check_scorer_name(name: str) -> None:
    if not SCORER_NAME.fullmatch(name):
        raise ValueError(f"scorer name {name!r} is not a plain identifier ([a-z][a-z0-9_]*)")


def wide_columns(scorers: list[str]) -> list[str]:
    """The scorers that get their own clips_wide column (valid names that do not repeat a clip column)."""
    for name in scorers:
        check_scorer_name(name)
    return [n for n in scorers if n not in CLIP_COLUMNS]


def wide_view_sql(scorers: list[str], where: str | None = None) -> str:
    """The SELECT that computes clips_wide from the long tables (a full or partial rebuild).

    One row per clip, a column per scorer (latest value by written_at), the latest long and short
    caption and caption version, the latest decision, the first shard holding the clip: each column
    as ``catalog/wide_spec.py`` defines it, which the driver's incremental update
    (``catalog/wide_table.py``) follows too; ``catalog verify --deep`` compares the two.
    """
    return rebuild_sql(wide_columns(scorers), where)


ACTIVE_RECIPE_SQL = ("coalesce((SELECT arg_max(recipe, seq) FROM recipe_history), "
                     "(SELECT arg_max(recipe, decided_at) FROM decisions))")
"""The recipe in force: the newest recipe_history row; catalogs from before it, the newest decision's."""
IN_FORCE_SQL = ("(recipe = (SELECT arg_max(recipe, seq) FROM recipe_history) "
                "OR NOT EXISTS (SELECT 1 FROM recipe_history))")
"""A clips_wide row decided by the recipe in force (every latest decision while no history is
recorded); reads only the small history table, so the funnel stays a scan of clips_wide."""

def funnel_body(key: str | None = None, clips: str = "clips_wide", sources: str = "sources",
                failures: str = "failures", in_force: bool = True) -> str:
    """Counts and hours per stage, from the materialised clips_wide (fast at millions of clips): the
    one definition of the funnel, behind the ``funnel`` and ``funnel_by_run`` views and the report.

    ``key`` groups it: an expression over columns the three relations share (``run_id``, ``uri``);
    the rows have a ``key`` column (NULL without one). Per run, a clip stage counts the clips that
    run wrote (clips.run_id: the last run that produced the clip) and how far they have got since;
    sources and failures count the rows that run wrote. ``clips``/``sources``/``failures`` name
    relations with those tables' columns (the report passes its scoped views); ``in_force=False``
    counts every latest decision as kept (a release's own recipe need not be the one in force).
    """
    pick = f"{key} AS key" if key else "NULL::VARCHAR AS key"
    group = " GROUP BY 1" if key else ""

    def clip_stage(name: str, cond: str) -> str:
        return (f"count(*) FILTER (WHERE {cond}) AS {name}_n, "
                f"sum(duration_s) FILTER (WHERE {cond}) / 3600 AS {name}_h")

    # Each stage counts a subset of the one before, under the active recipe (issue 21): a clip
    # sharded or trained on before a re-decision dropped it no longer counts, so the funnel never rises.
    kept = f"scored AND kept AND {IN_FORCE_SQL}" if in_force else "scored AND kept"
    stages = [("shots", "TRUE"), ("scored", "scored"), ("kept", kept),
              ("captioned", f"{kept} AND captioned"), ("sharded", f"{kept} AND captioned AND shard_id IS NOT NULL"),
              ("trained_on", f"{kept} AND captioned AND shard_id IS NOT NULL AND trained")]
    join = "FULL JOIN" if key else "CROSS JOIN"
    on = " USING (key)" if key else ""
    key_expr = "key" if key else "NULL::VARCHAR"
    rows = ["SELECT key, 1 AS step, 'sources' AS stage, src_n AS n, src_h AS hours FROM j",
            "SELECT key, 2, 'failed', fail_n, NULL::DOUBLE FROM j"]
    rows += [f"SELECT key, {i}, {name_literal(name)}, {name}_n, {name}_h FROM j" for i, (name, _c) in enumerate(stages, 3)]
    return f"""
        WITH src AS (SELECT {pick}, count(*) AS src_n,
                            sum(duration_s) FILTER (WHERE status = 'done') / 3600 AS src_h
                     FROM {sources}{group}),
        fail AS (SELECT {pick}, count(DISTINCT coalesce(source_id, item_id)) AS fail_n FROM {failures}{group}),
        w AS (SELECT {pick}, {', '.join(clip_stage(n, c) for n, c in stages)}
              FROM {clips}{group}),
        j AS (SELECT {key_expr} AS key, coalesce(src_n, 0) AS src_n, src_h, coalesce(fail_n, 0) AS fail_n,
                     {', '.join(f'coalesce({n}_n, 0) AS {n}_n, {n}_h' for n, _c in stages)}
              FROM src {join} fail{on} {join} w{on})
        {' UNION ALL '.join(rows)}
    """


FUNNEL_SQL = f"""
    CREATE OR REPLACE VIEW funnel AS
    SELECT step, stage, n, hours FROM ({funnel_body()})
"""
FUNNEL_BY_RUN_SQL = f"""
    CREATE OR REPLACE VIEW funnel_by_run AS
    SELECT key AS run_id, step, stage, n, hours FROM ({funnel_body("run_id")})
"""
