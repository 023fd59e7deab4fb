"""Pack clips into WebDataset tar shards and publish each one atomically.

A shard is written to a local temporary file, hashed, then published in one step (an atomic
rename on the local file system, a single completed upload on S3). Its catalog rows are committed
by the driver only after that, so a reader never sees a shard the catalog does not know or a
catalog row whose shard is half written. The shard id is derived from its members, so writing the
same clips again produces the same shard, not a second one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Iterable

import fsspec
import webdataset as wds

from vidcorpus.ids import is_safe_key
from vidcorpus.shards.buckets import bucket_of


def shard_id_for(bucket: str, clip_ids: Iterable[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(clip_ids)).encode()).hexdigest()[:16]
    return f"{bucket}-{digest}"


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


def _read(url: str) -> bytes:
    with fsspec.open(url, "rb") as f:
        return f.read()


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


def write_shard(bucket: str, clips: list[dict], out_root: str, caption_version: str) -> dict:
    """Write and publish one shard; returns its manifest row (id, url, sha256, bytes, n, members)."""
    ids = [c["clip_id"] for c in clips]
    for key in ids:
        if not is_safe_key(key):
            raise ValueError(f"clip id {key!r} is not a safe WebDataset key")
    shard_id = shard_id_for(bucket, ids)
    url = f"{out_root.rstrip('/')}/{bucket}/{shard_id}.tar"
    fd, tmp = tempfile.mkstemp(suffix=".tar")
    os.close(fd)
    try:
        with open(tmp, "wb") as stream, wds.TarWriter(stream) as sink:
            for c in clips:
                ext = "jpg" if c["media_type"] == "image" else "mp4"
                sink.write({
                    "__key__": c["clip_id"],
                    ext: _read(c["clip_path"]),
                    "first.jpg": _read(c["first_frame_path"]),
                    "json": json.dumps(sample_metadata(c), default=str).encode(),
                    "txt": chosen_caption(c, caption_version).encode("utf-8"),
                })
        h = hashlib.sha256()
        with open(tmp, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        size = os.path.getsize(tmp)
        publish(tmp, url)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {"shard_id": shard_id, "url": url, "sha256": h.hexdigest(), "bytes": size, "n": len(clips),
            "bucket": bucket, "caption_version": caption_version, "members": ids}


def publish(local_tmp: str, url: str) -> None:
    """Make a finished file visible at url in one step."""
    fs, path = fsspec.core.url_to_fs(url)
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if "file" in protocols or "local" in protocols:
        part = f"{path}.part"
        fs.put_file(local_tmp, part)
        os.replace(part, path)  # atomic on one file system
    else:
        fs.put_file(local_tmp, path)  # S3: the object appears only when the upload completes
