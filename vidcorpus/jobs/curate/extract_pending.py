"""On-demand extraction: kept clips without a clip file get one, from their recorded source and range.

Filter before you encode (issue 22) leaves the clips a recipe drops unextracted (``clip_path``
NULL, ``extract_mode = 'deferred'``). A later decision can keep one (``filter apply`` of a more
lenient recipe, a dedup re-decision), and a kept clip's file can go missing (issue 21). ``vidcorpus
sync`` and a ``vidcorpus run`` with no new inputs extract them here, before captioning, through
``ExtractStage`` itself in precise mode (or ``auto``, whose stream copies are exact): the clip id
names exact source frames first..last, and a stream copy from an earlier keyframe would move them. The source is the staged copy the catalog records; when that is gone
it is fetched again from its URI through the download stage, and used only if its sha256 is the
recorded one (other bytes would give other frames under the same clip id).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import fsspec

from vidcorpus.config import Config
from vidcorpus.ingest.download import DownloadStage
from vidcorpus.ingest.extract import ExtractStage

logger = logging.getLogger(__name__)

CLIP_COLUMNS = ("clip_id", "source_id", "media_type", "first_frame", "last_frame", "start_s", "end_s")
SOURCE_COLUMNS = ("uri", "source_path", "sha256", "fps", "width", "height", "n_frames")


def file_exists(url: str | None) -> bool:
    if not url:
        return False
    try:
        fs, path = fsspec.core.url_to_fs(url)
        return bool(fs.exists(path))
    except Exception:  # noqa: BLE001 - an unreachable store: the file is not there for us
        return False


@dataclass
class ExtractResult:
    extracted: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def _local_sources(cfg: Config, rows: list[dict]) -> tuple[list[dict], list[tuple[dict, str]]]:
    """Rows whose source file is readable (fetched again through the download stage when its staged
    copy is gone), and (row, why) for the others."""
    ok, bad = [], []
    fetched: dict[str, dict] = {}
    for r in rows:
        if file_exists(r["source_path"]):
            ok.append(r)
            continue
        sid = r["source_id"]
        if sid not in fetched:
            logger.info(f"source {sid} has no local copy: downloading {r['uri']} again")
            (got,) = DownloadStage(cfg).process_rows([{"source_id": sid, "uri": r["uri"]}])
            fetched[sid] = got
        got = fetched[sid]
        if got.get("error_class"):
            bad.append((r, f"source could not be fetched again: {got.get('error')}"))
        elif r["sha256"] and got.get("sha256") != r["sha256"]:
            bad.append((r, f"source {r['uri']} changed since it was split (sha256 differs): its frames are not "
                           "the clip's"))
        else:
            ok.append(dict(r, source_path=got["source_path"]))
    return ok, bad


def extract_clips(cfg: Config, cat, run_id: str, clip_ids: list[str]) -> ExtractResult:
    """Extract these clips (same ids, same frames) and record their files; a clip that cannot be
    extracted gets a failure row and stays pending."""
    out = ExtractResult()
    if not clip_ids:
        return out
    cols = ", ".join([f"c.{c}" for c in CLIP_COLUMNS] + [f"s.{c}" for c in SOURCE_COLUMNS])
    rows = cat.query_dicts(f"SELECT {cols} FROM clips c JOIN sources s USING (source_id) "
                           "WHERE c.clip_id IN (SELECT unnest(?)) ORDER BY c.clip_id", [list(clip_ids)])
    rows, bad = _local_sources(cfg, rows)
    exact = "auto" if cfg.split.extract_mode == "auto" else "precise"  # never a copy that moves the range
    stage = ExtractStage(cfg.model_copy(update={"split": cfg.split.model_copy(update={"extract_mode": exact})}))
    done = stage.process_rows([dict(r, clip_path=None, kept=True) for r in rows]) if rows else []
    good = [r for r in done if not r.get("error_class")]
    # a file of other frames under the same id would be wrong: precise extraction never moves a range
    good = [r for r in good if r["clip_id"] in set(clip_ids)]
    if good:
        record_clip_files(cat, good)
    for r, why in bad:
        cat.record_failure(r["clip_id"], "extract", "download", why, run_id, source_id=r["source_id"])
    for r in done:
        if r.get("error_class"):
            cat.record_failure(r["clip_id"], "extract", r["error_class"], r.get("error") or "", run_id,
                               source_id=r.get("source_id"))
    out.extracted = sorted(r["clip_id"] for r in good)
    out.failed = sorted({r["clip_id"] for r, _ in bad} | {r["clip_id"] for r in done if r.get("error_class")})
    logger.info(f"extracted {len(out.extracted)} kept clips on demand"
                + (f"; {len(out.failed)} failed (`vidcorpus catalog failures`)" if out.failed else ""))
    return out


def record_clip_files(cat, rows: list[dict]) -> None:
    """Point the clips' catalog rows at their new files (path, first frame, mode and the clip's
    size, rate and frame count as written); everything else of the row stays."""
    ids = [r["clip_id"] for r in rows]
    current = {r["clip_id"]: r for r in cat.query_dicts("SELECT * FROM clips WHERE clip_id IN (SELECT unnest(?))",
                                                        [ids])}
    updated = []
    for r in rows:
        row = dict(current[r["clip_id"]])
        row.update(clip_path=r["clip_path"], first_frame_path=r["first_frame_path"], extract_mode=r["extract_mode"])
        for col, key in (("width", "clip_width"), ("height", "clip_height"), ("fps", "clip_fps"),
                         ("n_frames", "clip_frames")):
            if r.get(key) is not None:
                row[col] = r[key]
        updated.append(row)
    with cat.transaction():
        cat._upsert("clips", updated)
