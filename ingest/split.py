"""Shot detection with PySceneDetect: a source's single shots (``ingest/split_stage.py`` makes clip rows of them).

Frames are decoded as a stream (scenedetect keeps at most a few frames in flight), so memory does
not grow with video length. The default ``pyav`` backend asks FFmpeg's scaler for small BGR
frames directly instead of converting every full-size frame to an array and shrinking it with
OpenCV afterwards: that conversion, not the detectors, is what bounds detection speed on large
videos. Every frame number this module returns is in source-frame units.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
import tempfile

import av
import fsspec
import numpy as np

from vidcorpus.errors import DecodeError
from vidcorpus.ingest.segments import TRANSITION, DroppedSegment, ShotSplit, drop_transitions, trim_shots
from vidcorpus.ingest.cut_evidence import confirmed_cuts, record_cuts, reported_by
from vidcorpus.ingest.dissolve import blend_settings, drop_blends
from vidcorpus.ingest.flash import FlashWatch
from vidcorpus.ingest.thumbnail_jumps import thumbnail_jumps
from vidcorpus.ingest.transnet import TransNetRun
from vidcorpus.ingest.transnet_input import source_frame as transnet_source
from vidcorpus.media import clockwise_rotation, detection_size, displayed_size
from vidcorpus.storage import is_local_fs


@contextlib.contextmanager
def local_copy(url: str):
    """A local path for libraries that need one; remote files are copied to a temp file."""
    fs, path = fsspec.core.url_to_fs(url)
    if is_local_fs(fs):
        yield path
        return
    suffix = os.path.splitext(path)[1]
    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
        fs.get_file(path, tmp.name)
        yield tmp.name


def first_frame_rotation(path: str) -> int:
    """Clockwise degrees the video's frames need to be upright (its display matrix), from its first frame."""
    try:
        with av.open(path) as c:
            frame = next(c.decode(video=0), None)
    except av.error.FFmpegError:
        return 0
    return clockwise_rotation(frame) if frame is not None else 0


@dataclass
class DetectorPass:
    """What the detectors found over frames ``first`` to ``end - 1``: the cuts, which of them the
    histogram detector reported and which the others did (``ingest/cut_evidence.py`` weighs them),
    and per frame the flash watch's thumbnails and fine detail (rows from ``first``)."""

    first: int
    end: int
    cuts: list[int]
    histogram_cuts: set[int]
    other_cuts: list[int]
    thumbs: np.ndarray | None = None
    detail: np.ndarray | None = None

    def owned(self, start: int, end: int) -> "DetectorPass":
        """The part of this pass over frames ``start`` to ``end - 1`` (a chunk's own frames)."""
        end = min(end, self.end)
        inside = lambda cs: [c for c in cs if start <= c < end]  # noqa: E731
        rows = slice(start - self.first, end - self.first)
        return DetectorPass(start, end, inside(self.cuts), set(inside(self.histogram_cuts)), inside(self.other_cuts),
                            None if self.thumbs is None else self.thumbs[rows],
                            None if self.detail is None else self.detail[rows])

    @staticmethod
    def join(parts: list["DetectorPass"]) -> "DetectorPass":
        """Consecutive parts (each starting where the last ended) as one pass from frame 0."""
        cat = lambda xs: None if any(x is None for x in xs) else np.concatenate(xs)  # noqa: E731
        return DetectorPass(0, parts[-1].end, [c for p in parts for c in p.cuts],
                            {c for p in parts for c in p.histogram_cuts}, [c for p in parts for c in p.other_cuts],
                            cat([p.thumbs for p in parts]), cat([p.detail for p in parts]))


def _scaled_pyav_stream(path: str, downscale: int, on_frame=None, rotation: int | None = None,
                        start: int = 0, index=None, nvdec: bool = False):
    """scenedetect's PyAV stream, returning frames already shrunk (and BGR) by FFmpeg's scaler, upright.

    ``on_frame`` sees every decoded ``av.VideoFrame`` (skipped ones too): other detectors read the
    same decode instead of decoding again. ``rotation``: the clockwise turn the frames need (the
    probe's); None reads it from the first frame. ``start`` (with a ``vidcorpus.frame_index``
    index): the stream begins at the last keyframe at or before that frame, and its positions are
    still the frames' numbers from the start of the file (chunked detection, ingest/split_chunks.py).
    ``nvdec``: on the GPU's video decoder (split.decoder), for an upright source only (NVDEC's frames
    carry no display matrix)."""
    # inside: scenedetect and cv2 only in the workers that detect shots (the runner imports split_stage -> this module)
    from vidcorpus.ingest.scaled_stream import ScaledStream

    turn = first_frame_rotation(path) if rotation is None else rotation
    return ScaledStream(path, lambda w, h: detection_size(*displayed_size(w, h, turn), downscale), turn, start, index,
                        on_frame, nvdec=nvdec and not turn)


