"""Clip bytes for the browser, with HTTP range requests: from an extracted file or a shard's tar member.

A video element seeks by range requests, so every source is a byte window ``(url, offset, size)``
served in ranges. A shard is used only after its whole file matched the sha256 the catalog
recorded for it (checked once per shard file and remembered while its size and mtime stay the
same); the member's window comes from the tar headers, read once per verified shard.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
import threading
from dataclasses import dataclass
from typing import Iterator

import fsspec

from vidcorpus.storage import is_url, local_path

CHUNK = 256 * 1024
MEDIA_TYPES = {"mp4": "video/mp4", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp",
               "png": "image/png", "webm": "video/webm"}


class MediaError(Exception):
    """The bytes cannot be served (missing file, shard checksum mismatch); the message says why."""


@dataclass(frozen=True)
class Window:
    url: str
    offset: int
    size: int
    media_type: str


def _fs(url: str):
    return fsspec.core.url_to_fs(url if is_url(url) else local_path(url))


def _stamp(url: str) -> tuple:
    fs, path = _fs(url)
    info = fs.info(path)
    return info.get("size"), info.get("mtime") or info.get("LastModified") or info.get("ETag")


def file_window(url: str) -> Window:
    try:
        fs, path = _fs(url)
        size = fs.size(path)
    except (FileNotFoundError, OSError) as e:
        raise MediaError(f"clip file missing: {url}") from e
    ext = url.rsplit(".", 1)[-1].lower()
    return Window(url, 0, int(size), MEDIA_TYPES.get(ext, "application/octet-stream"))


class ShardIndex:
    """Verified shards and their member windows, remembered per (url, size, mtime)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._members: dict[tuple, dict[str, tuple[int, int]]] = {}
        self.verified = 0  # shards hashed (tests check it is once per shard)

    def member(self, shard_url: str, sha256: str, name: str) -> Window:
        try:
            key = (shard_url, *_stamp(shard_url))
        except (FileNotFoundError, OSError) as e:
            raise MediaError(f"shard missing: {shard_url}") from e
        with self._lock:
            members = self._members.get(key)
            if members is None:
                members = self._verify_and_index(shard_url, sha256)
                self._members[key] = members
        if name not in members:
            raise MediaError(f"shard {shard_url} holds no member {name}")
        offset, size = members[name]
        ext = name.rsplit(".", 1)[-1].lower()
        return Window(shard_url, offset, size, MEDIA_TYPES.get(ext, "application/octet-stream"))

    def _verify_and_index(self, url: str, sha256: str) -> dict[str, tuple[int, int]]:
        fs, path = _fs(url)
        digest = hashlib.sha256()
        with fs.open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        self.verified += 1
        if digest.hexdigest() != sha256:
            raise MediaError(f"shard {url} does not match its catalog checksum (sha256 {digest.hexdigest()[:12]}, "
                             f"catalog {str(sha256)[:12]}): not served")
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            return {m.name: (m.offset_data, m.size) for m in tar if m.isfile()}


_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a single ``bytes=`` range; None for the whole; ValueError if unsatisfiable."""
    if not header:
        return None
    m = _RANGE.fullmatch(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        raise ValueError(header)
    if m.group(1):
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else size - 1
    else:  # suffix: the last N bytes
        start, end = max(0, size - int(m.group(2))), size - 1
    end = min(end, size - 1)
    if start > end or start >= size:
        raise ValueError(header)
    return start, end


def read_window(window: Window, start: int, end: int) -> Iterator[bytes]:
    """Bytes ``start..end`` (inclusive) of the window, in chunks."""
    fs, path = _fs(window.url)
    with fs.open(path, "rb") as f:
        f.seek(window.offset + start)
        left = end - start + 1
        while left > 0:
            data = f.read(min(CHUNK, left))
            if not data:
                break
            left -= len(data)
            yield data
