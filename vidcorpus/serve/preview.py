"""Playable previews of clips that have no file.

Filter before you encode (issue 22) leaves the clips a recipe drops unextracted, and those are the
clips an auditor most wants to watch ("did the filter get this one wrong?"). The server renders such
a clip once from its recorded source frames (the same frames, counted in decode order as the
splitter counts them), at most ``MAX_SECONDS`` of it and ``WIDTH`` pixels wide, into a folder of its
own, and serves that file with range requests like any other. Nothing is written to the catalog:
a preview is not an extraction (`vidcorpus sync` extracts clips a recipe keeps).
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

from vidcorpus.serve import clip_bytes
from vidcorpus.storage import publishing

MAX_SECONDS = 10.0
WIDTH = 480


class Previews:
    def __init__(self, folder: str | None = None):
        self.folder = Path(folder or tempfile.mkdtemp(prefix="vidcorpus-previews-"))
        self.lock = threading.Lock()  # one encode at a time: previews are for people, not for load

    def window(self, clip_id: str, source: str, first: int, last: int, fps: float) -> "clip_bytes.Window":
        out = self.folder / f"{clip_id}.mp4"
        if not out.exists():
            with self.lock:
                if not out.exists():
                    self._render(out, source, first, last, fps)
        return clip_bytes.file_window(str(out))

    @staticmethod
    def _render(out: Path, source: str, first: int, last: int, fps: float) -> None:
        # inside: av loads only when a preview is rendered (the web app serves without it)
        from vidcorpus.media import encode_video
        from vidcorpus.source_frames import decode_source_range

        fps = fps or 25.0
        last = min(last, first + max(1, int(MAX_SECONDS * fps)) - 1)

        def frames():
            for _i, frame in decode_source_range(source, first, last):
                w = min(WIDTH, frame.width) // 2 * 2
                h = max(2, round(frame.height * w / frame.width / 2) * 2)
                yield frame.reformat(width=w, height=h, format="rgb24").to_ndarray()

        try:
            with publishing(out, fsync=False, keep_extension=True) as part:  # a cache: no fsync; PyAV reads .mp4
                encode_video(frames(), fps, part)
        except StopIteration as e:  # not one frame decoded
            raise clip_bytes.MediaError("the source has none of the clip's frames") from e
        except Exception as e:  # noqa: BLE001 - a broken or missing source: one line on the page
            raise clip_bytes.MediaError(f"cannot render a preview from the source: {e}") from e