def _detectors(cfg, min_len: int) -> list:
    # inside: scenedetect and cv2 only in the workers that detect shots (the runner imports split_stage -> this module)
    from scenedetect import HashDetector

    # inside: scenedetect, as above: its detectors with the same scores in fewer passes (ingest/exact_scores.py)
    from vidcorpus.ingest.exact_scores import (ExactAdaptiveDetector, ExactContentDetector,
                                               ExactContextualHistogramDetector)

    make = {
        "adaptive": lambda: ExactAdaptiveDetector(adaptive_threshold=cfg.adaptive_threshold, min_scene_len=min_len),
        "content": lambda: ExactContentDetector(threshold=cfg.content_threshold, min_scene_len=min_len),
        # judged against about a second of the shot's own changes (min_len is a third of a second)
        "histogram": lambda: ExactContextualHistogramDetector(cfg.histogram_threshold, min_len, context=3 * min_len),
        "hash": lambda: HashDetector(threshold=cfg.hash_threshold, min_scene_len=min_len),
    }
    return [make[name]() for name in dict.fromkeys(cfg.detectors) if name in make]  # transnetv2: ingest/transnet.py


def seconds_to_frames(seconds: float, fps: float) -> int:
    return max(1, round(seconds * fps))


def detect_shots(path: str, cfg, fps: float | None = None, max_seconds: float | None = None,
                 transnet: TransNetRun | None = None) -> list[tuple[int, int]]:
    """Inclusive (first_frame, last_frame) of each shot: hard cuts and, with histogram/hash, fades."""
    return detect_segments(path, cfg, fps, max_seconds, transnet).shots


def detect_segments(path: str, cfg, fps: float | None = None, max_seconds: float | None = None,
                    transnet: TransNetRun | None = None, rotation: int | None = None) -> ShotSplit:
    """Shots, the transitions dropped between them, and the frames read (every frame is in one or the other).

    ``fps`` converts the second-valued settings to frames; the stream's own rate is used when None.
    ``max_seconds`` bounds the decoding: a stream that runs longer (whatever its headers declared)
    is refused as ``too_long`` once that many seconds of frames were read.
    ``transnet`` (with detector transnetv2) reads the same decode; its hard cuts join the others and
    its gradual transitions are cut out of the shots (``transnet.spans`` lists them afterwards).
    ``rotation``: the clockwise turn that makes the frames upright (the probe's ``rotation``; None
    reads the display matrix): the detectors see the picture as it is shown.
    """
    thumbs_needed = cfg.flash_filter or cfg.dissolve_spans or cfg.histogram_evidence or cfg.jump_cuts
    flashes = FlashWatch() if thumbs_needed and cfg.backend == "pyav" else None
    try:
        video = open_detection_stream(path, cfg, flashes, transnet, rotation)
        fps = fps or float(video.frame_rate)
        max_frames = int(max_seconds * fps) + 1 if max_seconds else None
        found = run_detectors(video, cfg, fps, max_frames + 1 if max_frames else None, flashes)
        if max_frames and found.end > max_frames:
            raise DecodeError(f"the stream runs past ingest.max_duration_s ({max_seconds:.0f} s) "
                              "although its headers did not say so", "too_long")
    except BaseException:
        if transnet:  # its worker thread holds decoded frames: let it end
            with contextlib.suppress(Exception):
                transnet.stream.close()
        raise
    return segments_from(found, cfg, fps, transnet)


