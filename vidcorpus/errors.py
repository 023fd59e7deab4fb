"""Error classes recorded in the catalog, so users can count failures by cause and retry a class."""

from __future__ import annotations

import errno
import socket


# Every error class a failure row can carry (`vidcorpus catalog failures`, `ingest --retry-failed
# --error-class`), with what it means; `ingest --help` lists these. A test reads the code for the
# classes it raises and fails on one missing here, so the list cannot drift. Unexpected exceptions
# are recorded as ``internal:<ExceptionName>``.
ERROR_CLASSES: dict[str, str] = {
    "bad_input_row": "a list row without a usable url",
    "bad_input": "a source id that is not a safe key",
    "bad_url": "a URL without a host, or malformed",
    "bad_scheme": "a URL scheme (or redirect target) that is not allowed",
    "dns": "the host name does not resolve",
    "connect": "the connection failed",
    "timeout": "the server was too slow or the download took too long",
    "blocked_address": "the host resolves to a non-public address",
    "http_4xx": "the server refused (HTTP 4xx)",
    "http_5xx": "the server failed (HTTP 5xx)",
    "too_many_redirects": "more redirects than ingest.max_redirects",
    "opted_out": "X-Robots-Tag opts out of AI use",
    "too_large": "more bytes or pixels than the limits",
    "too_long": "longer than ingest.max_duration_s",
    "empty_file": "a file of 0 bytes",
    "not_found": "a local or remote file that is not there",
    "hash_mismatch": "the content differs from the expected sha256",
    "download": "any other download failure",
    "not_media": "no decodable video or image",
    "decode_error": "the media does not decode",
    "unsupported_codec": "no decoder for the codec",
    "disk_full": "the store ran out of space",
    "out_of_memory": "a worker ran out of memory",
    "error": "any other recorded error",
}


class VidcorpusError(Exception):
    """Base of errors that carry their own catalog error class."""

    error_class = "error"

    def __init__(self, message: str, error_class: str | None = None):
        super().__init__(message)
        if error_class:
            self.error_class = error_class


class DownloadError(VidcorpusError):
    error_class = "download"


class NotMediaError(VidcorpusError):
    error_class = "not_media"


class DecodeError(VidcorpusError):
    error_class = "decode_error"


class StorageFullError(OSError):
    """The staging or shard store ran out of space (ENOSPC/EDQUOT): a job-level error, not a bad row.

    Stages raise it instead of recording a failure row (every later source would fail the same
    way); nothing partial is published, and a rerun once there is space processes exactly the
    sources the catalog does not have as done.
    """


STORAGE_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def storage_full(exc: BaseException, where: str = "") -> StorageFullError | None:
    """A StorageFullError for an out-of-space OSError (anywhere in its cause chain), else None."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, StorageFullError):
            return exc
        if isinstance(exc, OSError) and exc.errno in STORAGE_FULL_ERRNOS:
            path = exc.filename or where
            err = StorageFullError(exc.errno, f"no space left on the store{f' writing {path}' if path else ''}: "
                                   f"{exc.strerror or exc}. Nothing partial was published; free space and run "
                                   "again (sources already done are skipped)")
            return err
        # Ray's RayTaskError keeps the worker's exception as .cause
        exc, seen = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__, seen + 1
    return None


class ModelNotAvailable(RuntimeError):
    """A production model's weights are missing and cannot be fetched; the message names the fix."""


def classify_error(exc: BaseException) -> str:
    """Map an exception to a short, stable error class."""
    if isinstance(exc, VidcorpusError):
        return exc.error_class
    name = type(exc).__name__
    if isinstance(exc, (socket.timeout, TimeoutError)) or "Timeout" in name:
        return "timeout"
    if isinstance(exc, socket.gaierror):
        return "dns"
    if isinstance(exc, ConnectionError) or "ConnectionError" in name:
        return "connect"
    if isinstance(exc, FileNotFoundError):
        return "not_found"
    if isinstance(exc, OSError) and exc.errno in STORAGE_FULL_ERRNOS:
        return "disk_full"
    module = type(exc).__module__ or ""
    if module.startswith("av"):
        return "decode_error"
    if isinstance(exc, MemoryError):
        return "out_of_memory"
    return "internal:" + name
