"""Pack clips into WebDataset tar shards and publish each one atomically.

A shard is streamed once, straight to its destination, through a hashing wrapper (so the bytes
are never read back to checksum them), and becomes visible in one step only when it is whole:
locally it is written as ``{name}.part-*`` beside its final name and renamed; on S3 it is a
multipart upload completed only at the end (``autocommit=False``), aborted on error. A writer
killed mid-shard therefore leaves no visible shard; the driver commits a shard's catalog rows only
after it is published.

Shard ids are derived from the bucket, the member ids and the caption version, and a published
shard is never overwritten: writing the same clips again finds the shard already there and
returns its manifest (rerun after a crash between publish and catalog commit), so shards are
immutable and never duplicated. Tar members carry a fixed mtime, so the same inputs give the
same bytes. Tars are written by webdataset's TarWriter (see ``_tar_writer_class``) and read back by
webdataset.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import io
import json
import os
import queue
import tarfile
import threading
from typing import BinaryIO, Iterable

import fsspec
from PIL import Image

from vidcorpus.errors import storage_full
from vidcorpus.ids import is_safe_key
from vidcorpus.shards.buckets import bucket_of
from vidcorpus.storage import is_local_fs, publishing, read_bytes

TAR_MTIME = 0.0  # fixed member times: identical inputs give identical shard bytes (and sha256)


def shard_id_for(bucket: str, clip_ids: Iterable[str], caption_version: str = "") -> str:
    """Content address of a shard: its bucket, members and the caption version written as txt."""
    text = "\n".join(sorted(clip_ids)) + f"\ncaption_version={caption_version}"
    return f"{bucket}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def plan_shards(clips: list[dict], max_samples: int, max_bytes: int) -> list[tuple[str, list[dict]]]:
    """Group clips by bucket, then cut each bucket into shards of bounded samples and bytes."""
    by_bucket: dict[str, list[dict]] = {}
    for c in sorted(clips, key=lambda c: c["clip_id"]):
        by_bucket.setdefault(bucket_of(c), []).append(c)
    plans = []
    for bucket, members in sorted(by_bucket.items()):
        current: list[dict] = []
        size = 0
        for c in members:
            est = _file_size(c["clip_path"]) + _file_size(c.get("first_frame_path"))
            if current and (len(current) >= max_samples or size + est > max_bytes):
                plans.append((bucket, current))
                current, size = [], 0
            current.append(c)
            size += est
        if current:
            plans.append((bucket, current))
    return plans


def _file_size(url: str | None) -> int:
    if not url:
        return 0
    fs, path = fsspec.core.url_to_fs(url)
    try:
        return fs.size(path) or 0
    except FileNotFoundError:
        return 0


def sample_metadata(clip: dict) -> dict:
    """Everything known about a clip, as the sample's json."""
    keep = ("clip_id", "source_id", "uri", "source_text", "source_sha256", "media_type", "first_frame", "last_frame",
            "start_s", "end_s", "duration_s", "n_frames", "fps", "width", "height", "recipe", "kept", "reason",
            "caption_version")
    meta = {k: clip.get(k) for k in keep}
    meta["text"] = clip.get("source_text")
    meta["scores"] = clip.get("scores", [])
    meta["captions"] = clip.get("captions", [])
    return meta


def chosen_caption(clip: dict, caption_version: str) -> str:
    """The long caption of the requested version, else the source text, else empty."""
    for c in clip.get("captions", []):
        if c["version"] == caption_version and c["kind"] == "long" and c["text"]:
            return c["text"]
    return clip.get("source_text") or ""


def _image_bytes(clip: dict, image_format: str) -> tuple[str, bytes]:
    data = read_bytes(clip["clip_path"])
    if image_format == "webp":
        buf = io.BytesIO()
        Image.open(io.BytesIO(data)).convert("RGB").save(buf, format="WEBP", quality=90)
        return "webp", buf.getvalue()
    return "jpg", data


def sample_of(clip: dict, caption_version: str, image_format: str = "jpg") -> dict:
    """The WebDataset sample of one clip: media, first frame, everything known (json), chosen caption."""
    if clip["media_type"] == "image":
        ext, media = _image_bytes(clip, image_format)
    else:
        ext, media = "mp4", read_bytes(clip["clip_path"])
    return {
        "__key__": clip["clip_id"],
        ext: media,
        "first.jpg": read_bytes(clip["first_frame_path"]),
        "json": json.dumps(sample_metadata(clip), default=str).encode(),
        "txt": chosen_caption(clip, caption_version).encode("utf-8"),
    }


