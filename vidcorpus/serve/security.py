"""The server's safety rules: where it may bind, who may call it, which ids and paths it accepts.

- Binding to anything but the loopback interface needs a token (``--token`` or
  ``VIDCORPUS_SERVE_TOKEN``); with a token every request must carry it (``?token=`` once, which
  sets a cookie, or ``Authorization: Bearer``).
- On loopback, only loopback Host headers are answered (a DNS-rebinding page cannot reach it).
- Writes (labels) need a custom header, which a cross-site form or image cannot send.
- Clip, shard and source ids must look like the ids vidcorpus makes (``vidcorpus/ids.py``); a
  file is served only when the catalog names it and it lies inside an allowed root (the workdir,
  the shard root, the catalog's folder), after resolving symlinks.
"""

from __future__ import annotations

import hmac
import os
import re
from vidcorpus.storage import is_url, local_path

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
ID_PATTERN = re.compile(r"[0-9a-z][0-9a-z-]{0,127}")
"""Clip, source and shard ids: lower-case letters, digits and dashes (WebDataset keys)."""
RECIPE_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,64}@[A-Za-z0-9_.\-]{1,32}")
WRITE_HEADER = "x-vidcorpus"


class Refused(ValueError):
    """A request (or a server option) that the rules above refuse; the message says why."""


def check_bind(host: str, token: str | None) -> None:
    """A non-loopback bind without a token is refused before anything starts."""
    if host not in LOOPBACK and not token:
        raise Refused(f"binding to {host} exposes the catalog beyond this machine: pass --token "
                      "(or set VIDCORPUS_SERVE_TOKEN), or bind to 127.0.0.1")


def check_id(value: str, what: str = "clip id") -> str:
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise Refused(f"not a valid {what}: {value[:80]!r}" if isinstance(value, str) else f"not a valid {what}")
    return value


def check_recipe_id(value: str) -> str:
    if not RECIPE_PATTERN.fullmatch(value or ""):
        raise Refused(f"not a recipe id (name@version): {value[:80]!r}")
    return value


def token_ok(expected: str | None, given: str | None) -> bool:
    if not expected:
        return True
    return bool(given) and hmac.compare_digest(expected.encode(), given.encode())


def host_ok(bound: str, host_header: str | None) -> bool:
    """On loopback only loopback names may address the server (DNS rebinding)."""
    if bound not in LOOPBACK:
        return True
    if not host_header:
        return False
    name = host_header.rsplit(":", 1)[0] if not host_header.startswith("[") else host_header[1:].split("]")[0]
    return name in LOOPBACK


def inside_roots(location: str, roots: list[str]) -> bool:
    """True when ``location`` (a local path or URL from the catalog) lies inside one of ``roots``."""
    if is_url(location):
        return any(r and is_url(r) and location.startswith(r.rstrip("/") + "/") for r in roots)
    real = os.path.realpath(local_path(location))
    for root in roots:
        if not root or is_url(root):
            continue
        base = os.path.realpath(local_path(root))
        if real == base or real.startswith(base.rstrip(os.sep) + os.sep):
            return True
    return False
