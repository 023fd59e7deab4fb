"""Stream samples from shards (local or S3) with checksum verification, node/worker splits, shuffle.

The unit of trust is the shard: each one is read whole into a spooled buffer while it is hashed,
and its samples are handed out only if the sha256 matches the one recorded in the release
manifest or the catalog. A damaged or tampered shard is refused with ``ShardChecksumError`` before
any of its samples reach a trainer (by default the stream stops; ``on_bad_shard="skip"`` reports
it and goes on). A shard that cannot be read at all is skipped with a warning and reported. Splitting by node (``torch.distributed`` rank) and by DataLoader worker, and the
seeded per-epoch shard and sample shuffles, are webdataset's.

It lives in the core, not in ``shards/``: it is the format's reading side, which the trainer
(``train/``), the latent-cache job and release verification all use, and a stage folder may import
only the core (docs/architecture.md, "Layers").
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import tempfile
from dataclasses import asdict, dataclass
from typing import BinaryIO, Callable, Iterable, Iterator, Literal

import fsspec
import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_expander

log = logging.getLogger(__name__)

SPOOL_IN_MEMORY = 64 << 20  # shards up to this size stay in memory while verified; larger spill to disk
OnBadShard = Literal["raise", "skip"]


@dataclass(frozen=True)
class ShardSpec:
    """Where a shard is and what it must hash to (sha256 None: not verified)."""

    url: str
    sha256: str | None = None
    bytes: int | None = None
    n: int | None = None
    bucket: str | None = None
    shard_id: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class ShardChecksumError(ValueError):
    """A shard's bytes do not hash to the checksum its manifest recorded."""


class ShardUnavailable(OSError):
    """A shard listed in a manifest or the catalog cannot be read."""


def as_specs(shards: Iterable[ShardSpec | str | dict]) -> list[ShardSpec]:
    out = []
    for s in shards:
        if isinstance(s, ShardSpec):
            out.append(s)
        elif isinstance(s, str):
            out.append(ShardSpec(url=s))
        else:
            out.append(ShardSpec(**{k: s.get(k) for k in ShardSpec.__dataclass_fields__}))
    return out


def open_verified(spec: ShardSpec, verify: bool = True) -> BinaryIO:
    """The shard's bytes as a seekable stream, after checking its sha256 (when known and ``verify``)."""
    h = hashlib.sha256()
    buf = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
    n = 0
    try:
        with fsspec.open(spec.url, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
                buf.write(chunk)
                n += len(chunk)
    except FileNotFoundError as e:
        buf.close()
        raise ShardUnavailable(f"shard {spec.url} does not exist") from e
    except OSError as e:
        buf.close()
        raise ShardUnavailable(f"shard {spec.url} cannot be read: {e}") from e
    if verify and spec.sha256 and h.hexdigest() != spec.sha256:
        buf.close()
        raise ShardChecksumError(
            f"shard {spec.url} refused: its sha256 is {h.hexdigest()} ({n} bytes) but its manifest says "
            f"{spec.sha256} ({spec.bytes} bytes). The file was changed or damaged after it was published; "
            f"restore it from the release or rewrite it (`vidcorpus shards write`).")
    buf.seek(0)
    return buf


def _shard_items(specs: list[ShardSpec], seed: int | None) -> list[dict]:
    order = list(specs)
    if seed is not None:
        random.Random(seed).shuffle(order)
    return [{"url": spec.url, "spec": spec} for spec in order]


def _open_stage(src: Iterable[dict], verify: bool, on_bad_shard: OnBadShard,
                on_error: Callable[[str, Exception], None] | None) -> Iterator[dict]:
    for item in src:
        spec: ShardSpec = item["spec"]
        try:
            stream = open_verified(spec, verify)
        except (ShardChecksumError, ShardUnavailable) as e:
            if on_error is not None:
                on_error(spec.url, e)
            if on_bad_shard == "raise" and isinstance(e, ShardChecksumError):
                raise
            log.warning("skipping shard: %s", e)  # a missing shard is skipped, loudly; a damaged one refused
            continue
        yield {"url": spec.url, "stream": stream}


def _raise(exn: Exception) -> bool:
    raise exn


def _warn(exn: Exception) -> bool:
    log.warning("skipping unreadable shard data: %r", exn)
    return True


def sample_pipeline(shards: Iterable[ShardSpec | str | dict], *, seed: int | None = 0, epoch: int = 0,
                    shuffle_buffer: int = 0, keys: Iterable[str] | None = None, verify: bool = True,
                    split: bool = True, on_bad_shard: OnBadShard = "raise",
                    on_error: Callable[[str, Exception], None] | None = None,
                    worker_seed: int = 0) -> wds.DataPipeline:
    """Raw samples ({"__key__", "mp4"|"jpg", "json", "txt", ...} as bytes) from verified shards.

    Shards are shuffled per epoch (``seed`` None keeps their order), split by node and DataLoader
    worker (``split``), opened and verified, expanded into samples, restricted to ``keys`` if
    given, and passed through a shuffle buffer of ``shuffle_buffer`` samples.
    """
    specs = as_specs(shards)
    items = _shard_items(specs, None if seed is None else seed + epoch)
    stages: list = [lambda: iter(items)]  # a callable source: DataPipeline flattens list arguments
    if split:
        stages += [wds.split_by_node, wds.split_by_worker]
    handler = _raise if on_bad_shard == "raise" else _warn
    stages += [
        functools.partial(_open_stage, verify=verify, on_bad_shard=on_bad_shard, on_error=on_error),
        functools.partial(tar_file_expander, handler=handler),
        functools.partial(group_by_keys, handler=handler),
    ]
    if keys is not None:
        wanted = set(keys)
        stages.append(wds.select(lambda s: s["__key__"] in wanted))
    if shuffle_buffer > 1:
        stages.append(wds.shuffle(shuffle_buffer, initial=shuffle_buffer,
                                  rng=random.Random((seed or 0) * 1_000_003 + epoch * 1_009 + worker_seed)))
    return wds.DataPipeline(*stages)


def specs_from_manifest(manifest: dict) -> list[ShardSpec]:
    return [ShardSpec(url=s["url"], sha256=s["sha256"], bytes=s.get("bytes"), n=s.get("n"), bucket=s.get("bucket"),
                      shard_id=s.get("shard_id")) for s in manifest["shards"]]


def load_manifest(url: str) -> dict:
    """A release manifest by URL (``.../manifest.json`` or its folder)."""
    if not url.endswith(".json"):
        url = url.rstrip("/") + "/manifest.json"
    try:
        with fsspec.open(url, "rt") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise ShardUnavailable(f"no release manifest at {url}") from e
