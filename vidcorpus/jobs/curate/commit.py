"""The driver's side of a run: commit result batches as they stream in, and act on whole sources.

Rows are committed every ``ray.commit_rows`` (a crash loses at most the batches not yet committed;
a rerun re-processes only sources not marked done, and upserts keep it duplicate-free). A source is
whole once every row it became is committed: the split stage stamps each clip row with how many rows
its source became (``source_rows``; a row without it is its source's only row). When
``ray.window_sources`` sources are whole (or the stream ends) the driver scores their clips'
duplicates, re-decides, marks them done and hands the clips still kept to the caption actors
(vidcorpus/jobs/curate/caption_pool.py), whose results it commits as they come. So a duplicate is never
captioned, and a killed driver redoes only sources that were not yet done; kept clips left
uncaptioned are pending work that the next run or `vidcorpus sync` completes.
"""

from __future__ import annotations

import logging
import time

import pyarrow as pa

from vidcorpus import events as stage_events
from vidcorpus.catalog.corpus_state import active_recipe_id, uncaptioned_for
from vidcorpus.catalog.stage_stats_table import write as write_stage_table
from vidcorpus.config import Config
from vidcorpus.filters.dedup import DedupIndex, write_embedding_batch
from vidcorpus.jobs.curate.redecide import dedup_and_redecide
from vidcorpus.jobs.curate.sync import commit_captioned

logger = logging.getLogger(__name__)

STATS_EVERY_S = 30.0  # how often the driver rewrites the run's stage table while the run goes on


