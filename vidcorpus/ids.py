"""Deterministic identifiers, so that reruns upsert the same rows instead of adding new ones."""

from __future__ import annotations

import hashlib
import os
import re
from urllib.parse import urlsplit, urlunsplit

from ulid import ULID

from vidcorpus.redact import identity_url

_DEFAULT_PORTS = {"http": 80, "https": 443}
_SAFE_KEY = re.compile(r"^[0-9a-z-]+$")


def normalise_uri(uri: str) -> str:
    """Lower-case scheme and host, drop default ports, fragments, userinfo, secret and signing
    query parameters (a re-signed URL is the same source); local paths become absolute."""
    uri = uri.strip()
    parts = urlsplit(uri)
    if not parts.scheme or len(parts.scheme) == 1:  # plain path (or a Windows drive letter)
        return "file://" + os.path.abspath(os.path.expanduser(uri))
    scheme = parts.scheme.lower()
    if scheme == "file":
        return "file://" + parts.path
    parts = urlsplit(identity_url(uri))  # credentials and signing parameters are not identity
    host = (parts.hostname or "").lower()
    port = parts.port
    netloc = host
    if port and _DEFAULT_PORTS.get(scheme) != port:
        netloc = f"{netloc}:{port}"
    return urlunsplit((scheme, netloc, parts.path or "/" if scheme in _DEFAULT_PORTS else parts.path, parts.query, ""))


def source_id(uri: str) -> str:
    """First 16 hex digits of sha256 of the normalised URI."""
    return hashlib.sha256(normalise_uri(uri).encode()).hexdigest()[:16]


def clip_id(source: str, first_frame: int, last_frame: int) -> str:
    """A shot of a video: source id plus its inclusive frame range."""
    return f"{source}-{first_frame:07d}-{last_frame:07d}"


def image_clip_id(source: str) -> str:
    """An image is a one-frame clip of its own."""
    return f"{source}-img"


def is_safe_key(key: str) -> bool:
    """WebDataset splits keys at the first dot: ids hold only [0-9a-z-]."""
    return bool(_SAFE_KEY.match(key))


def new_run_id() -> str:
    """Time-ordered run id (lower-case ULID)."""
    return str(ULID()).lower()


def content_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
