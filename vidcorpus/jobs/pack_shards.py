"""Pack chosen clips into WebDataset shards (Ray tasks when Ray is up), publish each, then record it
in the catalog: the kept, unsharded clips of the active recipe (`vidcorpus shards write`, runs, sync)
or a release's new clips (``release.py``). The tar format itself is ``shards/writer.py``."""

from __future__ import annotations

import logging

from rich.progress import Progress

from vidcorpus.catalog.corpus_state import active_recipe_id, uncaptioned_for
from vidcorpus.config import Config

logger = logging.getLogger(__name__)


def write_pending_shards(cfg: Config, catalog, run_id: str, progress: bool = True,
                         allow_uncaptioned: bool = False) -> list[dict]:
    """Pack every clip the active recipe keeps that no shard holds yet; publish each shard, then
    commit its rows. A clip without a caption of shards.caption_version is left out (and said)
    unless ``allow_uncaptioned``: its txt would be empty."""
    recipe = active_recipe_id(catalog)
    clips = [c for c in catalog.unsharded_kept() if recipe is None or c["recipe"] == recipe]
    missing = set(uncaptioned_for(catalog, [c["clip_id"] for c in clips], cfg.shards.caption_version))
    if missing and not allow_uncaptioned:
        clips = [c for c in clips if c["clip_id"] not in missing]
        logger.info(f"{len(missing)} kept clips have no {cfg.shards.caption_version} caption and were not sharded "
                    f"(`vidcorpus sync` captions them; --allow-uncaptioned packs them with an empty txt)")
    return pack_clips(cfg, catalog, run_id, clips, progress=progress)


def pack_clips(cfg: Config, catalog, run_id: str, clips: list[dict], caption_version: str | None = None,
               progress: bool = True) -> list[dict]:
    """Write shards holding these clips (rows of clips_wide); publish each, then commit its rows."""
    from vidcorpus.shards.writer import plan_shards  # inside: webdataset imports torch, only when shards are written

    if not clips:
        return []
    ids = [c["clip_id"] for c in clips]
    scores, captions = catalog.scores_of(ids), catalog.captions_of(ids)
    clips = [dict(c, scores=scores[c["clip_id"]], captions=captions[c["clip_id"]]) for c in clips]
    plans = plan_shards(clips, cfg.shards.max_samples, cfg.shards.max_bytes)
    out_root = cfg.url("shards")
    written: list[dict] = []
    with Progress(disable=not progress) as bar:
        task = bar.add_task("writing shards", total=len(plans))
        for manifest in _publish_shards(plans, out_root, caption_version or cfg.shards.caption_version,
                                        cfg.shards.image_format, cfg.ray.task_cpus):
            catalog.commit_shards(run_id, [manifest])  # only after the tar is visible
            written.append(manifest)
            bar.advance(task)
    return written


def _publish_shards(plans, out_root: str, caption_version: str, image_format: str, task_cpus: float):
    """Manifests as shards are published: Ray tasks when Ray is up, else in this process."""
    from vidcorpus.shards.writer import write_shard  # inside: webdataset imports torch, only when shards are written

    if len(plans) < 2 or not _ray_ready():
        for bucket, members in plans:
            yield write_shard(bucket, members, out_root, caption_version, image_format)
        return
    import ray  # inside: only when a Ray cluster is already up

    remote = ray.remote(num_cpus=task_cpus)(write_shard)
    pending = [remote.remote(b, m, out_root, caption_version, image_format) for b, m in plans]
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        yield ray.get(ready[0])


def _ray_ready() -> bool:
    try:
        import ray  # inside: ray (a second to import) only to ask whether a cluster is already up

        return ray.is_initialized()
    except ImportError:
        return False
