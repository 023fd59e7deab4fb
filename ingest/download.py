"""Fetch source bytes to staging (http(s) with requests; s3:// and other remote files through fsspec).

Local files are not copied: they are hashed in place and read from where they are. Remote files
stream (never held whole in memory) to ``{workdir}/staging/sources/{source_id}{ext}`` through a
``.part`` file, hashed on the way. Every failure becomes one of ``ERROR_CLASSES``.

Concurrency: one worker downloads ``ingest.threads`` sources at a time, and at most
``ingest.max_per_host`` requests go to one host at once. That bound is a per-process semaphore
shared by the threads of one worker; across Ray workers it is per worker (N workers may send up to
N x max_per_host requests to one host).

Safety: only ``ALLOWED_SCHEMES``; the host of every request (the first and each redirect) is
resolved and refused when any address is private, loopback, link-local, reserved or multicast,
unless ``ingest.allow_private_addresses``. The connection then resolves the name again, so a DNS
server that answers differently the second time (rebinding) is not covered.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import ClassVar, Iterator
from urllib.parse import urljoin, urlsplit

import fsspec
import requests
import urllib3

from vidcorpus.errors import DownloadError, NotMediaError
from vidcorpus.ids import is_safe_key
from vidcorpus.media import SNIFF_BYTES, sniff_media_type
from vidcorpus.stage import Resources, Stage
from vidcorpus.storage import url_scheme

ALLOWED_SCHEMES = {"http", "https", "s3", "file", "gs", "gcs", "az", "abfs", "memory"}
OPT_OUT_VALUES = {"noai", "noimageai"}
CHUNK = 1 << 16
# What a download (or probe) failure is recorded as; stable names users filter and retry by.
ERROR_CLASSES = (
    "dns", "connect", "timeout", "http_4xx", "http_5xx", "too_large", "not_media", "opted_out",
    "decode_error", "unsupported_codec", "hash_mismatch", "blocked_address",
    # rarer ones: malformed input, policy and empty bodies
    "bad_url", "bad_scheme", "too_many_redirects", "empty_file", "not_found", "too_long", "bad_input",
)
RETRYABLE = {"http_5xx", "timeout", "connect"}


class HostLimiter:
    """At most ``limit`` concurrent holders per host, shared by the threads of one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sems: dict[tuple[str, int], threading.BoundedSemaphore] = {}

    @contextmanager
    def slot(self, host: str, limit: int) -> Iterator[None]:
        key = (host.lower(), max(1, limit))
        with self._lock:
            sem = self._sems.setdefault(key, threading.BoundedSemaphore(key[1]))
        with sem:
            yield


HOST_LIMITER = HostLimiter()


def check_destination(url: str, allow_private: bool) -> None:
    """Refuse hosts that resolve to loopback, private or link-local addresses (SSRF guard).

    Checks what the name RESOLVES to (``localhost`` or any name mapped to 10.x is refused), not
    only literal IPs; every address of the name must be public.
    """
    host = urlsplit(url).hostname
    if not host:
        raise DownloadError(f"no host in {url}", "bad_url")
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as e:
        raise DownloadError(f"cannot resolve {host}: {e}", "dns") from e
    if allow_private:
        return
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if getattr(ip, "ipv4_mapped", None):
            ip = ip.ipv4_mapped
        if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast \
                or ip.is_unspecified:
            raise DownloadError(f"{host} resolves to {ip}, a non-public address", "blocked_address")


def expected_sha256(row: dict) -> str | None:
    """The hash the input list promised for this source (a ``sha256`` column), lower-case hex."""
    try:
        meta = json.loads(row.get("meta_json") or "{}")
    except json.JSONDecodeError:
        return None
    value = meta.get("sha256") if isinstance(meta, dict) else None
    if not value:
        return None
    return str(value).strip().lower().removeprefix("sha256:")


