"""Where bytes live: local paths and fsspec URLs, told apart one way, and written whole or not at all.

Every location vidcorpus stores is an absolute local path (optionally ``file://``) or an fsspec URL
(s3://, http(s)://, ...; ``vidcorpus/paths.py``). Modules ask this one module whether a location
is local and how to publish a file or a folder, instead of each testing ``"://" in x`` its own way
(``tests/test_storage.py`` greps the package for such copies):

- ``is_url`` / ``local_path`` / ``url_scheme``: the one locality test, the plain path of a local
  location, and the scheme of any location (``file`` for plain paths);
- ``absolute`` and ``join_url``: a local location made absolute, and a location under another one;
- ``is_local_fs``: the same question of an fsspec file system (LocalFileSystem names itself
  ``file`` or ``local``);
- ``write_atomic``: a whole file or none under its final name: locally through a unique temporary
  name, fsync of the file and of its folder, and a rename (a full disk, a kill or a power cut leaves
  no truncated file; concurrent writers do not share a temporary name); on object stores one PUT,
  which publishes whole (other remote file systems get fsspec's ``pipe_file``, whole only as far as
  they make it so);
- ``publishing``: the same local publication for writers that want a file name, not bytes
  (torch.save, PyAV, a tar stream); ``publish_dir`` for a folder written whole then renamed into
  place (a model, an export, a checkpoint);
- ``read_bytes``: a whole file, local or remote.

It imports nothing of vidcorpus, so any layer may use it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import fsspec


def is_url(location: str) -> bool:
    """True for ``scheme://...`` other than ``file://`` (s3://, gs://, http(s)://, ...)."""
    return "://" in location and not location.startswith("file://")


def local_path(location: str | os.PathLike) -> str:
    """The file-system path of a local location (``file://`` removed); refuses URLs."""
    location = os.fspath(location)
    if is_url(location):
        raise ValueError(f"{location} is not a local path")
    return location.removeprefix("file://")


def url_scheme(location: str) -> str:
    """The lower-case scheme as ``urlsplit`` reads it, ``file`` for a plain path: what a downloader
    and the report's domains branch on (a one-letter scheme is a Windows drive, so a path)."""
    scheme = urlsplit(location).scheme.lower()
    return scheme if len(scheme) > 1 else "file"


def absolute(location: str | os.PathLike | None) -> str | None:
    """``location`` with a local path made absolute (``~`` expanded, ``file://`` kept); URLs and
    None unchanged: a stored relative path would mean "wherever the writer ran"."""
    if location is None:
        return None
    text = os.fspath(location)
    if text == "" or is_url(text):
        return text
    path = os.path.abspath(os.path.expanduser(local_path(text)))
    return "file://" + path if text.startswith("file://") else path


def join_url(location: str, *parts: str) -> str:
    """``location/part/...`` with ``/`` whatever the store: fsspec URLs never take ``os.sep``."""
    return "/".join([location.rstrip("/"), *parts])


def is_local_fs(fs) -> bool:
    """True when an fsspec file system is the local one."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def part_name(path: str) -> str:
    """A temporary name beside ``path``, unique to this writer (process and call)."""
    return f"{path}.part-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def publishing(path: str | os.PathLike, fsync: bool = True, keep_extension: bool = False) -> Iterator[str]:
    """A temporary name beside the local ``path`` to write; renamed onto ``path`` when the block
    succeeds (fsynced: a power cut leaves the old file or the new), removed when it fails.
    ``keep_extension``: the name ends like ``path`` too, for writers that pick the format from it
    (PyAV); off by default, so a half-written ``x.tar`` never looks like a shard to a ``*.tar`` glob."""
    path = local_path(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    part = part_name(path) + (os.path.splitext(path)[1] if keep_extension else "")
    try:
        yield part
        if fsync:
            _fsync(part)
        os.replace(part, path)
        if fsync:  # the rename itself survives a power cut once its folder is on disk
            _fsync(folder)
    finally:
        if os.path.exists(part):
            os.remove(part)


@contextmanager
def publish_dir(final: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """A temporary folder (``.tmp-NAME-*``) beside the local folder ``final`` to fill; renamed onto
    ``final`` when the block succeeds, so readers never see half a model, export or checkpoint;
    removed when it fails. ``replace=False`` keeps a folder already there (another worker's
    identical build) and drops this one."""
    final = local_path(final).rstrip("/")
    parent = os.path.dirname(final) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(final)}-", dir=parent))
    try:
        yield tmp
        if os.path.exists(final):
            if not replace:
                return
            shutil.rmtree(final)
        try:
            os.replace(tmp, final)
        except OSError:  # a worker published between the check and the rename
            if replace or not os.path.isdir(final):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_atomic(url: str, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` at ``url`` whole or not at all (see the module docstring); parent folders made."""
    fs, path = fsspec.core.url_to_fs(url)
    if not is_local_fs(fs):
        parent = path.rsplit("/", 1)[0]
        if parent and parent != path:
            fs.makedirs(parent, exist_ok=True)  # folders where the store has them (no-op on most object stores)
        fs.pipe_file(path, data)
        return
    with publishing(path, fsync) as part, open(part, "wb") as f:
        f.write(data)


def read_bytes(location: str) -> bytes:
    """A whole file, local path or URL."""
    if not is_url(location):
        with open(local_path(location), "rb") as f:
            return f.read()
    with fsspec.open(location, "rb") as f:
        return f.read()
