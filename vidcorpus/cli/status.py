"""`vidcorpus status`: the active recipe and the work it still needs (`vidcorpus sync` does it).

``print_gaps`` also serves `catalog verify`.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from rich.table import Table

from vidcorpus.cli.options import CatalogOpt, ConfigOpt, SetOpt, WorkdirOpt, effective_config, open_catalog
from vidcorpus.cli.output import console, print_funnel


def print_gaps(cat) -> int:
    """List verify's gaps (pending work, clips readers skip) by check; returns how many."""
    from vidcorpus.catalog.corpus_state import state_gaps  # inside: keeps --help fast (duckdb)

    gaps = state_gaps(cat)
    if not gaps:
        return 0
    by: dict[str, list[dict]] = {}
    for g in gaps:
        by.setdefault(g["check"], []).append(g)
    t = Table(title=f"{len(gaps)} gaps between the decisions and what was derived from them")
    t.add_column("check", no_wrap=True)  # a name to grep for: never folded, whatever the width
    t.add_column("clips", justify="right", no_wrap=True)
    for col in ("example", "detail"):
        t.add_column(col, overflow="fold")
    for check, rows in sorted(by.items()):
        t.add_row(check, str(len(rows)), str(rows[0]["item"]), rows[0]["detail"])
    console.print(t, markup=False)
    return len(gaps)


def status(
    catalog: Optional[str] = CatalogOpt,
    config: Optional[Path] = ConfigOpt,
    set_: Optional[List[str]] = SetOpt,
    workdir: Optional[str] = WorkdirOpt,
) -> None:
    """The active recipe (and its history) and the work it still needs: clips not decided by it,
    kept clips not extracted, captioned (captioning.version) or sharded, and once latents are
    cached, sharded clips without them. `vidcorpus sync` does all but the latents."""
    from vidcorpus.catalog.corpus_state import pending_work, recipe_history  # inside: keeps --help fast (duckdb)
    from vidcorpus.catalog.latent_state import encode_command

    cfg = effective_config(config, set_, workdir=workdir, catalog=catalog)
    with open_catalog(cfg.catalog_path) as cat:
        history = recipe_history(cat)
        pw = pending_work(cat, cfg.captioning.version, cfg.shards.caption_version)
        funnel = cat.funnel()
    if pw.recipe is None:
        console.print("no recipe in force yet: `vidcorpus run` decides with filters.recipe")
        return
    console.print(f"active recipe: {pw.recipe}", markup=False)
    for h in history[-5:]:
        console.print(f"  {h['set_at']:%Y-%m-%d %H:%M:%S}  {h['recipe']}  by {h['origin']}  "
                      f"(sha256 {h['sha256'][:12]})", markup=False)
    t = Table(title=f"pending work of {pw.recipe}")
    t.add_column("stage")
    t.add_column("clips", justify="right")
    t.add_column("example")
    for stage, ids in (("decide", pw.undecided), ("extract", pw.unextracted),
                       (f"caption {pw.caption_version}", pw.uncaptioned),
                       (f"shard ({pw.shard_caption_version} captions)", pw.unsharded)):
        t.add_row(stage, str(len(ids)), ids[0] if ids else "")
    if pw.latent_key is not None:  # once the corpus uses the latent cache
        t.add_row(f"encode latents ({pw.latent_key.cache_key})", str(len(pw.unencoded)),
                  pw.unencoded[0] if pw.unencoded else "")
    console.print(t, markup=False)
    if pw.sharded_dropped:
        console.print(f"{len(pw.sharded_dropped)} sharded clips are dropped by {pw.recipe}: training and "
                      "releases skip them", markup=False)
    print_funnel(funnel, title=f"funnel under {pw.recipe}")
    if pw.unencoded:
        console.print(f"{len(pw.unencoded)} kept, sharded clips have no latents of cache key "
                      f"{pw.latent_key.cache_key}: `{encode_command(pw.latent_key, cfg)}` "
                      "encodes them (on a GPU machine; sync does not)", markup=False, soft_wrap=True)
    console.print("nothing pending" if pw.total == 0 and not pw.unencoded else
                  f"{pw.total} pending: `vidcorpus sync` completes it with the pipeline's stages", markup=False)