class _Sink:
    """Streams chunks into a file while hashing, counting and keeping the head for sniffing."""

    def __init__(self, fs, path: str, max_bytes: int, deadline: float):
        self.fs, self.path, self.max_bytes, self.deadline = fs, path, max_bytes, deadline
        self.reset()

    def reset(self) -> None:
        self.hash, self.size, self.head = hashlib.sha256(), 0, b""

    def write_all(self, chunks) -> None:
        self.reset()
        with self.fs.open(self.path, "wb") as f:
            for chunk in chunks:
                if not chunk:
                    continue
                self.size += len(chunk)
                if self.size > self.max_bytes:
                    raise DownloadError(f"more than {self.max_bytes} bytes", "too_large")
                if time.monotonic() > self.deadline:
                    raise DownloadError("download exceeded ingest.total_timeout_s", "timeout")
                if len(self.head) < SNIFF_BYTES:
                    self.head += chunk[: SNIFF_BYTES - len(self.head)]
                self.hash.update(chunk)
                f.write(chunk)


def _requests_error_class(exc: Exception) -> str:
    text = f"{exc!r} {exc.args[0]!r}" if exc.args else repr(exc)
    if isinstance(exc, requests.Timeout) or "ReadTimeoutError" in text or "timed out" in text:
        return "timeout"
    if "NameResolutionError" in text or "Name or service not known" in text:
        return "dns"
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema)):
        return "bad_url"
    return "connect"


def _opted_out(headers) -> set[str]:
    """Opt-out directives of X-Robots-Tag (``noai``, ``bot: noimageai``, several headers merged)."""
    found: set[str] = set()
    for part in headers.get("X-Robots-Tag", "").replace(";", ",").split(","):
        token = part.rsplit(":", 1)[-1].strip().lower()
        if token in OPT_OUT_VALUES:
            found.add(token)
    return found


def _arrived(raw) -> Iterator[bytes]:
    """Body bytes as they arrive (read1), so the deadline is checked during a slow drip too;
    a full-size read would wait for 64 KiB, one dripped byte at a time."""
    while True:
        chunk = raw.read1(CHUNK, decode_content=True)
        if not chunk:
            return
        yield chunk


def _http_once(session, url: str, cfg, sink: _Sink) -> None:
    """One attempt: follow redirects (each hop checked and host-bounded), stream the body to sink."""
    current = url
    for _hop in range(cfg.max_redirects + 1):
        if urlsplit(current).scheme.lower() not in ("http", "https"):  # a redirect to file:// or gopher://
            raise DownloadError(f"redirect to scheme {urlsplit(current).scheme!r} refused", "bad_scheme")
        check_destination(current, cfg.allow_private_addresses)
        host = urlsplit(current).hostname or ""
        with HOST_LIMITER.slot(host, cfg.max_per_host):
            resp = session.get(current, headers={"User-Agent": cfg.user_agent}, stream=True,
                               allow_redirects=False, timeout=(cfg.connect_timeout_s, cfg.read_timeout_s))
            with resp:
                if resp.status_code in (301, 302, 303, 307, 308):
                    location = resp.headers.get("Location")
                    if not location:
                        raise DownloadError(f"HTTP {resp.status_code} without Location from {current}", "http_5xx")
                    current = urljoin(current, location)
                    continue
                if 400 <= resp.status_code < 500:
                    raise DownloadError(f"HTTP {resp.status_code} for {current}", "http_4xx")
                if resp.status_code >= 500:
                    raise DownloadError(f"HTTP {resp.status_code} for {current}", "http_5xx")
                if cfg.respect_opt_outs and (tags := _opted_out(resp.headers)):
                    raise DownloadError(f"X-Robots-Tag opts out: {sorted(tags)}", "opted_out")
                declared = resp.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > cfg.max_bytes:
                    raise DownloadError(f"{declared} bytes declared, limit {cfg.max_bytes}", "too_large")
                sink.write_all(_arrived(resp.raw))
                return
    raise DownloadError(f"more than {cfg.max_redirects} redirects from {url}", "too_many_redirects")


