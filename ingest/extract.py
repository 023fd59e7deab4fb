"""Cut clips out of their source: re-encode each shot's exact frames (H.264) and save its first frame.

Re-encoding is slower than stream copy but cuts on the exact frame the detector found; the
source is decoded once for all of its clips (rows of one source are handled together).
"""

from __future__ import annotations

import io
from collections import defaultdict
from fractions import Fraction
from typing import ClassVar

import av
import fsspec
import numpy as np
from PIL import Image

from vidcorpus.errors import DecodeError
from vidcorpus.media import save_jpeg
from vidcorpus.stage import Resources, Stage


class _ClipWriter:
    """One open H.264 encoder writing a clip into memory, fed frame by frame."""

    def __init__(self, fps: float, codec: str, crf: int):
        self.buf = io.BytesIO()
        self.container = av.open(self.buf, mode="w", format="mp4")
        self.rate = Fraction(fps).limit_denominator(1001)
        self.stream = self.container.add_stream(codec, rate=self.rate)
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"crf": str(crf), "preset": "veryfast"}
        self.frames = 0
        self.first: np.ndarray | None = None

    def add(self, frame: av.VideoFrame) -> None:
        if self.frames == 0:
            self.stream.width = frame.width - frame.width % 2
            self.stream.height = frame.height - frame.height % 2
            self.first = frame.to_ndarray(format="rgb24")
        if frame.width % 2 or frame.height % 2:
            frame = frame.reformat(width=self.stream.width, height=self.stream.height)
        # Renumber: decoders can hand out frames whose time base changes mid-stream (VP9 in WebM).
        frame.pts = self.frames
        frame.time_base = 1 / self.rate
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> bytes:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        return self.buf.getvalue()


def _write(url: str, data: bytes) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(data)


class ExtractStage(Stage):
    """Sets clip_path (mp4 or jpg) and first_frame_path for every clip row."""

    name: ClassVar[str] = "extract"
    resources: ClassVar[Resources] = Resources(cpus=0.5)

    def process_rows(self, rows: list[dict]) -> list[dict]:
        by_source: dict[str, list[dict]] = defaultdict(list)
        for row in rows:
            by_source[row["source_path"]].append(row)
        out: list[dict] = []
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
        return self.config.url("staging", "clips", f"{clip}{ext}"), self.config.url("staging", "clips", f"{clip}.first.jpg")

    def _image(self, row: dict) -> dict:
        clip_url, first_url = self._clip_urls(row["clip_id"], ".jpg")
        with fsspec.open(row["source_path"], "rb") as f:
            img = np.asarray(Image.open(f).convert("RGB"))
        save_jpeg(img, clip_url, quality=95)
        save_jpeg(img, first_url)
        return dict(row, clip_path=clip_url, first_frame_path=first_url)

    def _video(self, rows: list[dict]) -> list[dict]:
        cfg = self.config.split
        rows = sorted(rows, key=lambda r: r["first_frame"])
        starts = {r["first_frame"]: r for r in rows}
        ends = {r["last_frame"]: r for r in rows}
        writers: dict[str, _ClipWriter] = {}
        done: list[dict] = []
        last_needed = max(r["last_frame"] for r in rows)
        with fsspec.open(rows[0]["source_path"], "rb") as f:
            try:
                container = av.open(f)
            except av.error.FFmpegError as e:
                raise DecodeError(f"cannot open video: {e}") from e
            with container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                fps = float(stream.average_rate or rows[0]["fps"] or 25)
                try:
                    for i, frame in enumerate(container.decode(stream)):
                        if i in starts:
                            writers[starts[i]["clip_id"]] = _ClipWriter(fps, cfg.clip_codec, cfg.clip_crf)
                        for w in writers.values():
                            w.add(frame)
                        if i in ends:
                            row = ends[i]
                            done.append(self._finish(row, writers.pop(row["clip_id"])))
                        if i >= last_needed:
                            break
                except av.error.FFmpegError as e:
                    raise DecodeError(f"decode failed at frame {i}: {e}") from e
        # Frames the container announced but never delivered: close what was started, fail the rest.
        for clip, w in writers.items():
            row = next(r for r in rows if r["clip_id"] == clip)
            if w.frames:
                done.append(self._finish(dict(row, last_frame=row["first_frame"] + w.frames - 1), w))
        got = {r["clip_id"] for r in done}
        missing = [r for r in rows if r["clip_id"] not in got]
        done.extend(self.fail(r, DecodeError("clip frames could not be decoded")) for r in missing)
        return done

    def _finish(self, row: dict, writer: _ClipWriter) -> dict:
        clip_url, first_url = self._clip_urls(row["clip_id"], ".mp4")
        _write(clip_url, writer.close())
        save_jpeg(writer.first, first_url)
        return dict(row, clip_path=clip_url, first_frame_path=first_url)
