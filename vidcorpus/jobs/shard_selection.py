"""Which shards a training run or a latent-cache encode reads: a release's (checksums from its
manifest) or those a catalog query selects. Shared by ``jobs/train.py`` and ``jobs/encode.py``."""

from __future__ import annotations

from vidcorpus.catalog.corpus_state import active_recipe_id
from vidcorpus.catalog.store import Catalog
from vidcorpus.config import Config
from vidcorpus.jobs.release import release_manifest
from vidcorpus.shard_reader import ShardSpec, as_specs, specs_from_manifest
from vidcorpus.shards.release_files import read_release_clips


class NoTrainingData(RuntimeError):
    """The selection matched no sharded clip."""


def select_training_shards(cfg: Config) -> tuple[list, set[str], str]:
    """(shard specs with checksums, clip ids to train on, a description) from a release or a query.

    A release's shards come with the sha256 its manifest recorded; a query's with the catalog's.
    Either way the stream refuses a shard whose bytes no longer match.
    """
    select = cfg.train.select
    if cfg.train.release:
        manifest, root = release_manifest(cfg, cfg.train.release)
        specs = specs_from_manifest(manifest)
        keys = set(read_release_clips(root).column("clip_id").to_pylist())
        what = f"release {manifest['name']}"
        if select.strip().upper() != "TRUE":
            with Catalog(cfg.catalog_path, read_only=True) as cat:
                keys &= cat.clip_ids_for(select)
            what += f" where {select}"
    else:
        with Catalog(cfg.catalog_path, read_only=True) as cat:
            what, params = f"--select {select!r}", None
            if select.strip().upper() == "TRUE" and "select" not in cfg.train.model_fields_set:
                select, params, what = _active_selection(cat)
            predicate = f"shard_id IS NOT NULL AND ({select})"
            specs = [ShardSpec(url=r["url"], sha256=r["sha256"], bytes=r["bytes"], n=r["n"], bucket=r["bucket"],
                               shard_id=r["shard_id"]) for r in cat.shard_rows_for(predicate, params)]
            keys = cat.clip_ids_for(predicate, params)
    if not specs or not keys:
        raise NoTrainingData(f"no sharded clip matches {what} in {cfg.catalog_path}")
    return specs, keys, what


def _active_selection(cat) -> tuple[str, list | None, str]:
    """Neither --select nor --release: the active recipe's kept, captioned clips (never a clip a
    re-decision dropped, nor one whose shard txt would be empty): (predicate, its ? values, what)."""
    recipe = active_recipe_id(cat)
    if recipe is None:
        return "kept AND captioned", None, "the kept, captioned clips (no recipe recorded)"
    return ("kept AND captioned AND recipe = ?", [recipe],
            f"the active recipe {recipe}'s kept, captioned clips; --select or --release to choose others")


def shards_to_encode(cfg: Config, release: str | None, select: str | None) -> list[ShardSpec]:
    """The shards `vidcorpus shards encode` encodes: a release's (from its manifest) or those holding
    clips that match ``select``."""
    if release:
        manifest, _root = release_manifest(cfg, release)
        return specs_from_manifest(manifest)
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        rows = cat.shard_rows_for(f"shard_id IS NOT NULL AND ({select or 'TRUE'})")
    if not rows:
        raise NoTrainingData(f"no shard holds clips matching {select or 'TRUE'!r}")
    return as_specs(rows)