def http_download(url: str, cfg, sink: _Sink, sleep=time.sleep) -> None:
    """Download with retries and exponential backoff on 5xx, timeouts and resets; none on 4xx."""
    attempt = 0
    with requests.Session() as session:
        session.trust_env = False  # proxies from the environment would bypass the address checks
        while True:
            try:
                _http_once(session, url, cfg, sink)
                return
            except DownloadError as e:
                error = e
            except (requests.RequestException, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as e:
                error = DownloadError(f"{type(e).__name__}: {e}", _requests_error_class(e))
                error.__cause__ = e
            total_expired = time.monotonic() > sink.deadline
            if error.error_class not in RETRYABLE or attempt >= cfg.retries or total_expired:
                raise error
            attempt += 1
            sleep(min(cfg.backoff_s * 2 ** (attempt - 1), 30.0))


class DownloadStage(Stage):
    """Bytes in staging (or hashed in place), sha256 and sniffed media type on the row."""

    name: ClassVar[str] = "download"
    resources: ClassVar[Resources] = Resources(cpus=0.25)
    # one task per source block: the runner sizes those blocks for the cores (pipeline.build_dataset)
    whole_blocks: ClassVar[bool] = True

    def process_rows(self, rows: list[dict]) -> list[dict]:
        """Download several rows at once (I/O bound); the per-host bound keeps hosts polite."""
        threads = max(1, min(self.config.ingest.threads, len(rows)))
        if threads == 1:
            return super().process_rows(rows)
        with ThreadPoolExecutor(threads, thread_name_prefix="download") as pool:
            results = list(pool.map(lambda r: self.safe_call(self.process_row, r), rows))
        return [r for rs in results for r in rs]

    def process_row(self, row: dict) -> dict:
        uri = row["uri"]
        if not is_safe_key(str(row.get("source_id"))):  # it names the staging file: never a path from input
            raise DownloadError(f"source id {row.get('source_id')!r} is not a safe key", "bad_input")
        scheme = url_scheme(uri)
        if scheme not in ALLOWED_SCHEMES:
            raise DownloadError(f"scheme {scheme!r} is not allowed", "bad_scheme")
        cfg = self.config.ingest
        if scheme == "file":
            fs, path = fsspec.core.url_to_fs(uri)
            return self._hash_in_place(row, fs, path, uri)
        tmp_url = self.config.url("staging", "sources", f"{row['source_id']}.part")
        fs, tmp = fsspec.core.url_to_fs(tmp_url)
        fs.makedirs(tmp.rsplit("/", 1)[0], exist_ok=True)
        sink = _Sink(fs, tmp, cfg.max_bytes, time.monotonic() + cfg.total_timeout_s)
        try:
            if scheme in ("http", "https"):
                http_download(uri, cfg, sink)
            else:
                src_fs, src = fsspec.core.url_to_fs(uri)
                size = src_fs.size(src)
                if size is not None and size > cfg.max_bytes:
                    raise DownloadError(f"{size} bytes, limit {cfg.max_bytes}", "too_large")
                with src_fs.open(src, "rb") as f:
                    sink.write_all(iter(lambda: f.read(1 << 20), b""))
            return self._publish(row, fs, tmp, sink)
        finally:
            if fs.exists(tmp):
                fs.rm(tmp)

    def _classify(self, head: bytes, uri: str) -> tuple[str, str]:
        if not head:
            raise NotMediaError(f"{uri}: empty file", "empty_file")
        kind = sniff_media_type(head)
        if kind is None:
            raise NotMediaError(f"{uri}: content is not a supported video or image (magic {head[:8]!r})")
        return kind

    @staticmethod
    def _verify(row: dict, digest: str) -> None:
        want = expected_sha256(row)
        if want and want != digest:
            raise DownloadError(f"sha256 {digest} differs from the expected {want}", "hash_mismatch")

    def _hash_in_place(self, row: dict, fs, path: str, uri: str) -> dict:
        size = fs.size(path)
        if size is not None and size > self.config.ingest.max_bytes:
            raise DownloadError(f"{size} bytes, limit {self.config.ingest.max_bytes}", "too_large")
        h, size = hashlib.sha256(), 0
        with fs.open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
            media_type, _ext = self._classify(head, uri)
            h.update(head)
            size += len(head)
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
                size += len(chunk)
        self._verify(row, h.hexdigest())
        return dict(row, source_path=path, sha256=h.hexdigest(), bytes=size, media_type=media_type)

    def _publish(self, row: dict, fs, tmp: str, sink: _Sink) -> dict:
        media_type, ext = self._classify(sink.head, row["uri"])
        digest = sink.hash.hexdigest()
        self._verify(row, digest)
        url = self.config.url("staging", "sources", f"{row['source_id']}{ext}")
        fs.mv(tmp, fsspec.core.url_to_fs(url)[1])
        return dict(row, source_path=url, sha256=digest, bytes=sink.size, media_type=media_type)
