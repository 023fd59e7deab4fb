"""The split stage: one source row becomes one row per clip of its single shots.

Shot detection itself is ``ingest/split.py`` (one decode of the source) and
``ingest/split_chunks.py`` (a long source in parallel time chunks); this stage picks between them,
plans the clips of the shots and keeps the dropped segments on the rows.
"""

from __future__ import annotations

from typing import ClassVar

from vidcorpus.config import Config
from vidcorpus.errors import DecodeError
from vidcorpus.ids import clip_id, image_clip_id
from vidcorpus.ingest.segments import ShotSplit
from vidcorpus.ingest.split import detect_segments, local_copy, plan_clips
from vidcorpus.ingest.split_chunks import chunked_index, detect_segments_chunked, run_chunks
from vidcorpus.ingest.transnet import TransNetRun
from vidcorpus.ingest.transnet import runs_here as transnet_runs_here
from vidcorpus.ingest.transnet import wants_gpu as transnet_wants_gpu
from vidcorpus.nvdec import TASK_GPU_SHARE
from vidcorpus.stage import Resources, Stage


class SplitStage(Stage):
    """Source rows in, clip rows out (clip_id, frame range, times)."""

    name: ClassVar[str] = "split"
    # A split task keeps more than a core busy (decoding, scaling, the detectors: about 1.3 cores per
    # 720p source with TransNetV2 on an H100 host); declared at half a core, a node started every
    # source's split at once, so all of a job's sources reached the later stages, and the captioner,
    # together at its end instead of one after another.
    resources: ClassVar[Resources] = Resources(cpus=1.0)
    # One source per call, so one task per source block (Ray Data bundles blocks up to a batch; the
    # runner makes a block per source when there are few, pipeline.build_dataset). With the task default
    # of 4 rows, four one-source blocks went into each task, and the H100 node's 15 long sources were
    # split by 4 tasks in turn while 12 cores waited (run 8b: the split's 4 workers, the job's first
    # 75 s). A batch size, not whole blocks: Ray Data wants one where a task asks for a GPU (TransNetV2).
    batch_rows: ClassVar[int] = 1
    # GPU share of one split task when TransNetV2 runs in it: its windows take a few ms of the GPU per
    # second of 720p video, and sixteen tasks at once must leave the model actors nearly all of it.
    transnet_gpu_share: ClassVar[float] = 0.01

    @classmethod
    def resources_for(cls, config: Config) -> Resources:
        gpus = max(cls.transnet_gpu_share if transnet_wants_gpu(config.split) else 0.0,
                   TASK_GPU_SHARE if config.split.decoder == "nvdec" else 0.0)  # NVDEC needs a share too
        return cls.resources.model_copy(update={"gpus": gpus}) if gpus else cls.resources

    def process_row(self, row: dict) -> list[dict]:
        if row["media_type"] == "image":
            return [dict(row, clip_id=image_clip_id(row["source_id"]), first_frame=0, last_frame=0, start_s=0.0, end_s=0.0)]
        cfg = self.config.split
        fps = row["fps"] or 25.0
        with_transnet = transnet_runs_here(cfg, self.config.models.preset)
        transnet = TransNetRun.for_source(self.config, row["source_id"]) if with_transnet else None
        with local_copy(row["source_path"]) as path:
            found = self._detect(path, cfg, fps, transnet, row.get("rotation"))
        if found.n_frames == 0:
            raise DecodeError("no decodable frames")
        ranges, trimmed = plan_clips(found.shots, fps, cfg)
        # every clip row carries the source's frame count and all of its dropped segments
        dropped = [d.as_row() for d in sorted(found.dropped + trimmed, key=lambda d: d.first_frame)]
        if not ranges:  # every shot trimmed away or dropped: one clip-less row, so the source is done
            return [dict(row, split_frames=found.n_frames, dropped=dropped)]
        return [dict(row, clip_id=clip_id(row["source_id"], a, b), first_frame=a, last_frame=b,
                     start_s=a / fps, end_s=(b + 1) / fps, split_frames=found.n_frames, dropped=dropped)
                for a, b in ranges]

    def _detect(self, path: str, cfg, fps: float, transnet: TransNetRun | None, rotation: int | None) -> ShotSplit:
        """One decode of the source, or parallel chunks of a long one (ingest/split_chunks.py)."""
        max_seconds = self.config.ingest.max_duration_s
        index = chunked_index(path, cfg, fps) if transnet is None else None
        if index is not None:
            setting = self.config.stages.get(self.name)
            cpus = setting.cpus if setting is not None and setting.cpus is not None else self.resources.cpus
            return detect_segments_chunked(path, cfg, fps, rotation, index, max_seconds,
                                           run_chunks(cpus, self.config.ray.task_nice))
        return detect_segments(path, cfg, fps=fps, max_seconds=max_seconds, transnet=transnet, rotation=rotation)