def open_detection_stream(path: str, cfg, flashes: FlashWatch | None = None, transnet: TransNetRun | None = None,
                          rotation: int | None = None, start: int = 0, index=None):
    """The stream the detectors read (frames from ``start`` with an index: ``_scaled_pyav_stream``);
    the flash watch and TransNetV2 see every decoded frame of it."""
    # inside: scenedetect and cv2 only in the workers that detect shots (the runner imports split_stage -> this module)
    from scenedetect import open_video

    readers = [r.push_frame for r in (transnet.stream if transnet else None, flashes) if r is not None]
    try:
        if cfg.backend == "pyav":
            stream = _scaled_pyav_stream(path, cfg.downscale, (lambda f: [r(f) for r in readers]) if readers else None,
                                         rotation, start, index, cfg.decoder == "nvdec")
            stream.transnet_stream = transnet.stream if transnet else None  # the batched reader feeds it itself
            if transnet:  # what its 48x27 frames are shrunk from, on either path (the detectors' by default)
                transnet.stream.source_frame = transnet_source(*stream.coded_size, stream.turn)
            return stream
        return open_video(path, backend="opencv")
    except Exception as e:  # noqa: BLE001 - scenedetect wraps many decoder errors
        raise DecodeError(f"cannot open for shot detection: {e}") from e


def run_detectors(video, cfg, fps: float, end_frame: int | None, flashes: FlashWatch | None = None,
                  first: int = 0, batched: bool = True) -> "DetectorPass":
    """What PySceneDetect's detectors (and ``flashes``, fed by the same stream) find reading ``video``
    from where it stands (frame ``first``) to ``end_frame`` (exclusive; None: its end). The pyav
    stream is read in batches (``ingest/detect_batches.py``) unless ``batched`` is False or
    ``split.frame_skip`` is set: then by PySceneDetect's ``SceneManager``, a frame at a time (the
    same cuts; tests/test_detect_batches.py compares the two)."""
    # inside: scenedetect and cv2 only in the workers that detect shots (the runner imports split_stage -> this module)
    from scenedetect import SceneManager

    min_len = seconds_to_frames(cfg.min_shot_seconds, fps)
    detectors = [record_cuts(d) for d in _detectors(cfg, min_len)]
    if batched and cfg.backend == "pyav" and not cfg.frame_skip:  # batches of frames, not SceneManager's one at a time
        # inside: cv2 and scenedetect, as above
        from vidcorpus.ingest.detect_batches import detect_batched, plan_for

        try:
            plan, feed = plan_for(video, detectors, video.transnet_stream, flashes), None
            if (where := _decode_in_child(cfg, video.transnet_stream, video.coded_size)) != "off":
                # inside: the child's side only where it runs
                from vidcorpus.ingest.decode_process import child_feed

                feed = child_feed(video, plan, end_frame, required=where == "on")
            detect_batched(video, detectors, end_frame, plan, video.transnet_stream, flashes, feed)
        except DecodeError:
            raise
        except Exception as e:  # noqa: BLE001 - decoder and detector errors alike
            raise DecodeError(f"shot detection failed: {e}") from e
        return _pass_of(first, video, sorted({c for d in detectors for c in d.reported}), detectors, flashes)
    manager = SceneManager()
    if cfg.backend == "pyav":
        manager.auto_downscale = False  # the stream already hands out small frames
        manager.downscale = 1
    elif cfg.downscale > 0:
        manager.auto_downscale = False
        manager.downscale = cfg.downscale
    for detector in detectors:
        manager.add_detector(detector)
    try:
        manager.detect_scenes(video, frame_skip=cfg.frame_skip, show_progress=False, end_time=end_frame)
    except Exception as e:  # noqa: BLE001
        raise DecodeError(f"shot detection failed: {e}") from e
    scenes = manager.get_scene_list(start_in_scene=True)
    return _pass_of(first, video, sorted({start.frame_num for start, _end in scenes[1:]}), detectors, flashes)


# split.decode_process auto: where a child was measured to help (360p on H100 hosts: in process the
# GIL held default + TransNetV2 at 0.50 to 0.63 of decode-only, in a child 0.59 to 0.72); at 540p and
# 720p one process reached 0.70 to 0.96 and a child was not measured (docs/benchmarks.md, fifth round)
CHILD_MAX_PIXELS = 640 * 360


def _decode_in_child(cfg, transnet_stream, coded_size: tuple[int, int]) -> str:
    """``split.decode_process`` for ``detect_batched``: auto decodes in a child process where TransNetV2
    runs on a GPU and the frames are at most ``CHILD_MAX_PIXELS``, if a child can be had."""
    if cfg.decode_process == "auto":
        gpu = transnet_stream is not None and str(transnet_stream.device) != "cpu"
        return "if-possible" if gpu and coded_size[0] * coded_size[1] <= CHILD_MAX_PIXELS else "off"
    return cfg.decode_process


