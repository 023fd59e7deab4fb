"""Locations as the catalog stores them: an absolute local path or an fsspec URL, never relative.

A relative path in the catalog, a release manifest or a checkpoint means "relative to wherever the
command that wrote it ran", so it breaks from any other directory. The command line resolves
every location the user types once, on the way in (``resolve_config_paths``, ``storage.absolute``), and
``catalog verify`` reports any relative path it finds (``catalog/verify_paths.py``).
"""

from __future__ import annotations

import os

import fsspec

from vidcorpus.config import Config
from vidcorpus.storage import absolute, is_url, local_path, url_scheme


def is_relative_path(location: str | None) -> bool:
    """A stored location that depends on the writer's working directory."""
    if not location or is_url(location):
        return False
    return not os.path.isabs(local_path(location))


LOCAL_MODEL_FIELDS = ("clip_pretrained", "aesthetic_head", "captioner", "i2vgen", "refiner")


def resolve_config_paths(cfg: Config) -> Config:
    """The config with its workdir, catalog, inputs, recipe file, local model paths and
    release/manifest paths made absolute (the run's config is stored in the catalog)."""
    update: dict = {"workdir": absolute(cfg.workdir), "inputs": [absolute(i) for i in cfg.inputs]}
    if cfg.catalog:
        update["catalog"] = absolute(cfg.catalog)
    sections = {}
    recipe = cfg.filters.recipe
    if recipe and not is_url(recipe) and os.path.isfile(recipe):  # a recipe file, not a bundled name
        sections["filters"] = cfg.filters.model_copy(update={"recipe": absolute(recipe)})
    models = {"cache_dir": absolute(cfg.models.cache_dir)}
    for field in LOCAL_MODEL_FIELDS:  # a local weights file or directory, not a hub id
        value = getattr(cfg.models, field)
        if value and not is_url(value) and os.path.exists(value):
            models[field] = absolute(value)
    sections["models"] = cfg.models.model_copy(update=models)
    for name in ("train", "refiner"):
        section = getattr(cfg, name)
        release = getattr(section, "release", None)
        if release and "/" in release:  # a manifest path instead of a release name
            sections[name] = section.model_copy(update={"release": absolute(release)})
    return cfg.model_copy(update={**update, **sections})


def missing_inputs(inputs: list[str]) -> list[str]:
    """Inputs (list files, folders, prefixes) that are not there; a single http(s) media URL is the
    downloader's to judge. Checked before a run opens the catalog, so a typo leaves nothing behind."""
    missing = []
    for item in inputs:
        if url_scheme(item) in ("http", "https"):
            continue
        try:
            fs, path = fsspec.core.url_to_fs(item)
            there = fs.exists(path)
        except Exception:  # noqa: BLE001 - cannot tell here (no s3fs, no credentials): the run will say
            there = True
        if not there:
            missing.append(item)
    return missing
