"""People's verdicts on clips: catalog rows (who, when, clip, good or bad, why), written one at a time.

A label is one short transaction (``CatalogAccess.write``): it never holds the file longer than an
INSERT, so a running job's commits are not held up. Labels are appended, never edited: the newest
label of a clip is its verdict, the older ones stay as history. ``origin`` says how the clip was
reached: ``browse`` (whatever the user looked at, biased) or ``sample:<score>`` (a uniform sample
of the clips that score's filter keeps or drops, which ``measure`` can estimate from without bias).
"""

from __future__ import annotations

import datetime as dt
import re

import duckdb

from vidcorpus.ids import new_run_id
from vidcorpus.serve.access import CatalogAccess
from vidcorpus.serve.security import Refused, check_id

LABELS = ("good", "bad")
REASONS = ("text_overlay", "static", "cut_inside", "bad_caption", "low_quality", "watermark", "nsfw", "duplicate",
           "other")
"""The reasons offered as buttons (keys 1-9); any short free text is accepted too."""
ORIGIN = re.compile(r"browse|sample:[a-z][a-z0-9_]{0,63}|compare")
FREE_REASON = re.compile(r"[\w .,:;'()/-]{0,120}")


def check_label(label: str, reason: str | None, origin: str) -> tuple[str, str | None, str]:
    if label not in LABELS:
        raise Refused(f"a label is good or bad, not {str(label)[:40]!r}")
    reason = (reason or "").strip() or None
    if reason is not None and not FREE_REASON.fullmatch(reason):
        raise Refused("a reason is up to 120 letters, digits and punctuation")
    if not ORIGIN.fullmatch(origin or ""):
        raise Refused(f"unknown label origin {str(origin)[:40]!r}")
    return label, reason, origin


def add_label(access: CatalogAccess, clip_id: str, label: str, reason: str | None, who: str,
              origin: str = "browse") -> dict:
    """Record one label for an existing clip; returns the row. Refused for an unknown clip."""
    check_id(clip_id)
    label, reason, origin = check_label(label, reason, origin)
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    row = {"label_id": new_run_id(), "clip_id": clip_id, "label": label, "reason": reason, "who": who[:64],
           "labeled_at": now, "origin": origin}
    with access.write() as con:
        if not con.execute("SELECT 1 FROM clips WHERE clip_id = ?", [clip_id]).fetchall():
            raise Refused(f"no clip {clip_id} in the catalog")
        recipe = con.execute("SELECT recipe FROM clips_wide WHERE clip_id = ?", [clip_id]).fetchall()
        row["recipe"] = recipe[0][0] if recipe else None
        con.execute("INSERT INTO labels (label_id, clip_id, label, reason, who, labeled_at, recipe, origin) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [row["label_id"], clip_id, label, reason, row["who"], now, row["recipe"], origin])
    return row


LATEST_LABELS_SQL = ("SELECT clip_id, arg_max(label, labeled_at) AS label, arg_max(reason, labeled_at) AS reason, "
                     "arg_max(origin, labeled_at) AS origin FROM labels GROUP BY clip_id")
"""Each labelled clip's verdict: its newest label."""


def label_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    try:
        rows = con.execute(f"SELECT label, count(*) FROM ({LATEST_LABELS_SQL}) GROUP BY 1").fetchall()
    except duckdb.CatalogException:  # a snapshot from before labels
        return {}
    return dict(rows)