def _pass_of(first: int, video, cuts: list[int], detectors: list, flashes: FlashWatch | None) -> DetectorPass:
    """The pass over ``video`` from frame ``first`` to where it stands: ``cuts``, who reported them,
    the flash watch's thumbnails and detail."""
    theirs, others = reported_by(detectors)
    return DetectorPass(first, video.frame_number, cuts, theirs, others,
                        flashes.thumbs() if flashes else None, flashes.detail() if flashes else None)


def segments_from(found: DetectorPass, cfg, fps: float, transnet: TransNetRun | None = None) -> ShotSplit:
    """The source's frames 0..found.end-1 split at what the detectors found (one pass over the
    source, or the chunks of ``ingest/split_chunks.py`` joined): flashes and unconfirmed histogram
    cuts left out, shots, and the transitions and blends dropped between them."""
    total = found.end
    min_len = seconds_to_frames(cfg.min_shot_seconds, fps)
    thumbs = found.thumbs[:total] if found.thumbs is not None else None
    detail = found.detail[:total] if found.detail is not None else None
    learned = transnet.finish(total).cuts if transnet else []
    jumps = thumbnail_jumps(thumbs, min_len) if thumbs is not None and cfg.jump_cuts else []  # missed jump cuts
    cuts = sorted({*found.cuts, *learned, *jumps})
    if thumbs is not None and cfg.flash_filter:
        cuts = FlashWatch.cuts_without_flashes(thumbs, cuts)
    if thumbs is not None and cfg.histogram_evidence:  # a cut only the histogram detector saw needs a jump or a blend
        cuts = confirmed_cuts(cuts, found.histogram_cuts, found.other_cuts, [*learned, *jumps], thumbs, min_len,
                              blend_settings(cfg, fps), detail)
    cuts = _merge_close(cuts, min_len)
    bounds = [0, *[c for c in cuts if 0 < c < total], total]
    segments = [(a, b - 1) for a, b in zip(bounds, bounds[1:]) if b > a]
    # A short segment between two detected cuts is the transition itself (a fade or dissolve seen by
    # both detectors), not a shot: training on half-blended frames teaches the model dissolves.
    shots, dropped = drop_transitions(segments, seconds_to_frames(cfg.transition_max_seconds, fps))
    if transnet:  # its gradual transitions are cut out of the shots: dropped segments in its own name
        shots = transnet.exclude(shots, min_len)
        dropped += [DroppedSegment(a, b, TRANSITION, "transnetv2") for a, b in transnet.spans]
    if thumbs is not None and cfg.dissolve_spans:  # the blended frames around each cut leave the shots too
        shots, dropped = drop_blends(shots, dropped, thumbs, min_len, blend_settings(cfg, fps), detail,
                                     transnet.sees_transition if transnet else None)
    return ShotSplit(shots, dropped, total)


def _merge_close(cuts: list[int], min_gap: int) -> list[int]:
    """Two detectors can report the same transition a few frames apart: keep the first."""
    merged: list[int] = []
    for c in cuts:
        if not merged or c - merged[-1] >= min_gap:
            merged.append(c)
    return merged


def split_long(first: int, last: int, fps: float, max_seconds: float) -> list[tuple[int, int]]:
    """Cut a shot longer than max_seconds into near-equal pieces."""
    n = last - first + 1
    max_frames = max(1, int(max_seconds * fps))
    if n <= max_frames:
        return [(first, last)]
    pieces = -(-n // max_frames)
    size = -(-n // pieces)
    return [(s, min(s + size - 1, last)) for s in range(first, last + 1, size)]


def plan_clips(shots: list[tuple[int, int]], fps: float, cfg) -> tuple[list[tuple[int, int]], list[DroppedSegment]]:
    """Shots -> (clip frame ranges, the trimmed ends and emptied shots as dropped segments)."""
    trimmed, dropped = trim_shots(shots, cfg.trim_frames)
    ranges = [r for a, b in trimmed for r in split_long(a, b, fps, cfg.max_clip_seconds)]
    return ranges, dropped
