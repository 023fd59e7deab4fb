"""The catalog's schema as numbered migrations, applied in order when a writer opens the file."""

from __future__ import annotations

import re

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
        20,  # filters (issue 5): versioned recipes by content, and the index of clip embeddings in Parquet
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
        40,  # latent cache (issue 7): sidecar shards of encoder outputs, keyed by shard and cache key
        """
        CREATE TABLE latent_shards (
            shard_id VARCHAR, cache_key VARCHAR, url VARCHAR, sha256 VARCHAR, bytes BIGINT, n BIGINT,
            encoders_json VARCHAR, params_json VARCHAR, run_id VARCHAR, created_at TIMESTAMP,
            PRIMARY KEY (shard_id, cache_key)
        );
        """,
    ),
]

LATEST_VERSION = max(v for v, _ in MIGRATIONS)

CLIP_COLUMNS = frozenset({
    "clip_id", "source_id", "media_type", "first_frame", "last_frame", "start_s", "end_s", "duration_s", "n_frames",
    "fps", "width", "height", "clip_path", "first_frame_path", "run_id", "updated_at", "extract_mode", "uri",
    "source_text", "source_sha256", "recipe", "kept", "reason", "caption", "short_caption", "caption_version",
    "shard_id", "shard_url",
})


def wide_view_sql(scorers: list[str]) -> str:
    """The wide clip view: one row per clip, a column per scorer (latest value), chosen captions.

    Regenerated whenever new scorer names appear, so users can write ``aesthetic >= 5``.
    """
    for name in scorers:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ValueError(f"scorer name {name!r} is not a plain identifier")
    # Scores that repeat a clip column (the technical scorer's width, fps, duration_s...) stay in the
    # long scores table; the wide view keeps the clip's own column under that name.
    scorers = [n for n in scorers if n not in CLIP_COLUMNS]
    pivot = "".join(
        f",\n                arg_max(value, written_at) FILTER (WHERE scorer = '{n}') AS \"{n}\"" for n in scorers
    )
    return f"""
        CREATE OR REPLACE VIEW clips_wide AS
        WITH s AS (
            SELECT clip_id{pivot}
            FROM scores GROUP BY clip_id
        ),
        cap AS (
            SELECT clip_id,
                arg_max(text, written_at) FILTER (WHERE kind = 'long') AS caption,
                arg_max(text, written_at) FILTER (WHERE kind = 'short') AS short_caption,
                arg_max(version, written_at) AS caption_version
            FROM captions GROUP BY clip_id
        ),
        d AS (SELECT clip_id, arg_max(kept, decided_at) AS kept, arg_max(reason, decided_at) AS reason,
                     arg_max(recipe, decided_at) AS recipe FROM decisions GROUP BY clip_id),
        m AS (SELECT clip_id, min(shard_id) AS shard_id FROM shard_members GROUP BY clip_id)
        SELECT c.*, src.uri, src.text AS source_text, src.sha256 AS source_sha256,
               d.recipe, d.kept, d.reason, cap.caption, cap.short_caption, cap.caption_version,
               m.shard_id, sh.url AS shard_url{''.join(f', s."{n}"' for n in scorers)}
        FROM clips c
        LEFT JOIN sources src USING (source_id)
        LEFT JOIN s USING (clip_id)
        LEFT JOIN cap USING (clip_id)
        LEFT JOIN d USING (clip_id)
        LEFT JOIN m USING (clip_id)
        LEFT JOIN shards sh ON sh.shard_id = m.shard_id
    """


FUNNEL_SQL = """
    CREATE OR REPLACE VIEW funnel AS
    SELECT * FROM (VALUES
        (1, 'sources',    (SELECT count(*) FROM sources), (SELECT sum(duration_s) / 3600 FROM sources WHERE status = 'done')),
        (2, 'failed',     (SELECT count(DISTINCT coalesce(source_id, item_id)) FROM failures), NULL),
        (3, 'shots',      (SELECT count(*) FROM clips), (SELECT sum(duration_s) / 3600 FROM clips)),
        (4, 'scored',     (SELECT count(DISTINCT clip_id) FROM scores), NULL),
        (5, 'kept',       (SELECT count(*) FROM clips_wide WHERE kept), (SELECT sum(duration_s) / 3600 FROM clips_wide WHERE kept)),
        (6, 'captioned',  (SELECT count(*) FROM clips_wide WHERE kept AND caption IS NOT NULL), NULL),
        (7, 'sharded',    (SELECT count(DISTINCT clip_id) FROM shard_members), (SELECT sum(duration_s) / 3600 FROM clips_wide WHERE shard_id IS NOT NULL)),
        (8, 'trained_on', (SELECT count(DISTINCT clip_id) FROM train_samples), NULL)
    ) AS f(step, stage, n, hours)
"""
