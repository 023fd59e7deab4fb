"""Input readers: URL lists (txt, csv, jsonl, parquet), folders, s3:// prefixes and single media URLs.

Each yields source rows with a deterministic source id, the original text and every other input
column kept as metadata.
"""

from __future__ import annotations

import csv
import json
import os
import re
from typing import Iterator

import fsspec
import pyarrow.parquet as pq

from vidcorpus.ids import normalise_uri, source_id
from vidcorpus.media import IMAGE_EXTS, VIDEO_EXTS
from vidcorpus.schemas import empty_row
from vidcorpus.storage import is_url, local_path, url_scheme

LIST_EXTS = {".txt", ".csv", ".jsonl", ".json", ".parquet"}
TEXT_COLUMNS = ("text", "caption")
MEDIA_EXTS = IMAGE_EXTS | VIDEO_EXTS


class InputError(ValueError):
    """An input that cannot be read at all (a missing list file, an unknown format)."""


def _ext(path: str) -> str:
    return os.path.splitext(path.split("?", 1)[0])[1].lower()


MAX_TEXT_CHARS = 4000  # alt-text longer than this is boilerplate or abuse; captions are far shorter
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean_text(text) -> tuple[str | None, list[str]]:
    """Input text as stored: control characters dropped, capped at MAX_TEXT_CHARS; what changed.

    (Invalid UTF-8 in a list file is already replaced by U+FFFD when the list is read.)
    """
    if text is None:
        return None, []
    text = str(text)
    edits = []
    stripped = _CONTROL.sub("", text)
    if stripped != text:
        edits.append("control_chars_removed")
    if len(stripped) > MAX_TEXT_CHARS:
        edits.append(f"truncated_from_{len(stripped)}")
        stripped = stripped[:MAX_TEXT_CHARS]
    return stripped.strip() or None, edits


def _source(url: str, text: str | None = None, meta: dict | None = None) -> dict:
    text, edits = clean_text(text)
    meta = dict(meta or {})
    if edits:
        meta["text_edits"] = edits
    uri = url if is_url(url) or url.startswith("file://") else normalise_uri(url)  # a URL is kept as written
    return empty_row(source_id=source_id(url), uri=uri,
                     text=text, meta_json=json.dumps(meta, sort_keys=True, default=str))


def _records_from_list(url: str) -> Iterator[dict]:
    ext = _ext(url)
    if ext == ".parquet":
        with fsspec.open(url, "rb") as f:
            yield from pq.read_table(f).to_pylist()
        return
    with fsspec.open(url, "rt", encoding="utf-8", errors="replace") as f:
        if ext == ".csv":
            yield from csv.DictReader(f)
        elif ext in (".jsonl", ".json"):
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    yield {"__malformed__": f"{url}:{n}: not valid JSON"}
                    continue
                yield rec if isinstance(rec, dict) else {"__malformed__": f"{url}:{n}: not an object"}
        else:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    yield {"url": line}


def _rows_from_list(url: str) -> Iterator[dict]:
    base = os.path.dirname(url) if not is_url(url) else url.rsplit("/", 1)[0]
    for rec in _records_from_list(url):
        if "__malformed__" in rec or not rec.get("url"):
            yield empty_row(source_id=None, uri=url, error_class="bad_input_row",
                            error=rec.get("__malformed__", f"{url}: row without a url: {str(rec)[:200]}"),
                            error_stage="read")
            continue
        media = str(rec.pop("url")).strip()
        if not is_url(media) and not os.path.isabs(local_path(media)):  # relative to the list, file:// too
            media = os.path.join(base, local_path(media))
        text = next((rec.pop(c) for c in TEXT_COLUMNS if rec.get(c)), None)
        rec.pop("caption", None)
        if text is not None and not isinstance(text, str):
            text = str(text)
        yield _source(media, text, rec)


def read_inputs(inputs: list[str]) -> list[dict]:
    """All source rows of all inputs, each source once (the first occurrence wins)."""
    rows: dict[str, dict] = {}
    bad: list[dict] = []
    for item in inputs:
        scheme = url_scheme(item)
        if scheme in ("http", "https") and _ext(item) not in LIST_EXTS:
            row = _source(item)  # a single media URL: the downloader finds out whether it exists
            rows.setdefault(row["source_id"], row)
            continue
        fs, path = fsspec.core.url_to_fs(item)
        if not fs.exists(path):
            raise InputError(f"input {item} does not exist")
        if fs.isdir(path):
            proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
            for p in sorted(fs.find(path)):
                if _ext(p) in MEDIA_EXTS:
                    url = p if proto in ("file", "local") else f"{proto}://{p}"
                    row = _source(url)
                    rows.setdefault(row["source_id"], row)
        elif _ext(item) in LIST_EXTS:
            for row in _rows_from_list(item):
                if row["source_id"] is None:
                    bad.append(row)
                else:
                    rows.setdefault(row["source_id"], row)
        else:
            row = _source(item)
            rows.setdefault(row["source_id"], row)
    return list(rows.values()) + bad
