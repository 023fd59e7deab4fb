"""CLIP scores: LAION aesthetic score, CLIP image-text alignment and the clip embedding, batched.

Per clip, filters.frames_per_clip frames (first, middle, last for 3; one for an image) are embedded
with the CLIP image tower and L2-normalised. Scores:
  aesthetic      mean over frames of the aesthetic head on each frame embedding (LAION scale ~1..10
                 with real weights; arbitrary with tiny random ones)
  aesthetic_min  minimum over frames of the same
  clip_text      cosine similarity of the normalised mean frame embedding and the normalised text
                 embedding of row["text"] (the original text); only when the text is non-empty
  clip_text_<version>_<kind>  the same against every caption of the row (e.g. clip_text_v1_long);
                 CaptionAlignStage adds these after captioning, from the stored embedding
The row also gets ``embedding`` (the normalised mean frame embedding, float32), ``embedding_model``
and ``content_sha256`` (of the clip file's bytes): the driver stores embeddings in Parquet and uses
both for duplicate detection (filters/dedup.py).

Throughput: the file is read and hashed, and its K frames decoded with PyAV, in worker processes
(filters.decode_threads; PyAV holds the GIL while decoding) that write centre squares into
shared-memory slots, several clips per task, while the GPU works on earlier frames. Workers open
clips without the stream-info probe's decoding and convert to RGB through one cached single-thread
swscale context (vidcorpus/frame_seek.py). Frames go to the device as uint8 through pinned memory;
crop, resize (bicubic, antialiased), scaling and normalisation run there (gpu_preprocess). On a GPU
the weights are bf16 (filters.clip_precision). The same code runs on the CPU for the tiny preset.
Clips from precise extraction carry a stills file (row ``stills_path``, vidcorpus/stills.py: the K
sampled frames as one small JPEG written during extraction): the workers then decode that instead
of the clip (the clip is still read and hashed). A missing or broken stills file falls back to
decoding the clip, at the same frame positions.

Model strings: "<clip_model>/<tag>" (e.g. "ViT-L-14/openai"), or the model name for a weights file;
the aesthetic score adds "+<head file stem>".
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import weakref
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import ClassVar

import numpy as np

from vidcorpus.config import clip_batch_size
from vidcorpus.errors import DecodeError
from vidcorpus.frame_seek import (FrameConverter, KeyframeDecoder, decode_frames_seeking, decode_in_order, open_video,
                                  to_rgb)
from vidcorpus.filters.scorers import clip_fps
from vidcorpus.media import is_image, load_image_rgb, uniform_indices
from vidcorpus.schemas import add_scores, score
from vidcorpus.stage import Resources, Stage
from vidcorpus.stills import decode_stills
from vidcorpus.storage import read_bytes

CLIP_SCORE_VERSION = "clip-v2"  # v2: crop/resize/normalise on the device instead of PIL


def caption_score_name(caption: dict) -> str:
    """Scorer name of the alignment with one caption: clip_text_<version>_<kind>, a plain identifier."""
    slug = re.sub(r"[^a-z0-9]+", "_", f"{caption.get('version') or ''}_{caption.get('kind') or ''}".lower()).strip("_")
    return f"clip_text_{slug}" if slug else "clip_text_caption"


def decode_wanted(data: bytes, wanted: list[int], convert: FrameConverter = to_rgb,
                  keyframes: KeyframeDecoder | None = None) -> dict[int, np.ndarray]:
    """RGB frames (``convert(frame)``) of the wanted indices of a video held in memory.

    First from the nearest keyframes (``vidcorpus.frame_seek``): clips extracted by vidcorpus carry
    keyframes at exactly these frames, so this decodes about K frames. Otherwise:

    Fast path: frames are indexed by presentation time (constant frame rate), and the decoder skips
    non-reference frames (FFmpeg's skip_frame=NONREF) except the wanted ones; reference frames are
    always decoded, so every wanted frame is exact. It decodes about half the frames of a typical
    H.264 clip with B-frames. If timestamps do not map onto the wanted indices (variable frame
    rate, missing pts), the clip is decoded again sequentially, counting frames.
    One thread per clip: the stage parallelises across clips in processes.
    """
    got = keyframes.decode(data, wanted, convert) if keyframes is not None else None  # e.g. NVDEC
    if got is None:
        got = decode_frames_seeking(data, wanted, convert)  # K decodes when keyframes sit at the sampled frames
    if got is None:
        got = _decode_by_pts(data, wanted, convert)
    if got is None:
        got = _decode_sequential(data, wanted, convert)
    return got


def _open(data: bytes):
    c = open_video(data)
    stream = c.streams.video[0]
    stream.thread_type = "SLICE"
    stream.codec_context.thread_count = 1
    return c, stream


def _decode_by_pts(data: bytes, wanted: list[int], convert: FrameConverter = to_rgb) -> dict[int, np.ndarray] | None:
    import av

    want = set(wanted)
    got: dict[int, np.ndarray] = {}
    seen_max = -1
    try:
        c, stream = _open(data)
        with c:
            cc = stream.codec_context
            fps = float(stream.average_rate or 0)
            if not fps or stream.time_base is None:
                return None
            tb = float(stream.time_base)
            t0 = stream.start_time or 0

            def index(pts: int) -> int:
                return round((pts - t0) * tb * fps)

            for packet in c.demux(stream):
                if packet.pts is not None:
                    cc.skip_frame = "DEFAULT" if index(packet.pts) in want else "NONREF"
                for frame in cc.decode(packet):
                    if frame.pts is None:
                        return None
                    i = index(frame.pts)
                    seen_max = max(seen_max, i)
                    if i in want and i not in got:
                        got[i] = convert(frame)
                if len(got) == len(want):
                    break
    except av.error.FFmpegError:
        return None  # the sequential decoder gives the error (or the frames before it)
    if any(w <= seen_max and w not in got for w in want):
        return None  # timestamps do not index frames one by one
    return got


def _decode_sequential(data: bytes, wanted: list[int], convert: FrameConverter = to_rgb) -> dict[int, np.ndarray]:
    """Every frame up to the last wanted one, counted in decode order; only the wanted converted."""
    import av

    got: dict[int, np.ndarray] = {}
    try:
        c, stream = _open(data)
        with c:
            for i, arr in decode_in_order(c, stream, wanted, convert):
                got[i] = arr
    except av.error.FFmpegError as e:
        if not got:
            raise DecodeError(f"decode failed: {e}") from e
    return got


def read_clip(row: dict) -> tuple[bytes | None, str]:
    """The clip file's bytes and their sha256 (one read; hashing costs ~0.05 ms for a 2 s clip).
    A video clip not extracted yet (filter before you encode) has no bytes: (None, a content id of
    its source and frame range); its frames come from the source (``clip_frame_list``)."""
    from vidcorpus.filters.source_scoring import from_source

    if from_source(row):
        from vidcorpus.source_frames import source_content_id

        return None, source_content_id(row)
    path = row.get("clip_path")
    if not path:
        raise DecodeError("row has no clip_path")
    data = read_bytes(path)
    return data, hashlib.sha256(data).hexdigest()


def clip_frame_list(row: dict, data: bytes | None, k: int, convert: FrameConverter = to_rgb,
                    keyframes: KeyframeDecoder | None = None) -> list[np.ndarray]:
    """The K frames of a clip held in memory, each ``convert(frame)``; an image is one frame (its RGB
    array goes through ``convert`` as an RGB VideoFrame). ``data`` None: a clip not extracted yet,
    whose frames are decoded from its source over its frame range (vidcorpus/source_frames.py).

    Video frames are first, middle and last for K=3 (uniform with ends for other K). Frame counts
    come from the row when extraction recorded them, else from the header.
    """
    if data is None:
        return _source_frame_list(row, k, convert)
    if is_image(row):
        rgb = load_image_rgb(io.BytesIO(data))
        if convert is to_rgb:
            return [rgb]
        import av

        return [convert(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24"))]
    path = row.get("clip_path")
    _fps, n = clip_fps(row, path) if (row.get("clip_frames") or row.get("last_frame") is not None) else (0.0, 0)
    if not n:
        from vidcorpus.media import probe_video

        n = probe_video(io.BytesIO(data))["n_frames"] or 0
    wanted = uniform_indices(n, k)
    if not wanted:
        raise DecodeError("clip has no frames")
    got = decode_wanted(data, wanted, convert, keyframes)
    if not got:
        raise DecodeError("no frame could be decoded")
    last = got[max(got)]  # containers can announce a frame more than they deliver
    return [got.get(i, last) for i in wanted]


def _source_frame_list(row: dict, k: int, convert: FrameConverter) -> list[np.ndarray]:
    """The K sampled frames of an unextracted clip, from one decode of its source."""
    from vidcorpus.source_frames import clip_geometry, stream_clip_frames

    wanted = uniform_indices(clip_geometry(row).frames, k)
    if not wanted:
        raise DecodeError("clip has no frames")
    ((_row, got),) = list(stream_clip_frames([row], {row["clip_id"]: wanted}))
    if not got:
        raise DecodeError("no frame could be decoded")
    last = got[max(got)]
    frames = [got.get(i, last) for i in wanted]
    if convert is to_rgb:
        return frames
    import av

    return [convert(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")) for f in frames]


def load_stills(row: dict, k: int) -> list[np.ndarray] | None:
    """The K sampled frames from the clip's stills file (vidcorpus/stills.py), or None when the row
    has none or the file is missing or broken: the caller then decodes the clip itself (the clip is
    the truth, the stills a cache of its sampled frames; both give the same frame positions)."""
    path = row.get("stills_path")
    if not path or is_image(row):
        return None
    w, h = row.get("clip_width"), row.get("clip_height")
    try:
        data = read_bytes(path)
        return decode_stills(data, k, w / h if w and h else None)
    except (OSError, DecodeError):
        return None


def scoring_frames(row: dict, data: bytes, k: int, convert: FrameConverter = to_rgb,
                   keyframes: KeyframeDecoder | None = None) -> tuple[list[np.ndarray], str]:
    """(the K frames the scorer embeds, where they came from: "stills" or "clip"). From the stills
    when the row has a readable stills file, else decoded from the clip's bytes ``data``."""
    stills = load_stills(row, k)
    if stills is None:
        return clip_frame_list(row, data, k, convert, keyframes), "clip"
    if convert is not to_rgb:
        import av

        stills = [convert(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")) for f in stills]
    return stills, "stills"


ROW_KEYS = ("clip_path", "media_type", "clip_frames", "first_frame", "last_frame", "fps", "clip_fps", "stills_path",
            "clip_width", "clip_height", "source_path", "sha256", "width", "height", "clip_id")
MAX_SIDE = 512  # center squares larger than this are shrunk (area filter) in the worker before shipping


def center_square(frames: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """The center square of (K, H, W, 3) frames (what the model's center crop keeps), at most max_side."""
    return np.ascontiguousarray(np.stack([_square(f, max_side) for f in frames]))


def _square(frame: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """The center square of one (H, W, 3) frame (a view when no shrinking is needed), at most max_side."""
    h, w = frame.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    sq = frame[top:top + side, left:left + side]
    if side > max_side:
        import cv2

        sq = cv2.resize(np.ascontiguousarray(sq), (max_side, max_side), interpolation=cv2.INTER_AREA)
    return sq


class ScaleToModel:
    """The model's eval resize and center crop done by FFmpeg's scaler while converting to RGB, so
    a frame leaves the decoder at the model's input size (the device then only normalises).

    Follows open_clip's eval transform as the model's preprocess config gives it: resize_mode
    'shortest' (short side to `size`, long side int(size * long / short), then center crop) or
    'squash' (both sides to `size`); interpolation 'bicubic' or 'bilinear' (swscale's filters, which
    widen when shrinking, like Pillow's). Not bit-identical to torchvision/Pillow resampling:
    tests bound the difference.
    """

    def __init__(self, size: int, interpolation: str = "bicubic", resize_mode: str = "shortest"):
        if resize_mode not in ("shortest", "squash"):
            raise ValueError(f"resize_mode {resize_mode!r} is not supported by the decoder's scaler")
        if interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"interpolation {interpolation!r} is not supported by the decoder's scaler")
        if isinstance(size, (tuple, list)):
            if len(set(size)) != 1:
                raise ValueError(f"image size {tuple(size)} is not square; the decoder's scaler makes squares")
            size = size[0]
        self.size, self.interpolation, self.resize_mode = int(size), interpolation.upper(), resize_mode

    def out_size(self, w: int, h: int) -> tuple[int, int]:
        s = self.size
        if self.resize_mode == "squash":
            return s, s
        if w <= h:
            return s, int(s * h / w)
        return int(s * w / h), s

    def __call__(self, frame) -> np.ndarray:
        from vidcorpus.frame_seek import reformatter

        ow, oh = self.out_size(frame.width, frame.height)
        arr = reformatter("clip_input").reformat(frame, ow, oh, "rgb24", interpolation=self.interpolation,
                                     threads=1).to_ndarray()
        s = self.size
        top, left = int(round((oh - s) / 2.0)), int(round((ow - s) / 2.0))
        return arr[top:top + s, left:left + s]


_SHM = None  # the worker process's view of the shared frame slots
_KEYDEC: KeyframeDecoder | None = None  # the worker's long-lived hardware decoder, if any


def _worker_init(shm_name: str, hwaccel: str | None = None) -> None:
    global _SHM, _KEYDEC
    import cv2
    from multiprocessing import shared_memory

    cv2.setNumThreads(1)
    _SHM = shared_memory.SharedMemory(name=shm_name)
    if hwaccel:
        try:
            _KEYDEC = KeyframeDecoder(hwaccel)
        except Exception as e:  # noqa: BLE001 - no such device here: decode on the CPU
            import logging

            logging.getLogger(__name__).warning("no %s video decoder (%s); decoding on the CPU", hwaccel, e)


def _picklable(exc: BaseException) -> BaseException:
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return DecodeError(f"{type(exc).__name__}: {exc}")


def _decode_to_slots(tasks: list[tuple[dict, int, int]], slot_bytes: int,
                     scale: ScaleToModel | None) -> list[tuple[tuple, str] | BaseException]:
    """Worker: for each (row, K, slot), read the clip (its sha256) and decode its K frames (from the
    stills file when there is a readable one, else from the clip) and write them into its slot,
    center squares (or, with `scale`, the model's input) one after the other; per clip (shape,
    sha256) or the exception that failed it (a bad clip fails its row only)."""
    out: list[tuple[tuple, str, bool] | BaseException] = []
    for row, k, slot in tasks:
        try:
            data, digest = read_clip(row)
            hw_before = _KEYDEC.clips if _KEYDEC is not None else 0
            frames, source = scoring_frames(row, data, k, scale or to_rgb, _KEYDEC)
            sq = frames if scale else [_square(f) for f in frames]
            shape = (len(sq), *sq[0].shape)
            view = np.ndarray(shape, dtype=np.uint8, buffer=_SHM.buf, offset=slot * slot_bytes)
            for i, f in enumerate(sq):
                view[i] = f
            del view
            out.append((shape, digest, _KEYDEC is not None and _KEYDEC.clips > hw_before, source == "stills"))
        except Exception as exc:  # noqa: BLE001
            out.append(_picklable(exc))
    return out


class FrameDecoder:
    """Decodes clips in worker processes (PyAV holds the GIL while decoding, so threads do not
    scale) into slots of one shared-memory block; the caller reads the frames in place and frees
    the slot once they are copied to the device. Several clips travel per worker task (fewer
    round trips through the pool; the main process spent ~0.5 ms of CPU per task).

    `scale`: frames leave the workers at the model's input size (ScaleToModel); None: center
    squares at most MAX_SIDE, resized on the device."""

    MAX_CLIPS_PER_TASK = 8

    def __init__(self, workers: int, k: int, n_slots: int, scale: ScaleToModel | None = None,
                 hwaccel: str | None = None):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import shared_memory

        self.k = k
        self.scale = scale
        side = scale.size if scale else MAX_SIDE
        self.slot_bytes = k * side * side * 3
        try:
            self.shm = shared_memory.SharedMemory(create=True, size=self.slot_bytes * n_slots)
        except OSError as e:
            raise RuntimeError(
                f"cannot allocate {self.slot_bytes * n_slots / 2**20:.0f} MiB of shared memory for frame decoding "
                f"({e}); give the worker a larger /dev/shm or lower filters.clip_batch_size / filters.decode_threads"
            ) from e
        self.n_slots = n_slots
        self.free = list(range(n_slots))
        self.workers = workers
        self.hwaccel = hwaccel
        self.hw_clips = 0  # clips whose frames the hardware decoder gave
        self.stills_clips = 0  # clips whose frames came from their stills file
        self.pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                        initargs=(self.shm.name, hwaccel))

    def submit_many(self, rows: list[tuple[dict, int]]) -> list[tuple[Future, int, int]]:
        """Queue (row, K) pairs, as many as there are free slots, several per task; per submitted
        row (future, position in the future's result, slot)."""
        rows = rows[:len(self.free)]
        if not rows:
            return []
        per_task = max(1, min(self.MAX_CLIPS_PER_TASK, len(rows) // self.workers))
        jobs: list[tuple[Future, int, int]] = []
        for start in range(0, len(rows), per_task):
            chunk = [({key: row.get(key) for key in ROW_KEYS}, k, self.free.pop())
                     for row, k in rows[start:start + per_task]]
            fut = self.pool.submit(_decode_to_slots, chunk, self.slot_bytes, self.scale)
            jobs.extend((fut, i, slot) for i, (_, _, slot) in enumerate(chunk))
        return jobs

    def result(self, job: tuple[Future, int, int]) -> tuple[tuple, str]:
        """(shape, sha256) of a submitted row; raises the row's own error (or BrokenProcessPool)."""
        fut, i, _slot = job
        res = fut.result()[i]
        if isinstance(res, BaseException):
            raise res
        shape, digest, hw, stills = res
        self.hw_clips += hw
        self.stills_clips += stills
        return shape, digest

    def frames(self, slot: int, shape: tuple) -> np.ndarray:
        return np.ndarray(shape, dtype=np.uint8, buffer=self.shm.buf, offset=slot * self.slot_bytes)

    def release(self, slot: int) -> None:
        self.free.append(slot)

    def decode_all(self, rows: list[dict]) -> int:
        """Decode rows in order through the slots and drop the frames; frames decoded (benchmarks)."""
        jobs: list[tuple[Future, int, int]] = []
        n = 0
        for j in range(len(rows)):
            if j >= len(jobs) or len(self.free) >= self.n_slots // 4:
                jobs += self.submit_many([(r, self.k) for r in rows[len(jobs):]])
            shape, _ = self.result(jobs[j])
            n += shape[0]
            self.release(jobs[j][2])
        return n

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        try:
            self.shm.close()
            self.shm.unlink()
        except (BufferError, FileNotFoundError):
            pass


def gpu_preprocess(frames: list[np.ndarray], size: int, mean_t, std_t, dtype, pin: bool):
    """(N, 3, size, size) model input from RGB uint8 frames, computed on the device of mean_t.

    open_clip's eval transform (resize the short side to `size`, bicubic; center crop; scale to
    0..1; normalise), reordered as crop-then-resize so only the kept pixels are resampled. Frames of
    one shape travel together as one uint8 tensor (pinned when `pin`, copied without blocking).
    mean_t and std_t are (1, 3, 1, 1) float32 tensors on the device, in 0..255 units.
    """
    import torch
    import torch.nn.functional as F

    device = mean_t.device
    groups: dict[tuple, list[int]] = {}
    for i, f in enumerate(frames):
        groups.setdefault(f.shape, []).append(i)
    parts = []
    for shape, idx in groups.items():
        h, w = shape[:2]
        buf = torch.empty((len(idx), h, w, 3), dtype=torch.uint8, pin_memory=pin)
        arr = buf.numpy()
        for j, i in enumerate(idx):
            arr[j] = frames[i]
        x = buf.to(device, non_blocking=pin)
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        x = x[:, top:top + side, left:left + side].permute(0, 3, 1, 2).float()
        if side != size:
            x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        parts.append(((x - mean_t) / std_t).to(dtype))
    if len(parts) == 1:
        return parts[0]
    out = torch.empty((len(frames), 3, size, size), device=device, dtype=dtype)
    for (_, idx), x in zip(groups.items(), parts):  # mixed sizes: scatter back into input order
        for j, i in enumerate(idx):
            out[i].copy_(x[j])
    return out


def clip_means(emb, counts: list[int]):
    """Normalised mean of each clip's frame embeddings; ``emb`` holds the clips' frames one clip
    after the other (``counts`` frames each). One reshape when every clip has the same count (the
    usual batch: K frames per video clip), else one small reduction per clip."""
    import torch
    import torch.nn.functional as F

    if len(set(counts)) == 1:
        return F.normalize(emb.view(len(counts), counts[0], -1).mean(1), dim=1)
    starts = [0]
    for n in counts[:-1]:
        starts.append(starts[-1] + n)
    return torch.stack([F.normalize(emb[s:s + n].mean(0), dim=0) for s, n in zip(starts, counts)])


class ClipScoreStage(Stage):
    """Aesthetic and CLIP-text scores and the clip embedding; holds the models, so it runs as an
    actor (GPU when there is one)."""

    name: ClassVar[str] = "clip"
    resources: ClassVar[Resources] = Resources(cpus=0.25, gpus=1.0, actor=True)
    # Clips per call: stages.clip.batch_rows, default 256 on a GPU (vidcorpus/stage_settings.py).
    # Decode overlaps the model within a call, not across calls, so each call pays one pipeline fill
    # and drain: alone on the H100, 4,096 rows reached 86.7 / 88.8% of model-only where 1,024 gave
    # 85.7 / 83.3% (docs/benchmarks.md, "Larger stage calls"). Inside a streaming job a call waits
    # until that many clips exist (an hour of edited footage holds about 800), so it is smaller.
    # True: frames leave the decode workers resized and cropped to the model's input by FFmpeg's
    # scaler (ScaleToModel); False: center squares, resized on the device (exactly open_clip's
    # bicubic). Benchmarks compare the two. Frames from stills go through the same scaler; it
    # aliases more than the device's antialiased resize (stills vs clip frames of a random-block
    # texture at 64 px: mean abs difference 14.5 of 255 against 4.5 on the device path).
    scale_in_decoder: ClassVar[bool] = False
    # "cuda": each decode worker keeps one NVDEC-backed H.264 decoder for clips whose sampled
    # frames are keyframes (KeyframeDecoder); others, and hosts without one, decode on the CPU.
    # Experimental, off: on the H100 its frames differed from CPU decoding (max abs diff 132, cause
    # not found) and end to end was slower (15 CUDA contexts time-slice with the model), see
    # docs/benchmarks.md. Benchmarks only.
    decode_hwaccel: ClassVar[str | None] = None

    def setup(self) -> None:
        import open_clip
        import torch

        # here, not at the top: the CLIP code imports open_clip and torch (seconds), which importing
        # this module (the runner, a run with filters.clip_scores off) does not need
        from vidcorpus.clip_models import clip_embed_dim, clip_model_id, load_clip
        from vidcorpus.filters.aesthetic_head import load_aesthetic_head

        m = self.config.models
        if not (m.clip_model and m.clip_pretrained and m.aesthetic_head):
            raise ValueError("models.clip_model/clip_pretrained/aesthetic_head must be resolved (presets.resolve_models)")
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.preprocess, self.tokenizer = load_clip(m.clip_model, m.clip_pretrained, self.device)
        self.dtype = torch.float32
        if self.device.type == "cuda" and self.config.filters.clip_precision == "bf16":
            self.dtype = torch.bfloat16
            self.model.to(dtype=self.dtype)
        self.head = load_aesthetic_head(m.aesthetic_head, clip_embed_dim(m.clip_model), self.device)
        pre = open_clip.get_model_preprocess_cfg(self.model)
        size = pre.get("size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean_t = torch.tensor(pre["mean"], device=self.device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.std_t = torch.tensor(pre["std"], device=self.device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        # The decoder's scaler does the model's resize and crop (read from the model, not assumed)
        self.decode_scale = None
        if self.scale_in_decoder:
            try:
                self.decode_scale = ScaleToModel(pre.get("size", 224), pre.get("interpolation", "bicubic"),
                                                 pre.get("resize_mode", "shortest"))
            except ValueError:  # a transform the scaler does not do: the device resizes
                self.decode_scale = None
        self.clip_id = clip_model_id(m.clip_model, m.clip_pretrained)
        head_stem = Path(m.aesthetic_head.split("?")[0]).stem
        self.aesthetic_id = f"{self.clip_id}+{head_stem}"
        self.version = f"{CLIP_SCORE_VERSION}-f{self.config.filters.frames_per_clip}"
        self._decoder = None  # worker processes start with the first batch (CaptionAlignStage needs none)

    # -- model calls ------------------------------------------------------------------------------
    def embed_frames(self, frames: list[np.ndarray]):
        """Normalised float32 embeddings and aesthetic values of frames (one model batch)."""
        import torch

        with torch.inference_mode():
            x = gpu_preprocess(frames, self.image_size, self.mean_t, self.std_t, self.dtype,
                               pin=self.device.type == "cuda")
            emb = self.model.encode_image(x, normalize=True).float()
            aesthetic = self.head(emb).squeeze(1)
        return emb, aesthetic

    def embed_texts(self, texts: list[str]):
        from vidcorpus.clip_models import embed_texts  # loaded already by setup; kept out of the top as there

        return embed_texts(self.model, self.tokenizer, texts, self.device, clip_batch_size(self.config, self.device))

    def text_scores(self, rows: list[dict], clip_emb) -> list[list[dict]]:
        """Per row: clip_text against the original text and one score per caption (version, kind)."""
        jobs: list[tuple[int, str, str]] = []
        for i, row in enumerate(rows):
            if (row.get("text") or "").strip():
                jobs.append((i, "clip_text", row["text"]))
            for c in row.get("captions") or []:
                if (c.get("text") or "").strip():
                    jobs.append((i, caption_score_name(c), c["text"]))
        out: list[list[dict]] = [[] for _ in rows]
        if not jobs:
            return out
        t = self.embed_texts([j[2] for j in jobs])
        cos = (clip_emb[[j[0] for j in jobs]] * t).sum(1).cpu().numpy()
        for (i, name, _), v in zip(jobs, cos):
            out[i].append(score(name, float(v), self.clip_id, self.version))
        return out

    # -- the batch -------------------------------------------------------------------------------
    def decoder(self) -> FrameDecoder:
        if getattr(self, "_decoder", None) is None:
            k = self.config.filters.frames_per_clip
            bs = max(1, clip_batch_size(self.config, self.device))
            workers = self.config.filters.decode_threads or max(1, min(16, (os.cpu_count() or 2) - 1))
            # enough slots for two model batches in flight plus a queue per worker
            hw = self.decode_hwaccel if self.device.type == "cuda" else None
            self._decoder = FrameDecoder(workers, k, n_slots=2 * (bs // k + 1) + 2 * workers,
                                         scale=getattr(self, "decode_scale", None), hwaccel=hw)
            weakref.finalize(self, self._decoder.close)
        return self._decoder

    def process_rows(self, rows: list[dict]) -> list[dict]:
        import torch

        k = self.config.filters.frames_per_clip
        bs = max(1, clip_batch_size(self.config, self.device))
        if getattr(self, "_stills", None) is None:
            from vidcorpus.filters.stills_probe import StillsCheck

            self._stills = StillsCheck(k)
        rows = self._stills.rows(rows)  # stills only while they match their clips (filters/stills_probe.py)
        dec = self.decoder()
        jobs: list[tuple[Future, int, int]] = []

        def submit_more() -> None:  # decode runs ahead of the model as far as free slots allow
            if len(jobs) < len(rows) and dec.free:
                todo = rows[len(jobs):len(jobs) + len(dec.free)]
                jobs.extend(dec.submit_many([(row, 1 if is_image(row) else k) for row in todo]))

        out: list[dict] = []
        good: list[tuple[dict, int, int, str]] = []  # row, first frame position, frame count, sha256
        pending: list[np.ndarray] = []
        pending_slots: list[int] = []  # slots whose frames are (partly) in `pending`
        embs, aes = [], []
        n_frames = 0

        def flush(count: int) -> None:
            nonlocal pending, pending_slots
            e, a = self.embed_frames(pending[:count])  # copies to pinned memory, then runs asynchronously
            embs.append(e)
            aes.append(a)
            pending = pending[count:]
            keep = set()
            if pending:  # the slot of the clip split across two model batches stays held
                keep = {pending_slots[-1]}
            for slot in pending_slots:
                if slot not in keep:
                    dec.release(slot)
            pending_slots = list(keep)
            submit_more()

        handled = 0  # rows[:handled] are in `out` (failed) or in `good`
        try:
            submit_more()
            for j, row in enumerate(rows):
                while j >= len(jobs):  # every slot held by frames waiting for a full batch: run it short
                    if not pending:
                        raise RuntimeError("frame decoder has no free slot and nothing to flush")
                    flush(len(pending))
                slot = jobs[j][2]
                try:
                    shape, digest = dec.result(jobs[j])
                except BrokenProcessPool:
                    raise
                except Exception as exc:  # noqa: BLE001 - an unreadable clip fails its row only
                    dec.release(slot)
                    submit_more()
                    out.append(self.fail(row, exc))
                    handled += 1
                    continue
                frames = dec.frames(slot, shape)
                good.append((row, n_frames, len(frames), digest))
                handled += 1
                n_frames += len(frames)
                pending.extend(frames)
                pending_slots.append(slot)
                while len(pending) >= bs:
                    flush(bs)
            if pending:
                flush(len(pending))
            if not good:
                return out
            with torch.inference_mode():
                emb = torch.cat(embs)
                aesthetic = torch.cat(aes).float().cpu().numpy()
                clip_emb = clip_means(emb, [n for _, _, n, _ in good])
                texts = self.text_scores([g[0] for g in good], clip_emb)
                clip_np = clip_emb.cpu().numpy().astype(np.float32)
        except BrokenProcessPool as exc:  # a decoder process died (e.g. FFmpeg crashed): fresh pool next batch
            self._decoder.close()
            self._decoder = None
            return out + [self.fail(row, exc) for row, *_ in good] + [self.fail(row, exc) for row in rows[handled:]]
        except Exception as exc:  # noqa: BLE001 - a model failure fails the batch's rows, not the run
            self._drain(jobs)
            return out + [self.fail(row, exc) for row, *_ in good] + [self.fail(row, exc) for row in rows[handled:]]
        for i, (row, s, n, digest) in enumerate(good):
            a = aesthetic[s:s + n]
            new = [
                score("aesthetic", float(a.mean()), self.aesthetic_id, self.version),
                score("aesthetic_min", float(a.min()), self.aesthetic_id, self.version),
                *texts[i],
            ]
            extra = {"embedding": clip_np[i].tolist(), "embedding_model": self.clip_id, "content_sha256": digest}
            out.extend(self.safe_call(lambda r, new=new, extra=extra: dict(add_scores(r, new), **extra), row))
        return out

    def _drain(self, jobs) -> None:
        """After a failure mid-batch: wait for submitted decodes and give every slot back."""
        dec = self._decoder
        for fut in {id(j[0]): j[0] for j in jobs}.values():
            fut.cancel()
            try:
                fut.result()
            except BaseException:  # noqa: BLE001
                pass
        dec.free = list(range(dec.n_slots))


class CaptionAlignStage(ClipScoreStage):
    """CLIP alignment of every caption of a kept clip with the clip's stored embedding (text tower
    only: the image embedding travels in the row). Runs after captioning."""

    name: ClassVar[str] = "caption_align"
    kept_only: ClassVar[bool] = True
    # The text tower alone: a CPU actor keeps up with captioning and leaves the GPU to the captioner.
    resources: ClassVar[Resources] = Resources(cpus=0.25, gpus=0.0, actor=True)
    batch_rows: ClassVar[int] = 64

    def process_rows(self, rows: list[dict]) -> list[dict]:
        import torch

        todo = [r for r in rows if r.get("embedding") and r.get("captions")
                and r.get("embedding_model") == self.clip_id]
        rest = [r for r in rows if not any(r is t for t in todo)]
        if not todo:
            return rows
        try:
            with torch.inference_mode():
                emb = torch.tensor([r["embedding"] for r in todo], dtype=torch.float32, device=self.device)
                texts = self.text_scores([dict(r, text=None) for r in todo], emb)
        except Exception as exc:  # noqa: BLE001
            return rest + [self.fail(r, exc) for r in todo]
        return [add_scores(r, t) for r, t in zip(todo, texts)] + rest
