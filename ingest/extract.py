"""Cut clips out of their source, in one of two modes recorded per clip (``extract_mode``).

``precise``: decode the source once for all of its clips and re-encode each shot's exact frames
(H.264; optional target short side and frame rate). Slow, but cuts on the frame the detector found.

``copy``: no decoding: the compressed packets from the keyframe at or before the shot start up to
the shot end are remuxed into the clip. Fast, but the clip starts on that keyframe (possibly a few
frames of the previous shot) and may end a few frames early (frames whose decoding needs later
packets are left out); the row's frame range and clip id are rewritten to what was really written.
A source that cannot be stream-copied (no timestamps, odd container) falls back to precise.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from fractions import Fraction
from typing import ClassVar, Iterator

import av
import cv2
from av.video.frame import PictureType
import numpy as np

from vidcorpus.errors import DecodeError
from vidcorpus.image_clip import image_clip
from vidcorpus.ids import clip_id, is_safe_key
from vidcorpus.ingest.exact_copy import copy_fields, exact_copy_plan
from vidcorpus.ingest.segments import NOT_EXTRACTED, with_dropped
from vidcorpus.ingest.stream_copy import CopyUnsupported, copy_clips, keyframe_indices, stream_rate
from vidcorpus.media import save_jpeg, uniform_indices, upright_frame
from vidcorpus.nvdec import NvdecShare
from vidcorpus.stage import Resources, Stage
from vidcorpus.frame_seek import to_rgb
from vidcorpus.source_frames import decode_source_range, decoder_for, target_size
from vidcorpus.stills import encode_stills, still_size
from vidcorpus.storage import write_atomic


class _ClipWriter:
    """One open H.264 encoder writing a clip into memory, fed source frames one by one.

    With ``out_fps`` set, frames are resampled by time (each output instant takes the source frame
    showing then), so a 30 fps shot becomes an 8 fps clip of the same duration.
    """

    def __init__(self, fps: float, codec: str, crf: int, preset: str = "superfast",
                 short_side: int | None = None, out_fps: float | None = None,
                 source_frames: int | None = None, keyframes_at: int = 0, stills_at: int = 0,
                 still_short_side: int = 0, threads: int = 1):
        self.buf = io.BytesIO()
        self.container = av.open(self.buf, mode="w", format="mp4")
        self.in_rate = Fraction(fps).limit_denominator(1001)
        self.rate = Fraction(out_fps).limit_denominator(1001) if out_fps else self.in_rate
        self.stream = self.container.add_stream(codec, rate=self.rate)
        self.stream.pix_fmt = "yuv420p"
        # mbtree=0: with x264's macroblock tree, the same frames encoded twice in one process gave
        # different bytes (clips shorter than the lookahead); a rerun must reproduce a clip byte for
        # byte. It costs a few percent of size at the same crf.
        self.stream.options = {"crf": str(crf), "preset": preset, "forced-idr": "1", "x264-params": "mbtree=0"}
        # Threads per encoder (split.clip_threads): clips are encoded in many tasks at once, so x264's
        # own choice (about 1.5 threads per core, per encoder) only oversubscribes the cores; a fixed
        # count also makes the bytes the same on every machine (x264's output depends on it).
        self.stream.codec_context.thread_count = threads
        self.short_side = short_side
        # Keyframes where the model scorers will sample (first, middle, last for K=3): a scorer then
        # decodes K frames instead of the whole clip (vidcorpus.frame_seek). Costs a few bytes.
        self.key_frames: set[int] = set()
        expected = math.ceil(Fraction(source_frames) * self.rate / self.in_rate) if source_frames else 0
        if keyframes_at and expected:
            self.key_frames = set(uniform_indices(expected, keyframes_at))
        # Stills (vidcorpus.stills): the frames the scorers will sample, kept as they go to the
        # encoder, shrunk to still_short_side; written only if the clip ends with the expected length.
        self.stills_at = stills_at if expected and still_short_side else 0
        self.still_frames = set(uniform_indices(expected, stills_at)) if self.stills_at else set()
        self.still_short_side = still_short_side
        self.stills: dict[int, np.ndarray] = {}
        self.seen = 0  # source frames offered
        self.frames = 0  # frames encoded
        self.first: np.ndarray | None = None

    def add(self, frame: av.VideoFrame) -> None:
        if self.seen == 0:
            self.stream.width, self.stream.height = target_size(frame.width, frame.height, self.short_side)
        self.seen += 1
        # Emit one output frame per output instant that falls inside this source frame's interval.
        while self.frames / self.rate < self.seen / self.in_rate:
            self._encode(frame)

    def _encode(self, frame: av.VideoFrame) -> None:
        if (frame.width, frame.height) != (self.stream.width, self.stream.height):
            frame = frame.reformat(width=self.stream.width, height=self.stream.height, interpolation="AREA")
        if self.frames == 0:
            self.first = to_rgb(frame)
        # Renumber: decoders can hand out frames whose time base changes mid-stream (VP9 in WebM).
        frame.pts = self.frames
        frame.time_base = 1 / self.rate
        if self.frames in self.still_frames:
            w, h = still_size(frame.width, frame.height, self.still_short_side)
            rgb = to_rgb(frame)  # full size, then OpenCV's area filter (swscale's "area" aliased on tests)
            if (w, h) != (frame.width, frame.height):
                rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
            self.stills[self.frames] = rgb
        frame.pict_type = PictureType.I if self.frames in self.key_frames else PictureType.NONE
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def stills_jpeg(self) -> bytes | None:
        """The stills file of the clip as written (call after close), or None when the clip's frame
        count differs from the one expected (the sampled positions moved) or no stills were asked for."""
        if not self.stills_at:
            return None
        wanted = uniform_indices(self.frames, self.stills_at)
        if not wanted or any(i not in self.stills for i in wanted):
            return None
        return encode_stills([self.stills[i] for i in wanted])

    def close(self) -> bytes:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        return self.buf.getvalue()


def _write(url: str, data: bytes) -> None:
    """Write a clip file whole or not at all (a full disk or a kill leaves no truncated clip under the
    final name). No fsync: a clip lost to a power cut is re-extracted; thousands a job would each wait."""
    write_atomic(url, data, fsync=False)


def _clip_frames(path: str, rows: list[dict], threads: int,
                 nvdec: str | None = None) -> Iterator[tuple[int, av.VideoFrame]]:
    """(source frame index, frame) for every frame of the rows' ranges, in order, through this
    process's source cursor (``source_frames.decode_source_range``): between the ranges (clips the
    recipe dropped, clips stream-copied) it seeks past whole keyframe intervals and skips the
    non-reference frames, so only what the clips need and the frames they refer to are decoded."""
    runs: list[list[int]] = []
    for r in sorted(rows, key=lambda r: r["first_frame"]):
        if runs and r["first_frame"] <= runs[-1][1] + 1:
            runs[-1][1] = max(runs[-1][1], r["last_frame"])
        else:
            runs.append([r["first_frame"], r["last_frame"]])
    for first, last in runs:
        yield from decode_source_range(path, first, last, range(first, last + 1), threads, nvdec)


def _first_frame(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as c:
        for frame in c.decode(video=0):
            return to_rgb(frame)
    raise DecodeError("copied clip does not decode")


class ExtractStage(NvdecShare, Stage):
    """Sets clip_path (mp4 or jpg), first_frame_path and extract_mode for every clip row the recipe
    keeps (filter before you encode: it runs after the decision; dropped clips keep no file, their
    rows say ``extract_mode = 'deferred'``). Rows that already have a file pass through."""

    name: ClassVar[str] = "extract"
    resources: ClassVar[Resources] = Resources(cpus=0.5)
    kept_only: ClassVar[bool] = True
    undecided_too: ClassVar[bool] = True  # used alone (no recipe decided), it extracts every clip

    def process_rows(self, rows: list[dict]) -> list[dict]:
        by_source: dict[str, list[dict]] = defaultdict(list)
        out: list[dict] = [r for r in rows if r.get("clip_path")]
        for row in (r for r in rows if not r.get("clip_path")):
            by_source[row["source_path"]].append(row)
        for source_rows in by_source.values():
            if source_rows[0]["media_type"] == "image":
                out.extend(r for row in source_rows for r in self.safe_call(self._image, row))
                continue
            try:
                out.extend(self._video(source_rows))
            except Exception as exc:  # noqa: BLE001 - the whole source failed to decode
                out.extend(self.fail(r, exc) for r in source_rows)
        return out

    def _clip_urls(self, clip: str, ext: str) -> tuple[str, str]:
        if not is_safe_key(clip):  # clip ids name files: never a path from input
            raise ValueError(f"clip id {clip!r} is not a safe key")
        return self.config.url("staging", "clips", f"{clip}{ext}"), self.config.url("staging", "clips", f"{clip}.first.jpg")

    def _image(self, row: dict) -> dict:
        return image_clip(row, self.config)

    def _video(self, rows: list[dict]) -> list[dict]:
        rows = sorted(rows, key=lambda r: r["first_frame"])
        if self.config.split.extract_mode == "copy":
            try:
                return self._copy(rows)
            except (CopyUnsupported, av.error.FFmpegError, ValueError):
                pass  # re-encode instead; the rows record 'precise'
        copied: list[dict] = []
        if self.config.split.extract_mode == "auto":
            try:
                copied, rows = self._exact_copies(rows)
            except (CopyUnsupported, av.error.FFmpegError, ValueError):
                copied = []  # re-encode them all
        return copied + (self._precise(rows) if rows else [])

    def _exact_copies(self, rows: list[dict]) -> tuple[list[dict], list[dict]]:
        """(rows written by copying packets, rows left to re-encode): ingest/exact_copy.py says which qualify."""
        path = rows[0]["source_path"]
        wanted, index, info = exact_copy_plan(path, rows, self.config.split)
        if not wanted:
            return [], rows
        results = copy_clips(path, [(r["first_frame"], r["last_frame"]) for r in wanted], index=index)
        done: list[dict] = []
        for row, res in zip(wanted, results):
            if res is None or (res[1], res[2]) != (row["first_frame"], row["last_frame"]):
                continue  # its last frames need packets past the shot: re-encoded
            clip_url, first_url = self._clip_urls(row["clip_id"], ".mp4")
            _write(clip_url, res[0])
            save_jpeg(_first_frame(res[0]), first_url)
            done.append(dict(row, clip_path=clip_url, first_frame_path=first_url, **copy_fields(row, info)))
        copied = {r["clip_id"] for r in done}
        return done, [r for r in rows if r["clip_id"] not in copied]

    def _copy(self, rows: list[dict]) -> list[dict]:
        """Stream-copy the rows whose keyframe lies close enough before their start; re-encode the rest."""
        path = rows[0]["source_path"]
        fps = stream_rate(path)
        keys = keyframe_indices(path, fps)
        if not keys:
            raise CopyUnsupported("no keyframes")
        max_lead = self.config.split.copy_max_lead_seconds
        near, far = [], []
        for r in rows:
            key = max([k for k in keys if k <= r["first_frame"]], default=keys[0])
            lead_ok = max_lead is None or r["first_frame"] - key <= max_lead * float(fps)
            (near if lead_ok else far).append(r)
        done = self._precise(far) if far else []
        if not near:
            return done
        results = copy_clips(path, [(r["first_frame"], r["last_frame"]) for r in near], keys)
        for row, res in zip(near, results):
            if res is None:
                done.append(self.fail(row, DecodeError("no packets of the clip could be copied")))
                continue
            data, a, b = res
            fps = row["fps"] or 25.0
            # a copied clip can end before its shot (packets past it are not decodable alone): say so
            row = with_dropped(row, b + 1, row["last_frame"], NOT_EXTRACTED, "extract")
            row = dict(row, clip_id=clip_id(row["source_id"], a, b), first_frame=a, last_frame=b,
                       start_s=a / fps, end_s=(b + 1) / fps)
            clip_url, first_url = self._clip_urls(row["clip_id"], ".mp4")
            _write(clip_url, data)
            save_jpeg(_first_frame(data), first_url)
            done.append(dict(row, clip_path=clip_url, first_frame_path=first_url, extract_mode="copy"))
        return done

    def _precise(self, rows: list[dict]) -> list[dict]:
        cfg = self.config.split
        starts = {r["first_frame"]: r for r in rows}
        ends = {r["last_frame"]: r for r in rows}
        writers: dict[str, _ClipWriter] = {}
        done: list[dict] = []
        fps = float(rows[0].get("fps") or 25)  # the probe's: the stream's average (or guessed) rate
        i = -1
        try:
            for i, frame in _clip_frames(rows[0]["source_path"], rows, **decoder_for(rows, self.config.filters)):
                frame = upright_frame(frame)  # phone footage: clips carry upright pixels, no matrix
                if i in starts:
                    r = starts[i]
                    writers[r["clip_id"]] = _ClipWriter(
                        fps, cfg.clip_codec, cfg.clip_crf, cfg.clip_preset, cfg.clip_short_side, cfg.clip_fps,
                        source_frames=r["last_frame"] - r["first_frame"] + 1,
                        keyframes_at=self.config.filters.frames_per_clip if cfg.keyframes_at_samples else 0,
                        stills_at=self.config.filters.frames_per_clip,
                        still_short_side=self.config.filters.still_size, threads=cfg.clip_threads)
                for w in writers.values():
                    w.add(frame)
                if i in ends:
                    row = ends[i]
                    done.append(self._finish(row, writers.pop(row["clip_id"])))
        except (DecodeError, av.error.FFmpegError) as e:  # the source's decoder or a clip's encoder
            if i < 0:  # nothing decoded: the source's own one-line error
                raise
            raise DecodeError(f"decode failed at frame {i}: {e}") from e
        # Frames the container announced but never delivered: close what was started, fail the rest.
        for clip, w in writers.items():
            row = next(r for r in rows if r["clip_id"] == clip)
            if w.frames:
                end = row["first_frame"] + w.seen - 1
                row = with_dropped(row, end + 1, row["last_frame"], NOT_EXTRACTED, "extract")
                done.append(self._finish(dict(row, last_frame=end), w))
        got = {r["clip_id"] for r in done}
        missing = [r for r in rows if r["clip_id"] not in got]
        done.extend(self.fail(r, DecodeError("clip frames could not be decoded")) for r in missing)
        return done

    def _finish(self, row: dict, writer: _ClipWriter) -> dict:
        clip_url, first_url = self._clip_urls(row["clip_id"], ".mp4")
        _write(clip_url, writer.close())
        save_jpeg(writer.first, first_url)
        stills = writer.stills_jpeg()
        stills_url = None
        if stills is not None:
            stills_url = self.config.url("staging", "clips", f"{row['clip_id']}.stills.jpg")
            _write(stills_url, stills)
        return dict(row, clip_path=clip_url, first_frame_path=first_url, extract_mode="precise", stills_path=stills_url,
                    clip_width=writer.stream.width, clip_height=writer.stream.height,
                    clip_fps=float(writer.rate), clip_frames=writer.frames)
