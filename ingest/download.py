"""Fetch source bytes to staging (http(s) with requests; s3:// and local files through fsspec).

Local files are not copied: they are hashed in place and read from where they are. Remote files
land at ``{workdir}/staging/sources/{source_id}{ext}``. Failures become error classes
(dns, connect, timeout, http_4xx, http_5xx, too_large, not_media, opted_out, blocked_address).
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import time
from typing import ClassVar
from urllib.parse import urljoin, urlsplit

import fsspec

from vidcorpus.errors import DownloadError, NotMediaError
from vidcorpus.media import sniff_media_type
from vidcorpus.stage import Resources, Stage

ALLOWED_SCHEMES = {"http", "https", "s3", "file", "gs", "gcs", "az", "abfs", "memory"}
MAX_REDIRECTS = 5
OPT_OUT_VALUES = {"noai", "noimageai"}


def check_destination(url: str, allow_private: bool) -> None:
    """Refuse hosts that resolve to loopback, private or link-local addresses (SSRF guard)."""
    host = urlsplit(url).hostname
    if not host:
        raise DownloadError(f"no host in {url}", "bad_url")
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as e:
        raise DownloadError(f"cannot resolve {host}: {e}", "dns") from e
    if allow_private:
        return
    for info in infos:
        ip = ipaddress.ip_address(info[4][0])
        if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast:
            raise DownloadError(f"{host} resolves to {ip}, a non-public address", "blocked_address")


def _http_get(url: str, cfg) -> tuple[bytes, dict]:
    import requests

    session = requests.Session()
    headers = {"User-Agent": cfg.user_agent}
    attempt = 0
    while True:
        current, hops = url, 0
        try:
            while True:
                check_destination(current, cfg.allow_private_addresses)
                resp = session.get(current, headers=headers, timeout=cfg.timeout_s, stream=True, allow_redirects=False)
                if resp.is_redirect or resp.status_code in (301, 302, 303, 307, 308):
                    hops += 1
                    if hops > MAX_REDIRECTS:
                        raise DownloadError(f"more than {MAX_REDIRECTS} redirects", "too_many_redirects")
                    current = urljoin(current, resp.headers.get("Location", ""))
                    resp.close()
                    continue
                break
            if 400 <= resp.status_code < 500:
                raise DownloadError(f"HTTP {resp.status_code} for {current}", "http_4xx")
            if resp.status_code >= 500:
                raise DownloadError(f"HTTP {resp.status_code} for {current}", "http_5xx")
            if cfg.respect_opt_outs:
                tags = {t.strip().lower() for t in resp.headers.get("X-Robots-Tag", "").replace(";", ",").split(",")}
                if tags & OPT_OUT_VALUES:
                    raise DownloadError(f"X-Robots-Tag opts out: {sorted(tags & OPT_OUT_VALUES)}", "opted_out")
            declared = int(resp.headers.get("Content-Length") or 0)
            if declared > cfg.max_bytes:
                raise DownloadError(f"{declared} bytes declared, limit {cfg.max_bytes}", "too_large")
            chunks, size = [], 0
            for chunk in resp.iter_content(1 << 16):
                size += len(chunk)
                if size > cfg.max_bytes:
                    raise DownloadError(f"more than {cfg.max_bytes} bytes", "too_large")
                chunks.append(chunk)
            return b"".join(chunks), dict(resp.headers)
        except DownloadError as e:
            if e.error_class != "http_5xx" or attempt >= cfg.retries:
                raise
        except (requests.Timeout, requests.ConnectionError) as e:
            if attempt >= cfg.retries:
                cls = "timeout" if isinstance(e, requests.Timeout) else "connect"
                raise DownloadError(f"{type(e).__name__}: {e}", cls) from e
        attempt += 1
        time.sleep(min(0.2 * 2**attempt, 5.0))


class DownloadStage(Stage):
    """Bytes in staging (or hashed in place), sha256 and sniffed media type on the row."""

    name: ClassVar[str] = "download"
    resources: ClassVar[Resources] = Resources(cpus=0.25)

    def process_row(self, row: dict) -> dict:
        uri = row["uri"]
        scheme = urlsplit(uri).scheme.lower() or "file"
        if scheme not in ALLOWED_SCHEMES:
            raise DownloadError(f"scheme {scheme!r} is not allowed", "bad_scheme")
        if scheme in ("http", "https"):
            data, _headers = _http_get(uri, self.config.ingest)
            return self._stage_bytes(row, data)
        fs, path = fsspec.core.url_to_fs(uri)
        size = fs.size(path)
        if size is not None and size > self.config.ingest.max_bytes:
            raise DownloadError(f"{size} bytes, limit {self.config.ingest.max_bytes}", "too_large")
        if scheme == "file":
            return self._hash_in_place(row, fs, path, uri)
        with fs.open(path, "rb") as f:
            return self._stage_bytes(row, f.read())

    def _classify(self, head: bytes, uri: str) -> tuple[str, str]:
        kind = sniff_media_type(head)
        if kind is None:
            raise NotMediaError(f"{uri}: content is not a supported video or image (magic {head[:8]!r})")
        return kind

    def _hash_in_place(self, row: dict, fs, path: str, uri: str) -> dict:
        h, size = hashlib.sha256(), 0
        with fs.open(path, "rb") as f:
            head = f.read(64)
            if not head:
                raise NotMediaError(f"{uri}: empty file", "empty_file")
            media_type, _ext = self._classify(head, uri)
            h.update(head)
            size += len(head)
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
                size += len(chunk)
        return dict(row, source_path=path, sha256=h.hexdigest(), bytes=size, media_type=media_type)

    def _stage_bytes(self, row: dict, data: bytes) -> dict:
        if not data:
            raise NotMediaError(f"{row['uri']}: empty file", "empty_file")
        media_type, ext = self._classify(data[:64], row["uri"])
        url = self.config.url("staging", "sources", f"{row['source_id']}{ext}")
        fs, path = fsspec.core.url_to_fs(url)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{path}.part"
        with fs.open(tmp, "wb") as f:
            f.write(data)
        fs.mv(tmp, path)
        return dict(row, source_path=url, sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), media_type=media_type)
