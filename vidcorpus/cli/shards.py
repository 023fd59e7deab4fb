"""`vidcorpus shards ...`: write the pending shards, list them; encode the latent cache
(``vidcorpus/jobs/encode.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vidcorpus.cli.options import (CatalogOpt, ConfigOpt, PresetOpt, ProgressOpt, SetOpt, WorkdirOpt,
                                   effective_config, require_catalog)
from vidcorpus.cli.output import console, print_arrow_table
from vidcorpus.cli.user_errors import fail
from vidcorpus.ids import new_run_id

shards_app = typer.Typer(rich_markup_mode=None, help="Write and list WebDataset shards.", no_args_is_help=True)


@shards_app.command("write")
def shards_write(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    workdir: Optional[str] = WorkdirOpt,
    catalog: Optional[str] = CatalogOpt,
    allow_uncaptioned: bool = typer.Option(False, "--allow-uncaptioned", help="Also pack kept clips without a "
                                           "caption (empty txt; `catalog verify` reports them)."),
) -> None:
    """Pack every clip the active recipe keeps that no shard holds yet into WebDataset shards, then
    record them. Clips without their caption are left out (`vidcorpus sync` captions them)."""
    from vidcorpus.catalog.corpus_state import active_recipe_id, kept_without_file  # inside: keeps --help fast
    from vidcorpus.catalog.store import Catalog
    from vidcorpus.jobs.pack_shards import write_pending_shards

    cfg = effective_config(config, set_, workdir=workdir, catalog=catalog)
    with Catalog(require_catalog(cfg)) as cat:
        recipe = active_recipe_id(cat)
        unextracted = kept_without_file(cat, recipe) if recipe else {}
        if unextracted:  # filter before you encode: shards pack only clips that have files
            console.print(f"{len(unextracted)} kept clips have no clip file yet and were not sharded "
                          "(`vidcorpus sync` extracts them)", markup=False)
        written = write_pending_shards(cfg, cat, new_run_id(), allow_uncaptioned=allow_uncaptioned)
    console.print(f"{len(written)} shards written under {cfg.url('shards')}")


@shards_app.command("list")
def shards_list(catalog: Optional[str] = CatalogOpt, config: Optional[Path] = ConfigOpt,
                workdir: Optional[str] = WorkdirOpt) -> None:
    """Every shard with its bucket, sample count, size and checksum."""
    from vidcorpus.catalog.store import Catalog  # inside: keeps --help fast (duckdb)

    cfg = effective_config(config, None, workdir=workdir, catalog=catalog)
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        print_arrow_table(cat.query("SELECT shard_id, bucket, n, bytes, sha256, url FROM shards ORDER BY bucket, shard_id"))


@shards_app.command("encode")
def shards_encode(
    release: Optional[str] = typer.Option(None, "--release", help="Encode this release's shards."),
    select: Optional[str] = typer.Option(None, "--select", help="Or the shards holding clips that match this predicate."),
    height: Optional[int] = typer.Option(None, "--height", help="Frame height (default train.height)."),
    width: Optional[int] = typer.Option(None, "--width", help="Frame width (default train.width)."),
    frames: Optional[int] = typer.Option(None, "--frames", help="Frames per clip (default train.num_frames)."),
    fps: Optional[int] = typer.Option(None, "--fps", help="Sampling frame rate (default train.fps)."),
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    workdir: Optional[str] = WorkdirOpt,
    catalog: Optional[str] = CatalogOpt,
    preset: Optional[str] = PresetOpt,
    progress: bool = ProgressOpt,
) -> None:
    """Write sidecar shards of VAE latents and CLIP image/text embeddings (the latent cache)."""
    from vidcorpus.jobs.encode import encode_latent_cache  # inside: keeps --help fast (torch, the encoders)
    from vidcorpus.jobs.shard_selection import NoTrainingData
    from vidcorpus.shards.latents import LatentParams
    from vidcorpus.shards.release_files import ReleaseError

    cfg = effective_config(config, set_, workdir=workdir, catalog=catalog, **{"models.preset": preset})
    require_catalog(cfg)  # before the encoders load (or the tiny ones are built): a mistake is one line
    base = LatentParams.for_training(cfg)  # what `vidcorpus train` with this config will look up
    params = LatentParams(height=height or base.height, width=width or base.width, frames=frames or base.frames,
                          fps=fps or base.fps, caption_version=base.caption_version, caption_kind=base.caption_kind)
    try:
        s = encode_latent_cache(cfg, params, release=release, select=select, progress=progress)
    except (ReleaseError, NoTrainingData) as e:
        fail(str(e))
    console.print(f"latent cache {s.cache_key}: {s.encoded} shards encoded, {s.reused} already cached "
                  f"({s.samples} samples) under {s.root}")