class RunCommitter:
    def __init__(self, cfg: Config, catalog, run_id: str, summary, captions=None):
        self.cfg, self.catalog, self.run_id, self.summary = cfg, catalog, run_id, summary
        self.captions = captions  # a CaptionPool, or None: kept clips stay pending (sync captions them)
        # The dedup index reads the catalog's embeddings once (at the first group) and then only
        # what this run commits.
        self.dedup = DedupIndex(cfg.filters.dedup_floor, run_id) if cfg.filters.dedup else None
        self.failed: set[str] = set()
        self.warned: set[tuple] = set()  # (stage, kind, message) already logged in this run
        self.expected: dict[str, int] = {}  # source -> rows it became
        self.committed: dict[str, int] = {}  # source -> rows committed so far
        self.whole: list[str] = []  # whole sources not yet deduplicated and marked done
        self.embedded: dict[str, list[str]] = {}  # source -> its clips with an embedding
        self.rows_of: dict[str, dict] = {}  # clip -> its committed row, until captioning takes it
        self.caption_failed: set[str] = set()
        self.stats_written_at = time.time()
        self.sources_done = 0  # settled by this run (done, or failed): for the progress line

    # -- the stream ------------------------------------------------------------------------------
    def add(self, batch: pa.Table) -> None:
        """Commit one result batch; groups of whole sources are deduplicated and marked done."""
        began = time.time()
        rows, raised = stage_events.split(batch.to_pylist())
        stage_events.log_new(raised, self.warned, logger.warning)  # workers' output does not reach this terminal
        for r in rows:
            if r.get("error_class"):
                self.failed.add(r["source_id"])
                self.summary.failures += 1
        index = write_embedding_batch(self.cfg.url("embeddings"), self.run_id, self.summary.rows_committed, rows)
        self.catalog.commit_results(self.run_id, rows, failed_before=self.failed, events=raised)
        self.catalog.commit_embeddings(self.run_id, index)  # after the Parquet file is whole
        if self.dedup is not None:
            self.dedup.committed([r["clip_id"] for r in rows if r.get("clip_id") and not r.get("error_class")],
                                 index)
        with_embedding = {r["clip_id"] for r in index}
        for r in rows:
            sid = r["source_id"]
            if sid is None:
                continue
            self.expected[sid] = int(r.get("source_rows") or 1)
            self.committed[sid] = self.committed.get(sid, 0) + 1
            if r.get("clip_id") in with_embedding:
                self.embedded.setdefault(sid, []).append(r["clip_id"])
            if self.captions is not None and r.get("clip_id") and r.get("kept") and not r.get("error_class"):
                self.rows_of[r["clip_id"]] = r
            if self.committed[sid] == self.expected[sid]:
                self.whole.append(sid)
        self.summary.rows_committed += len(rows)
        # the stages' stamps (carrier rows included: the batch before events.split), and this commit
        self.summary.timeline.add(batch, commit=(began, time.time()))
        if len(self.whole) >= self.cfg.ray.window_sources:
            self.close_group()
        self._take_captions(self.captions.poll() if self.captions is not None else [])
        self.write_stage_stats()

    def write_stage_stats(self, every_s: float | None = None) -> None:
        """The run's stage table so far, at most every ``every_s`` seconds: a run that is killed or
        stopped still leaves in the catalog where its time went until then (the end replaces it)."""
        if time.time() - self.stats_written_at >= (STATS_EVERY_S if every_s is None else every_s):
            write_stage_table(self.catalog, self.run_id, self.summary.timeline.finish())
            self.stats_written_at = time.time()

    def close_group(self, sources: list[str] | None = None) -> None:
        """Deduplicate the whole sources' clips, re-decide, mark the sources done, caption their kept clips."""
        group = self.whole if sources is None else sources
        self.whole = [] if sources is None else [s for s in self.whole if s not in set(sources)]
        if not group:
            return
        new = [c for s in group for c in self.embedded.pop(s, [])]
        if self.dedup is not None and new:
            began = time.time()
            dedup_and_redecide(self.cfg, self.catalog, self.run_id, new, index=self.dedup)
            self.summary.timeline.driver_step("dedup", began, time.time(), len(new))
        self.catalog.mark_sources_done(set(group) - self.failed)
        self.sources_done += len(group)
        logger.info(f"{self.sources_done} sources done, {self.summary.rows_committed} rows committed "
                 f"({time.time() - self.summary.timeline.start:.0f} s)")
        if self.captions is not None:
            self._caption(group)

    def finish(self) -> None:
        """The stream ended: every source seen is settled (one that never became whole, too: a rerun
        would not give it more rows), then the last captions are waited for."""
        self.whole.extend(s for s in self.committed if self.committed[s] < self.expected[s])
        self.close_group()
        if self.captions is not None:
            wait = max(1.0, STATS_EVERY_S)
            self._take_captions(self.captions.flush(timeout=wait))
            while self.captions.busy:  # the last captions; the stage table goes on being written
                self.write_stage_stats()
                self._take_captions(self.captions.flush(timeout=wait))

    # -- captioning ------------------------------------------------------------------------------
    def _caption(self, group: list[str]) -> None:
        wanted = set(group)
        clips = [c for c, r in self.rows_of.items() if r["source_id"] in wanted]
        rows = [self.rows_of.pop(c) for c in clips]
        if not rows:
            return
        recipe = active_recipe_id(self.catalog)
        kept = [r["clip_id"] for r in self.catalog.query_dicts(  # the decision after dedup, not the stream's
            "SELECT clip_id FROM clips_wide WHERE clip_id IN (SELECT unnest(?)) AND kept AND recipe IS NOT DISTINCT FROM "
            "coalesce(?, recipe) ORDER BY clip_id", [clips, recipe])]
        todo = set(uncaptioned_for(self.catalog, kept, self.cfg.captioning.version))
        batch = [dict(r, kept=True, captions=[], scores=[]) for r in rows if r["clip_id"] in todo]  # only new scores come back
        self._take_captions(self.captions.add(batch))

    def _take_captions(self, tables: list[pa.Table]) -> None:
        for table in tables:
            began = time.time()
            rows, raised = stage_events.split(table.to_pylist())
            stage_events.log_new(raised, self.warned, logger.warning)
            self.catalog.add_events(self.run_id, raised)
            _ok, failed = commit_captioned(self.catalog, self.run_id, rows)
            self.caption_failed.update(failed)
            self.summary.timeline.add(table, commit=(began, time.time()))  # the caption stages' stamps
