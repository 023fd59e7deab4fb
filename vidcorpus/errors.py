"""Error classes recorded in the catalog, so users can count failures by cause and retry a class."""

from __future__ import annotations

import errno
import socket


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
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "disk_full"
    module = type(exc).__module__ or ""
    if module.startswith("av"):
        return "decode_error"
    if isinstance(exc, MemoryError):
        return "out_of_memory"
    return "internal:" + name
