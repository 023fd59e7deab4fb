"""Driver side of the latent cache: encode the shards of a release or a query once per cache key.

A (shard, cache key) pair already recorded in the catalog, whose sidecar file exists, is reused;
everything else is decoded, encoded with the frozen encoders of the configured I2VGen-XL
directory and published atomically like any shard, then recorded (``shards/latents.py``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import fsspec
from rich.progress import Progress

from vidcorpus.catalog.store import Catalog
from vidcorpus.config import Config
from vidcorpus.ids import new_run_id
from vidcorpus.jobs.models import resolve_models
from vidcorpus.jobs.shard_selection import shards_to_encode
from vidcorpus.shard_reader import ShardSpec, sample_pipeline
from vidcorpus.shards.latents import LatentParams, cache_key, encoder_fingerprint, sidecar_url
from vidcorpus.shards.writer import stream_tar

logger = logging.getLogger(__name__)


@dataclass
class LatentCacheSummary:
    cache_key: str
    root: str
    encoded: int
    reused: int
    samples: int


def encode_latent_cache(cfg: Config, params: LatentParams, release: str | None = None, select: str | None = None,
                        progress: bool = True) -> LatentCacheSummary:
    from vidcorpus.train.data import decode_sample  # inside: the encoders' model code loads only when encoding
    from vidcorpus.train.latent_encode import device_and_dtype, encode_sample  # inside: torch and the encoders' model code
    from vidcorpus.train.i2vgen_components import load_components
    from vidcorpus.train.objective import TextEncoderCache

    specs = shards_to_encode(cfg, release, select)  # a wrong release or query fails before the models load
    models = resolve_models(cfg.models)
    fingerprint = encoder_fingerprint(models.i2vgen)
    key = cache_key(fingerprint, params)
    root = cfg.url("latents")
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        entries = cat.latent_shards_for(key)
    cached = {s.shard_id for s in specs if (row := entries.get(s.shard_id)) and _exists(row["url"])}
    todo = [s for s in specs if s.shard_id not in cached]
    logger.info(f"latent cache {key}: {len(cached)} of {len(specs)} shards already encoded")
    # The text states are of the caption the key names (not whatever cfg.train happens to pick).
    tcfg = cfg.train.model_copy(update={"height": params.height, "width": params.width,
                                        "num_frames": params.frames, "fps": params.fps,
                                        "caption_version": params.caption_version,
                                        "caption_kind": params.caption_kind})
    comps = None
    run_id = new_run_id()
    samples = 0
    with Progress(disable=not progress) as bar:
        task = bar.add_task("encoding latents", total=len(todo))
        for spec in todo:
            if comps is None:
                device, dtype = device_and_dtype()
                comps = load_components(models.i2vgen, device, dtype)
                text_cache = TextEncoderCache(comps)
            raw = sample_pipeline([spec], seed=None, split=False)
            encoded = [encode_sample(comps, text_cache, decode_sample(s, tcfg, None), key) for s in raw]
            url = sidecar_url(root, key, spec.shard_id)
            sha, size, _new = stream_tar(url, encoded)
            with Catalog(cfg.catalog_path) as cat:
                cat.record_latent_shards(run_id, [{
                    "shard_id": spec.shard_id, "cache_key": key, "url": url, "sha256": sha, "bytes": size,
                    "n": len(encoded), "encoders_json": json.dumps({"model": models.i2vgen, **fingerprint}),
                    "params_json": json.dumps(params.to_dict())}])
            samples += len(encoded)
            bar.advance(task)
    return LatentCacheSummary(cache_key=key, root=f"{root}/{key}", encoded=len(todo), reused=len(cached),
                              samples=samples)


class LatentCacheMissing(RuntimeError):
    """Training asked for cached latents (``train.latent_cache=require``) that are not all there."""


def cached_specs(cfg: Config, specs: list[ShardSpec]) -> tuple[list[ShardSpec] | None, str, list[str]]:
    """The latent-cache sidecars standing in for ``specs`` when every shard has one for this run's
    cache key: (sidecar specs with their checksums or None, the key, the shard ids without one).

    The key hashes the frozen encoders' files and the run's bucket, frames, fps and caption, so a
    sidecar is only used for the exact inputs the trainer would otherwise compute itself."""
    models = resolve_models(cfg.models)
    key = cache_key(encoder_fingerprint(models.i2vgen), LatentParams.for_training(cfg))
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        entries = cat.latent_shards_for(key)
    out, missing = [], []
    for s in specs:
        row = entries.get(s.shard_id) if s.shard_id else None
        if row is None or not _exists(row["url"]):
            missing.append(s.shard_id or s.url)
        else:
            out.append(ShardSpec(url=row["url"], sha256=row["sha256"], bytes=row["bytes"], n=row["n"],
                                 bucket=s.bucket, shard_id=s.shard_id))
    return (out if not missing else None), key, missing


def _exists(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)
