"""Pipeline rows (``ROW_SCHEMA``, one per clip or failed item) taken apart into catalog table rows.

A stage row carries its source, its clip, the clip's scores, captions and decision, the segments
of the source no clip holds, or an error. The catalog stores each in its own table; this module
does that unpacking (pure Python, no connection) so that ``Catalog.commit_results`` only writes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from typing import Iterable

from vidcorpus.redact import redact_text, redact_url

SOURCE_COLUMNS = ("source_id", "uri", "text", "meta_json", "media_type", "source_path", "sha256", "bytes",
                  "container", "codec", "width", "height", "fps", "n_frames", "duration_s",
                  "bitrate", "has_audio", "audio_codec", "rotation", "split_frames")


@dataclasses.dataclass
class TableRows:
    """One batch's rows per catalog table, and the sources that failed in it."""
    sources: dict[str, dict] = dataclasses.field(default_factory=dict)
    clips: list[dict] = dataclasses.field(default_factory=list)
    scores: list[dict] = dataclasses.field(default_factory=list)
    captions: list[dict] = dataclasses.field(default_factory=list)
    decisions: list[dict] = dataclasses.field(default_factory=list)
    failures: list[dict] = dataclasses.field(default_factory=list)
    dropped: dict[tuple, dict] = dataclasses.field(default_factory=dict)  # segments no clip holds
    failed_sources: set[str] = dataclasses.field(default_factory=set)
    resplit: list[str] = dataclasses.field(default_factory=list)  # sources split again in this batch


def table_rows(run_id: str, rows: list[dict], failed_before: Iterable[str], now: dt.datetime) -> TableRows:
    """Unpack a batch. A source is 'failed' once any of its rows failed in this run (``failed_before``
    carries that across batches), else 'partial' until the run marks it done."""
    out = TableRows()
    for r in rows:
        sid = r.get("source_id")
        if sid and sid not in out.sources:
            out.sources[sid] = {c: r.get(c) for c in SOURCE_COLUMNS}
            out.sources[sid]["uri"] = redact_url(out.sources[sid]["uri"]) if out.sources[sid]["uri"] else None
        if r.get("error_class"):
            out.failures.append(_failure(run_id, r, now))
            if sid:
                out.failed_sources.add(sid)
            continue
        fps = r.get("fps")
        for d in r.get("dropped") or []:  # clip rows and a clip-less split row carry them alike
            out.dropped[(sid, d["first_frame"], d["last_frame"])] = {
                "source_id": sid, **d, "start_s": d["first_frame"] / fps if fps else None,
                "end_s": (d["last_frame"] + 1) / fps if fps else None, "run_id": run_id, "written_at": now}
        if r.get("clip_id"):
            _add_clip(out, run_id, r, now)
    failed_before = set(failed_before)
    for sid, s in out.sources.items():
        failed = sid in out.failed_sources or sid in failed_before
        s.update(status="failed" if failed else "partial", run_id=run_id, updated_at=now)
    out.resplit = sorted({r["source_id"] for r in rows if r.get("split_frames") is not None and not r.get("error_class")})
    return out


def _failure(run_id: str, r: dict, now: dt.datetime) -> dict:
    sid = r.get("source_id")
    item = r.get("clip_id") or sid or "input-" + hashlib.sha256(str(r.get("error")).encode()).hexdigest()[:16]
    return {"item_id": item, "stage": r["error_stage"], "source_id": sid,
            "uri": redact_url(r["uri"]) if r.get("uri") else None,
            "error_class": r["error_class"], "error": redact_text(r.get("error")), "run_id": run_id,
            "failed_at": now, "attempts": 1}


def _add_clip(out: TableRows, run_id: str, r: dict, now: dt.datetime) -> None:
    """The clip row (the clip file's geometry where extraction resized or resampled) and its children."""
    fps = r.get("fps")
    out.clips.append({
        "clip_id": r["clip_id"], "source_id": r.get("source_id"), "media_type": r["media_type"],
        "first_frame": r["first_frame"], "last_frame": r["last_frame"], "start_s": r["start_s"],
        "end_s": r["end_s"], "duration_s": (r["end_s"] or 0.0) - (r["start_s"] or 0.0),
        "n_frames": r.get("clip_frames") or ((r["last_frame"] - r["first_frame"] + 1)
                                              if r["last_frame"] is not None else None),
        "fps": r.get("clip_fps") or fps, "width": r.get("clip_width") or r["width"],
        "height": r.get("clip_height") or r["height"], "clip_path": r["clip_path"],
        "first_frame_path": r["first_frame_path"], "extract_mode": r.get("extract_mode"),
        "run_id": run_id, "updated_at": now,
    })
    for s in r.get("scores") or []:
        out.scores.append({"clip_id": r["clip_id"], **s, "run_id": run_id, "written_at": now})
    for c in r.get("captions") or []:
        out.captions.append({"clip_id": r["clip_id"], **c, "run_id": run_id, "written_at": now})
    if r.get("recipe"):
        out.decisions.append({"clip_id": r["clip_id"], "recipe": r["recipe"], "kept": bool(r["kept"]),
                              "reason": r.get("reason"), "run_id": run_id, "decided_at": now})
