"""Where bytes live: local paths and fsspec URLs, told apart one way, and written whole or not at all.

Every location vidcorpus stores is an absolute local path (optionally ``file://``) or an fsspec URL
(s3://, http(s)://, ...; ``vidcorpus/paths.py``). Modules ask this one module whether a location
is local and how to publish a file, instead of each testing ``"://" in x`` its own way:

- ``is_url`` / ``local_path``: the one locality test, and the plain path of a local location;
- ``is_local_fs``: the same question of an fsspec file system (LocalFileSystem names itself
  ``file`` or ``local``);
- ``write_atomic``: a whole file or none under its final name: locally through a unique temporary
  name, fsync of the file and of its folder, and a rename (a full disk, a kill or a power cut leaves
  no truncated file; concurrent writers do not share a temporary name); on object stores one PUT,
  which publishes whole (other remote file systems get fsspec's ``pipe_file``, whole only as far as
  they make it so);
- ``read_bytes``: a whole file, local or remote.

It imports nothing of vidcorpus, so any layer may use it.
"""

from __future__ import annotations

import os
import uuid

import fsspec


def is_url(location: str) -> bool:
    """True for ``scheme://...`` other than ``file://`` (s3://, gs://, http(s)://, ...)."""
    return "://" in location and not location.startswith("file://")


def local_path(location: str) -> str:
    """The file-system path of a local location (``file://`` removed); refuses URLs."""
    if is_url(location):
        raise ValueError(f"{location} is not a local path")
    return location.removeprefix("file://")


def is_local_fs(fs) -> bool:
    """True when an fsspec file system is the local one."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def part_name(path: str) -> str:
    """A temporary name beside ``path``, unique to this writer (process and call)."""
    return f"{path}.part-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def write_atomic(url: str, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` at ``url`` whole or not at all (see the module docstring); parent folders made."""
    fs, path = fsspec.core.url_to_fs(url)
    if not is_local_fs(fs):
        parent = path.rsplit("/", 1)[0]
        if parent and parent != path:
            fs.makedirs(parent, exist_ok=True)  # folders where the store has them (no-op on most object stores)
        fs.pipe_file(path, data)
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    part = part_name(path)
    try:
        with open(part, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(part, path)
        if fsync:  # the rename itself survives a power cut once its folder is on disk
            folder = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
    finally:
        if os.path.exists(part):
            os.remove(part)


def read_bytes(location: str) -> bytes:
    """A whole file, local path or URL."""
    if not is_url(location):
        with open(local_path(location), "rb") as f:
            return f.read()
    with fsspec.open(location, "rb") as f:
        return f.read()
