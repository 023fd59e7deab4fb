"""Shot detection of a long source in parallel time chunks.

One long source used to be one task: a 4-minute 720p video kept one core busy for minutes while
the GPU waited for its first clips (docs/benchmarks.md, the GPU-node job). A source longer than
``split.chunk_seconds`` is cut into chunks of about that length; each chunk is a Ray task that
decodes its frames (seeking through the source's packet index, ``vidcorpus.frame_index``) and
keeps what falls inside it (cuts, and the flash watch's per-frame thumbnails). The chunks joined
are what one pass over the source finds, turned into shots exactly as a single pass's are
(``split.segments_from``: flashes, unconfirmed histogram cuts, transitions and blends).

A detector judges a frame against the frames before it (the adaptive detector's rolling window,
the histogram detector's second of context, the shortest-shot rule), so each chunk starts decoding
``WARM_SECONDS`` before its first frame and reads ``LOOKAHEAD_SECONDS`` past its last, for the
flash filter's frames after a cut; cuts found in those margins belong to the neighbouring chunk.
TransNetV2 keeps per-source state (its probabilities file), so sources it splits stay whole.
"""

from __future__ import annotations

import sys
from typing import Callable

from vidcorpus.cpu_priority import niced
from vidcorpus.errors import DecodeError
from vidcorpus.frame_index import FrameIndex, index_of
from vidcorpus.ingest.flash import FlashWatch
from vidcorpus.ingest.segments import ShotSplit
from vidcorpus.ingest.split import (DetectorPass, open_detection_stream, run_detectors, seconds_to_frames,
                                    segments_from)

WARM_SECONDS = 3.0  # the histogram detector's context is 1 s; the adaptive window a few frames
LOOKAHEAD_SECONDS = 1.0


def chunk_bounds(n_frames: int, fps: float, chunk_seconds: float) -> list[tuple[int, int]]:
    """[start, end) frame ranges of near-equal chunks of at most about ``chunk_seconds`` each."""
    size = max(1, round(chunk_seconds * fps))
    pieces = max(1, round(n_frames / size))
    step = -(-n_frames // pieces)
    return [(a, min(a + step, n_frames)) for a in range(0, n_frames, step)]


def chunked_index(path: str, cfg, fps: float) -> FrameIndex | None:
    """The source's packet index when it should be detected in chunks, else None (short sources,
    chunking off, TransNetV2, the OpenCV backend, packets that do not index frames)."""
    if not cfg.chunk_seconds or cfg.backend != "pyav" or "transnetv2" in cfg.detectors:
        return None
    index = index_of(path)
    if index is None or index.n_frames < 1.5 * cfg.chunk_seconds * fps:
        return None
    return index


def detect_chunk(path: str, cfg, fps: float, rotation: int | None, start: int, end: int,
                 index: FrameIndex) -> DetectorPass:
    """What the detectors find in frames [start, end) (the last chunk: to the end of the stream)."""
    warm = max(0, start - seconds_to_frames(WARM_SECONDS, fps))
    thumbs_needed = cfg.flash_filter or cfg.dissolve_spans or cfg.histogram_evidence or cfg.jump_cuts
    flashes = FlashWatch() if thumbs_needed else None
    video = open_detection_stream(path, cfg, flashes, None, rotation, warm, index)
    first = video.frame_number  # the keyframe the stream starts at (at or before warm)
    last_chunk = end >= index.n_frames
    stop = None if last_chunk else min(index.n_frames, end + seconds_to_frames(LOOKAHEAD_SECONDS, fps))
    found = run_detectors(video, cfg, fps, stop, flashes, first)
    return found.owned(start, found.end if last_chunk else end)


def detect_segments_chunked(path: str, cfg, fps: float, rotation: int | None, index: FrameIndex,
                            max_seconds: float | None, run_all: Callable[[Callable, list[tuple]], list]) -> ShotSplit:
    """``split.detect_segments`` of a long source, its chunks run by ``run_all(fn, [args, ...])``
    (Ray tasks in a worker, in turn otherwise)."""
    if max_seconds and index.n_frames > int(max_seconds * fps) + 1:
        raise DecodeError(f"the stream runs past ingest.max_duration_s ({max_seconds:.0f} s) "
                          "although its headers did not say so", "too_long")
    chunks = chunk_bounds(index.n_frames, fps, cfg.chunk_seconds)
    parts = run_all(detect_chunk, [(path, cfg, fps, rotation, a, b, index) for a, b in chunks])
    if any(p.end < b for p, (_a, b) in zip(parts[:-1], chunks)) or parts[-1].end <= chunks[-1][0]:
        raise DecodeError(f"the source's frames end before its packets said ({index.n_frames})")
    return segments_from(DetectorPass.join(parts), cfg, fps)


def run_chunks(cpus: float, nice: int = 0) -> Callable[[Callable, list[tuple]], list]:
    """A ``run_all`` for ``detect_segments_chunked``: Ray tasks of ``cpus`` each, at the CPU stages'
    niceness (``ray.task_nice``), when Ray is up (the caller's task lends its CPU while it waits),
    else one call after another."""

    def run_all(fn: Callable, calls: list[tuple]) -> list:
        ray = sys.modules.get("ray")  # a Ray worker has it imported; never import it just to ask
        if ray is None or not ray.is_initialized() or len(calls) < 2:
            return [fn(*args) for args in calls]
        remote = ray.remote(num_cpus=cpus, max_retries=1)(niced(fn, nice))
        return ray.get([remote.remote(*args) for args in calls])

    return run_all
