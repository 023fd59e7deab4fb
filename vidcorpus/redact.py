"""Keep credentials out of everything vidcorpus stores or prints: the catalog, run configs, reports, logs.

Input URLs may carry secrets: ``user:password@host`` userinfo, or query parameters of presigned
and token URLs (``X-Amz-Signature``, ``X-Amz-Credential``, ``sig``, ``token``, ``key``...). The
fetcher needs them; nothing else does. ``redact_url`` masks them, ``redact_text`` does so for
every URL inside a message (an exception text, a JSON config), and ``identity_url`` drops them,
together with the per-signing parameters (``X-Amz-Date``, ``Expires``...), so that a source keeps
its id when its URL is re-signed.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus, urlsplit, urlunsplit

MASK = "REDACTED"
_SECRET = re.compile(r"sig|signature|token|credential|secret|passw|pwd|api[-_]?key|^key$|auth|session|policy",
                     re.IGNORECASE)
_SIGNING = re.compile(r"^(x-amz-|x-goog-|expires$|se$|sp$|sv$|sr$|st$|skoid|sktid|skt$|ske$|sks$|skv$)",
                      re.IGNORECASE)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>;,]+")


def _is_secret(name: str) -> bool:
    return bool(_SECRET.search(name))


def _netloc_without_userinfo(parts) -> str:
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{host}:{parts.port}" if parts.port else host


def redact_url(url: str) -> str:
    """The URL with userinfo and secret query values masked (shape kept, so it still reads well)."""
    try:
        parts = urlsplit(url)
        if not parts.scheme or not parts.netloc:
            return url
        netloc = parts.netloc
        if "@" in netloc:
            netloc = f"{MASK}@{_netloc_without_userinfo(parts)}"
        query = "&".join(_mask_segment(seg) for seg in parts.query.split("&")) if parts.query else ""
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:  # not parseable as a URL (a bad port, say): mask the whole authority
        return re.sub(r"//[^/]*", f"//{MASK}", url, count=1)


def _mask_segment(seg: str) -> str:
    name = seg.split("=", 1)[0]
    return f"{name}={MASK}" if _is_secret(unquote_plus(name)) else seg


def redact_text(text: str | None) -> str | None:
    """Every URL inside ``text`` redacted (exception messages often quote the URL they fetched)."""
    if not text:
        return text
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


def identity_url(url: str) -> str:
    """The URL without userinfo, secrets or per-signing parameters: what identifies the object.

    Other query parameters keep their exact spelling (ids of earlier runs stay the same)."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return url
    kept = [seg for seg in parts.query.split("&") if seg and not _drop(unquote_plus(seg.split("=", 1)[0]))]
    return urlunsplit((parts.scheme, _netloc_without_userinfo(parts), parts.path, "&".join(kept), parts.fragment))


def _drop(name: str) -> bool:
    return _is_secret(name) or bool(_SIGNING.match(name))
