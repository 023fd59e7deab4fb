"""Options several commands share, and the effective config and catalog they resolve to."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from vidcorpus.cli.user_errors import fail
from vidcorpus.config import Config, ConfigError, load_config

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (sections as in `vidcorpus config show`).")
SetOpt = typer.Option(None, "--set", "-s", help="Override a config value, e.g. --set filters.recipe=pretrain_v1 (repeatable).")
CatalogOpt = typer.Option(None, "--catalog", help="DuckDB catalog file (default: {workdir}/catalog.duckdb); read-only "
                                                  "commands also take a snapshot folder or s3:// URL (`catalog export`).")
WorkdirOpt = typer.Option(None, "--workdir", "-w", help="Root for staging and shards: a local path or s3:// URL "
                                                        "(default $VIDCORPUS_WORKDIR, else ./vidcorpus-work).")
RayAddressOpt = typer.Option(None, "--ray-address", help="Existing Ray cluster; default starts a local Ray.")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")
PresetOpt = typer.Option(None, "--preset", help="Model preset: 'tiny' (offline random test models) or 'production'.")


def effective_config(config: Optional[Path], overrides: Optional[List[str]], **fields) -> Config:
    """The effective config, with every local path in it made absolute once, here (vidcorpus/paths.py)."""
    from vidcorpus.paths import resolve_config_paths  # inside: keeps --help fast (fsspec)

    if config is not None and not Path(config).is_file():
        fail(f"no config file at {config}" + (" (a folder)" if Path(config).is_dir() else ""), prefix="config error:")
    try:
        return resolve_config_paths(load_config(config, overrides or [], **fields))
    except ConfigError as e:
        fail(str(e), prefix="config error:")


def require_catalog(cfg: Config) -> str:
    """The catalog path of a command that changes an existing catalog: never creates one."""
    from vidcorpus.storage import is_url, local_path  # inside: keeps --help fast (fsspec)
    from vidcorpus.workdir import missing_catalog_hint

    path = cfg.catalog_path
    if not is_url(path) and not os.path.isdir(path) and not os.path.exists(local_path(path)):
        fail(f"no catalog at {path} ({missing_catalog_hint(path)})")
    return path


def open_catalog(path: str, read_only: bool = True, **kw):
    """Open a catalog (file or snapshot URL) or exit 2 with the reason."""
    from vidcorpus.catalog.store import Catalog, CatalogError  # inside: keeps --help fast (duckdb)

    try:
        return Catalog(path, read_only=read_only, **kw)
    except CatalogError as e:
        fail(str(e))
