"""Shot detection of a long source in parallel time chunks.

One long source used to be one task: a 4-minute 720p video kept one core busy for minutes while
the GPU waited for its first clips (docs/benchmarks.md, the GPU-node job). A source longer than
``split.chunk_seconds`` is cut into chunks of about that length; each chunk is a Ray task that
decodes its frames (seeking through the source's packet index, ``vidcorpus.frame_index``) and
keeps the cuts that fall inside it. The chunks' cuts together are the source's cuts, turned into
shots exactly as a single pass would (``split.shots_from_cuts``).

A detector judges a frame against the frames before it (the adaptive detector's rolling window,
the histogram detector's second of context, the shortest-shot rule), so each chunk starts decoding
``WARM_SECONDS`` before its first frame and reads ``LOOKAHEAD_SECONDS`` past its last, for the
flash filter's frames after a cut; cuts found in those margins belong to the neighbouring chunk.
TransNetV2 keeps per-source state (its probabilities file), so sources it splits stay whole.
"""

from __future__ import annotations

import sys
from typing import Callable

from vidcorpus.errors import DecodeError
from vidcorpus.frame_index import FrameIndex, index_of
from vidcorpus.ingest.flash import FlashWatch
from vidcorpus.ingest.segments import ShotSplit
from vidcorpus.ingest.split import open_detection_stream, run_detectors, seconds_to_frames, shots_from_cuts

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
                 index: FrameIndex) -> tuple[list[int], int]:
    """(the cuts in frames [start, end), the position after the last frame decoded)."""
    warm = max(0, start - seconds_to_frames(WARM_SECONDS, fps))
    flashes = FlashWatch() if cfg.flash_filter else None
    video = open_detection_stream(path, cfg, flashes, None, rotation, warm, index)
    first = video.frame_number  # the keyframe the stream starts at (at or before warm)
    stop = min(index.n_frames, end + seconds_to_frames(LOOKAHEAD_SECONDS, fps))
    cuts, decoded_to = run_detectors(video, cfg, fps, stop if stop < index.n_frames else None)
    if flashes:  # its frames are numbered from the stream's first frame
        cuts = [c + first for c in flashes.real_cuts([c - first for c in cuts])]
    return [c for c in cuts if start <= c < end], decoded_to


def detect_segments_chunked(path: str, cfg, fps: float, rotation: int | None, index: FrameIndex,
                            max_seconds: float | None, run_all: Callable[[Callable, list[tuple]], list]) -> ShotSplit:
    """``split.detect_segments`` of a long source, its chunks run by ``run_all(fn, [args, ...])``
    (Ray tasks in a worker, in turn otherwise)."""
    if max_seconds and index.n_frames > int(max_seconds * fps) + 1:
        raise DecodeError(f"the stream runs past ingest.max_duration_s ({max_seconds:.0f} s) "
                          "although its headers did not say so", "too_long")
    chunks = chunk_bounds(index.n_frames, fps, cfg.chunk_seconds)
    found = run_all(detect_chunk, [(path, cfg, fps, rotation, a, b, index) for a, b in chunks])
    cuts = sorted(c for chunk_cuts, _ in found for c in chunk_cuts)
    total = found[-1][1]  # the last chunk decodes to the end: frames the decoder really delivered
    if total < chunks[-1][0]:
        raise DecodeError(f"the source ends at frame {total}, before its packets said ({index.n_frames})")
    return shots_from_cuts(cuts, total, cfg, fps)


def run_chunks(cpus: float) -> Callable[[Callable, list[tuple]], list]:
    """A ``run_all`` for ``detect_segments_chunked``: Ray tasks of ``cpus`` each when Ray is up (the
    caller's task lends its CPU while it waits), else one call after another."""

    def run_all(fn: Callable, calls: list[tuple]) -> list:
        ray = sys.modules.get("ray")  # a Ray worker has it imported; never import it just to ask
        if ray is None or not ray.is_initialized() or len(calls) < 2:
            return [fn(*args) for args in calls]
        remote = ray.remote(num_cpus=cpus, max_retries=1)(fn)
        return ray.get([remote.remote(*args) for args in calls])

    return run_all