class HashingWriter(io.RawIOBase):
    """A write-only stream that passes bytes to ``raw`` and hashes them on a background thread.

    Large writes (payloads) are hashed as they are, small ones (tar headers, json, txt) gathered into
    ~1 MiB pieces first; a thread does the hashing (hashlib releases the GIL), so checksumming
    overlaps writing instead of adding to it. ``hexdigest()`` finishes the hash; call it once,
    after the last write.
    """

    PIECE = 1 << 20

    def __init__(self, raw: BinaryIO):
        super().__init__()
        self.raw = raw
        self.bytes = 0
        self._sha = hashlib.sha256()
        self._pending: list[bytes] = []
        self._pending_n = 0
        self._queue: queue.Queue = queue.Queue(maxsize=16)
        self._thread = threading.Thread(target=self._hash_loop, name="shard-sha256", daemon=True)
        self._thread.start()
        self._digest: str | None = None

    def _hash_loop(self) -> None:
        while (piece := self._queue.get()) is not None:
            self._sha.update(piece)

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        data = b if isinstance(b, bytes) else bytes(b)  # immutable: safe to hash after returning
        self.raw.write(data)
        self.bytes += len(data)
        if len(data) >= self.PIECE:  # a payload: hashed as it is, no copy (order is kept by the queue)
            self._flush_pending()
            self._queue.put(data)
        else:  # headers and small members: gathered into ~1 MiB pieces
            self._pending.append(data)
            self._pending_n += len(data)
            if self._pending_n >= self.PIECE:
                self._flush_pending()
        return len(data)

    def _flush_pending(self) -> None:
        if self._pending:
            self._queue.put(b"".join(self._pending))
            self._pending, self._pending_n = [], 0

    def tell(self) -> int:
        return self.bytes

    def hexdigest(self) -> str:
        if self._digest is None:
            self._flush_pending()
            self._queue.put(None)
            self._thread.join()
            self._digest = self._sha.hexdigest()
        return self._digest

    def close(self) -> None:  # stop the thread even when writing failed half-way
        if self._digest is None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        super().close()


def _hash_existing(fs, path: str) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with fs.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def stream_tar(url: str, samples: Iterable[dict]) -> tuple[str, int, bool]:
    """Write samples as one tar at url, visible only when complete: (sha256, bytes, newly written).

    An existing object at url is never overwritten (shards are content-addressed and immutable):
    its checksum is returned instead and nothing is written.
    """
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        sha, size = _hash_existing(fs, path)
        return sha, size, False
    parent = path.rsplit("/", 1)[0]
    if is_local_fs(fs):
        os.makedirs(parent, exist_ok=True)
        for stale in glob.glob(glob.escape(path) + ".part-*"):  # left by a writer killed mid-shard
            os.remove(stale)
        with publishing(path) as part:  # fsynced, then renamed: atomic on one file system
            with open(part, "wb", buffering=1 << 20) as raw, HashingWriter(raw) as sink:
                _write_samples(sink, samples)
                digest = sink.hexdigest()
        return digest, sink.bytes, True
    # Object stores: nothing is visible until commit() completes the (multipart) upload.
    f = fs.open(path, "wb", autocommit=False)
    try:
        with HashingWriter(f) as sink:
            _write_samples(sink, samples)
            digest = sink.hexdigest()
        f.close()
        f.commit()
    except BaseException:
        f.discard()  # aborts the multipart upload: no object appears
        try:
            f.closed = True  # and garbage collection must not try to flush the discarded buffer
        except AttributeError:  # files whose `closed` is a read-only property (fsspec's local opener)
            pass
        raise
    return digest, sink.bytes, True


@functools.cache
def _tar_writer_class() -> type:
    """webdataset's TarWriter over a tarfile in plain write mode, one copy per member.

    For a file object TarWriter opens tarfile's stream mode ("w|"), which copies every payload
    through Python in 10 KiB records and cost more than the copy itself (docs/benchmarks.md); plain
    mode with a large ``copybufsize`` writes each member in one piece. Same tar, same layout.
    Made on first use: webdataset imports torch (1.5 to 3 s), which a process that never writes a
    shard (a CLI call, a Ray worker of another stage) should not pay for importing this module.
    """
    import webdataset as wds  # inside: it imports torch, which only a process that writes a shard needs

    class TarWriter(wds.TarWriter):
        def __init__(self, fileobj, **kwargs):
            super().__init__(fileobj, **kwargs)  # its stream-mode tarfile is never written to
            self.tarstream = tarfile.open(fileobj=fileobj, mode="w:", format=tarfile.USTAR_FORMAT)
            self.tarstream.copybufsize = 64 << 20

    return TarWriter


def _write_samples(sink: BinaryIO, samples: Iterable[dict]) -> None:
    """Samples as a WebDataset tar through webdataset's TarWriter (encoders by extension)."""
    with _tar_writer_class()(sink, mtime=TAR_MTIME) as tar:
        for sample in samples:
            tar.write(sample)


def write_shard(bucket: str, clips: list[dict], out_root: str, caption_version: str,
                image_format: str = "jpg") -> dict:
    """Write and publish one shard; returns its manifest row (id, url, sha256, bytes, n, members)."""
    ids = [c["clip_id"] for c in clips]
    for key in ids:
        if not is_safe_key(key):
            raise ValueError(f"clip id {key!r} is not a safe WebDataset key")
    shard_id = shard_id_for(bucket, ids, caption_version)
    url = f"{out_root.rstrip('/')}/{bucket}/{shard_id}.tar"
    try:
        sha, size, _new = stream_tar(url, (sample_of(c, caption_version, image_format) for c in clips))
    except OSError as e:
        if (full := storage_full(e, url)) is not None:
            raise full from e
        raise
    return {"shard_id": shard_id, "url": url, "sha256": sha, "bytes": size, "n": len(clips),
            "bucket": bucket, "caption_version": caption_version, "members": ids}
