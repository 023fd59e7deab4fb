"""Arrow schemas, defined once: the rows that flow through the pipeline and the catalog's tables.

A pipeline row is one source (before splitting) or one clip (after). Every stage reads and
returns rows of ``ROW_SCHEMA``; a stage that fails on a row sets ``error_class``/``error``/
``error_stage`` and later stages pass the row through untouched.
"""

from __future__ import annotations

import math

import pyarrow as pa

from vidcorpus.stage_clock import STAGE_TIME_TYPE

SCORE_TYPE = pa.struct(
    [("scorer", pa.string()), ("model", pa.string()), ("version", pa.string()), ("value", pa.float64())]
)
CAPTION_TYPE = pa.struct(
    [
        ("version", pa.string()),
        ("kind", pa.string()),  # "long" | "short" | "original"
        ("text", pa.string()),
        ("model", pa.string()),
        ("prompt_version", pa.string()),
        ("meta_json", pa.string()),  # generation settings and cleanup edits
        ("decode", pa.string()),  # the decode path that wrote it: static_graph | default (None: not generated)
    ]
)

# a run of source frames no clip holds, and why (vidcorpus/ingest/segments.py)
DROPPED_TYPE = pa.struct(
    [("first_frame", pa.int64()), ("last_frame", pa.int64()), ("reason", pa.string()), ("detector", pa.string())]
)

ROW_SCHEMA = pa.schema(
    [
        # source
        ("source_id", pa.string()),
        ("uri", pa.string()),
        ("text", pa.string()),  # original alt-text / caption from the input list
        ("meta_json", pa.string()),  # other input columns
        ("media_type", pa.string()),  # "video" | "image"
        ("source_path", pa.string()),  # staged copy (fsspec URL)
        ("sha256", pa.string()),
        ("bytes", pa.int64()),
        ("container", pa.string()),
        ("codec", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("fps", pa.float64()),
        ("n_frames", pa.int64()),
        ("duration_s", pa.float64()),
        ("bitrate", pa.int64()),  # bits per second, container-level
        ("has_audio", pa.bool_()),
        ("audio_codec", pa.string()),
        ("rotation", pa.int32()),  # clockwise degrees the stored pixels need to display upright
        # set by the splitter: frames it read from the source, and every segment of them no clip holds
        # (each clip row of a source carries them all; the catalog checks clips + dropped cover the source)
        ("split_frames", pa.int64()),
        ("dropped", pa.list_(DROPPED_TYPE)),
        ("source_rows", pa.int64()),  # rows the source became (set when several): when the driver has them all
        # clip
        ("clip_id", pa.string()),
        ("first_frame", pa.int64()),
        ("last_frame", pa.int64()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("clip_path", pa.string()),
        ("first_frame_path", pa.string()),
        ("extract_mode", pa.string()),  # how the clip was cut: "precise" | "copy" | "image"
        # precise extraction: one JPEG of the K frames the model scorers sample (vidcorpus/stills.py);
        # a staging file for this run's scorers, not kept in the catalog
        ("stills_path", pa.string()),
        # the clip file as written (differs from the source when extraction resizes or resamples)
        ("clip_width", pa.int32()),
        ("clip_height", pa.int32()),
        ("clip_fps", pa.float64()),
        ("clip_frames", pa.int64()),
        ("scores", pa.list_(SCORE_TYPE)),
        ("captions", pa.list_(CAPTION_TYPE)),
        # set by the CLIP scorer: the clip's L2-normalised mean frame embedding (the driver writes it to
        # Parquet for dedup and retrieval) and the sha256 of the clip file's bytes (exact duplicates)
        ("embedding", pa.list_(pa.float32())),
        ("embedding_model", pa.string()),
        ("content_sha256", pa.string()),
        # decision
        ("recipe", pa.string()),
        ("kept", pa.bool_()),
        ("reason", pa.string()),
        # failure
        ("error_class", pa.string()),
        ("error", pa.string()),
        ("error_stage", pa.string()),
        # warnings the stages raised on this row's batch (vidcorpus.stage.Stage.__call__), carried on
        # one row to the driver, which logs them and writes the run's events table
        ("events_json", pa.string()),
        # one stamp per batch this row went through, a line each: stage, worker, start, end, rows in/out,
        # GPU busy (vidcorpus/stage_clock.py); the driver turns them into each stage's busy and waiting time
        ("stage_times", STAGE_TIME_TYPE),
    ]
)

ROW_FIELDS = tuple(ROW_SCHEMA.names)


def empty_row(**values) -> dict:
    """A row with every field present; unknown keys are a programming error."""
    unknown = set(values) - set(ROW_FIELDS)
    if unknown:
        raise KeyError(f"unknown row fields: {sorted(unknown)}")
    row = {name: None for name in ROW_FIELDS}
    row["scores"] = []
    row["captions"] = []
    row.update(values)
    return row


def score(scorer: str, value: float, model: str, version: str) -> dict:
    """One entry of row["scores"]; non-finite values are a bug in the scorer, not data."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"score {scorer} is not finite: {value}")
    return {"scorer": scorer, "model": model, "version": version, "value": value}


def add_scores(row: dict, new: list[dict]) -> dict:
    """Row with `new` appended; older entries of the same scorers are replaced (re-scoring a clip)."""
    names = {s["scorer"] for s in new}
    kept = [s for s in (row.get("scores") or []) if s["scorer"] not in names]
    return dict(row, scores=kept + new)


def is_clipless(row: dict) -> bool:
    """A split source that yielded no clip (every shot trimmed away or dropped): the row carries the
    source's ``split_frames`` and ``dropped`` segments only. Later stages pass it through untouched;
    the driver records the source and its segments and marks it done, so a rerun does not redo it."""
    return row.get("clip_id") is None and row.get("split_frames") is not None


def rows_to_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([{k: r.get(k) for k in ROW_FIELDS} for r in rows], schema=ROW_SCHEMA)


SHARD_SCHEMA = pa.schema(
    [
        ("shard_id", pa.string()),
        ("url", pa.string()),
        ("sha256", pa.string()),
        ("bytes", pa.int64()),
        ("n", pa.int64()),
        ("bucket", pa.string()),
        ("caption_version", pa.string()),
        ("members", pa.list_(pa.string())),
    ]
)
