"""Stream training clips from WebDataset shards: decode, sample frames at a target fps, bucket.

A sample that cannot be decoded is never turned into zeros: it travels down the stream as a
``DecodeFailure`` marker (so it also survives DataLoader worker processes) and the batcher hands
it to ``on_error(key, exc)`` in the training process. Batches hold one (frames, height, width)
bucket at a time, so a short clip or an image never gets padded to the length of a long clip.
"""

from __future__ import annotations

import io
import json
import logging
import random
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vidcorpus.config import TrainConfig
from vidcorpus.errors import DecodeError
from vidcorpus.shard_reader import ShardSpec, as_specs, sample_pipeline

log = logging.getLogger(__name__)

VIDEO_KEYS = ("mp4", "webm", "mkv", "mov", "avi")
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
OnError = Callable[[str, Exception], None]


@dataclass
class DecodeFailure:
    """Stands in the stream for a sample that failed to decode."""

    key: str
    error: Exception
    worker: int = 0
    index: int = 0


@dataclass
class Skipped:
    """Stands in the stream for a sample a resumed run already consumed: read, not decoded.

    It keeps its place so DataLoader workers interleave exactly as in the original run."""

    key: str
    worker: int
    index: int


# -- decoding -------------------------------------------------------------------------------------

def frame_indices(total: int | None, src_fps: float, num_frames: int, target_fps: float,
                  rng: random.Random | None) -> tuple[list[int], float]:
    """Indices of up to ``num_frames`` frames spaced to play at ``target_fps``, and the spacing.

    A clip too short for ``num_frames`` at that spacing yields fewer frames (never padding);
    a clip with a lower frame rate than the target is read frame by frame. The window starts at a
    random frame (``rng``) or, with ``rng=None``, at the first frame (the latent cache's choice).
    """
    stride = max(1.0, src_fps / target_fps) if src_fps and target_fps else 1.0
    if total:
        n = max(1, min(num_frames, int((total - 1) // stride) + 1))
        slack = (total - 1) - (n - 1) * stride
        start = rng.randint(0, int(slack)) if slack >= 1 and rng is not None else 0  # whole-frame aligned
    else:
        n, start = num_frames, 0
    return [int(round(start + i * stride)) for i in range(n)], stride


def decode_video(data: bytes, num_frames: int, target_fps: float, rng: random.Random | None,
                 meta: dict | None = None) -> tuple[np.ndarray, float]:
    """(F, H, W, 3) uint8 frames sampled at ``target_fps`` and the fps they represent."""
    # inside: a run from cached latents never decodes video (frame_seek imports av too)
    import av

    # inside: av, as above
    from vidcorpus.frame_seek import decode_in_order
    from vidcorpus.media import to_rgb_upright

    meta = meta or {}
    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise DecodeError("no video stream")
            stream = container.streams.video[0]
            # Single-threaded on purpose: parallelism comes from DataLoader workers, and FFmpeg frame
            # threads with a Python log callback can deadlock when a decoder is freed mid-stream.
            stream.thread_type = "NONE"
            stream.thread_count = 1
            src_fps = float(stream.average_rate or stream.guessed_rate or 0) or float(meta.get("fps") or 0)
            total = int(meta.get("n_frames") or 0) or int(stream.frames or 0) or None
            wanted, stride = frame_indices(total, src_fps, num_frames, target_fps, rng)
            # upright: a packet-copied clip of phone footage keeps the source's display matrix
            got = dict(decode_in_order(container, stream, wanted, to_rgb_upright))
    except av.error.FFmpegError as e:
        raise DecodeError(f"decode failed: {e}") from e
    # Containers may promise more frames than decode: keep the evenly spaced prefix we have.
    frames = []
    for i in wanted:
        if i not in got:
            break
        frames.append(got[i])
    if not frames:
        raise DecodeError("no frame could be decoded")
    fps = src_fps / stride if src_fps else float(target_fps)
    return np.stack(frames), fps


def decode_image(data: bytes) -> np.ndarray:
    try:
        img = Image.open(io.BytesIO(data)).convert("RGB")
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for bad bytes
        raise DecodeError(f"cannot decode image: {e}") from e
    return np.asarray(img)[None]


def resize_center_crop(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (F, 3, height, width) float in [-1, 1]; shorter side fit, then crop."""
    if not frames.flags.writeable:  # Pillow's arrays are read-only; torch wants to own writable memory
        frames = frames.copy()
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - height) // 2, (nw - width) // 2
    x = x[:, :, top:top + height, left:left + width]
    return (x / 127.5 - 1.0).clamp_(-1.0, 1.0)


def pick_caption(meta: dict, version: str, kind: str, fallback: str) -> str:
    """The caption of that version and kind from a sample's json (shards carry every version);
    ``fallback`` (the shard's txt) when the clip has none of that name."""
    for c in meta.get("captions") or []:
        if c.get("version") == version and c.get("kind") == kind and c.get("text"):
            return c["text"]
    return fallback


def decode_sample(sample: dict, cfg: TrainConfig, rng: random.Random | None) -> dict:
    """One raw WebDataset sample -> dict(video, first_frame, text, key, fps); raises on bad media."""
    key = sample["__key__"]
    meta = {}
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except ValueError as e:
            raise DecodeError(f"bad json: {e}") from e
    video_key = next((k for k in VIDEO_KEYS if k in sample), None)
    image_key = next((k for k in IMAGE_KEYS if k in sample), None)
    if video_key is not None:
        frames, fps = decode_video(sample[video_key], cfg.num_frames, cfg.fps, rng, meta)
    elif image_key is not None:
        frames, fps = decode_image(sample[image_key]), float(cfg.fps)
    else:
        raise DecodeError(f"sample has no media (fields: {sorted(k for k in sample if not k.startswith('__'))})")
    video = resize_center_crop(frames, cfg.height, cfg.width)
    text = sample["txt"].decode("utf-8") if "txt" in sample else (meta.get("text") or "")
    if getattr(cfg, "caption_version", None):
        text = pick_caption(meta, cfg.caption_version, cfg.caption_kind, text)
    return {"video": video, "first_frame": video[0], "text": text, "key": key, "fps": max(1, int(round(fps)))}


def _npy(data: bytes, what: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DecodeError(f"bad {what}: {e}") from e


def decode_cached_sample(sample: dict) -> dict:
    """One latent-cache sidecar sample (``shards/latents.py``) -> dict(latent_params, clip_image,
    text_states, scaling_factor, key, fps): the frozen encoders' outputs, nothing left to decode."""
    try:
        meta = json.loads(sample["json"])
    except (KeyError, ValueError) as e:
        raise DecodeError(f"latent-cache sample without a valid json: {e}") from e
    params = torch.from_numpy(_npy(sample["latent.npy"], "latent.npy").astype(np.float32))  # (F, 2C, h, w)
    if params.ndim != 4 or params.shape[1] % 2:
        raise DecodeError(f"latent.npy has shape {tuple(params.shape)}, expected (F, 2C, h, w)")
    return {"latent_params": params,
            "clip_image": torch.from_numpy(_npy(sample["clip_image.npy"], "clip_image.npy").astype(np.float32)),
            "text_states": torch.from_numpy(_npy(sample["text.npy"], "text.npy").astype(np.float32)),
            "scaling_factor": float(meta["scaling_factor"]), "key": sample["__key__"], "text": meta.get("text") or "",
            "fps": max(1, int(meta.get("fps") or 1))}


def is_cached(sample_or_batch: dict) -> bool:
    return "latent_params" in sample_or_batch


def sample_shape(sample: dict) -> tuple[int, int, int]:
    """(frames, height, width) in pixels, for decoded clips and cached latents alike: a batch is made of
    samples of one shape (``shards/buckets.bucket_of`` names the shard bucket, a coarser key)."""
    if is_cached(sample):
        f, _c2, h, w = sample["latent_params"].shape
        return f, h * 8, w * 8
    f, _c, h, w = sample["video"].shape
    return f, h, w


def batch_shape(batch: dict) -> tuple[int, int, int, int]:
    """(batch, frames, height, width) of a collated batch (the FLOP counter's key)."""
    if is_cached(batch):
        b, f, _c2, h, w = batch["latent_params"].shape
        return b, f, h * 8, w * 8
    b, f = batch["video"].shape[:2]
    return (b, f) + tuple(batch["video"].shape[-2:])


# -- the stream -----------------------------------------------------------------------------------

class ClipStream(torch.utils.data.IterableDataset):
    """Decoded clips (or DecodeFailure markers) from a list of shards, one epoch per iteration.

    Shards come from ``vidcorpus.shard_reader``: each is verified against its sha256 (when the
    ShardSpec has one) before any sample is used, split by node (torch.distributed rank) and
    DataLoader worker, shuffled per epoch with a seeded RNG; samples pass a seeded shuffle buffer.
    ``keys`` restricts training to those clip ids (a shard may hold clips a selection excludes).
    """

    def __init__(self, shards: list[ShardSpec | str], cfg: TrainConfig, keys: Iterable[str] | None = None,
                 epoch: int = 0, skip: dict[int, tuple[int, set[int]]] | None = None):
        super().__init__()
        self.shards = as_specs(shards)
        self.cfg = cfg
        self.keys = set(keys) if keys is not None else None
        self.epoch = epoch
        # Resume: per worker, (items of its sequence already consumed, those of them still pending
        # in a bucket). Consumed ones pass as ``Skipped`` markers, undecoded.
        self.skip = skip or {}

    def _seed(self) -> int:
        info = torch.utils.data.get_worker_info()
        return self.cfg.seed * 1_000_003 + self.epoch * 1_009 + (info.id if info else 0)

    def __iter__(self) -> Iterator[dict | DecodeFailure]:
        seed = self._seed()
        info = torch.utils.data.get_worker_info()
        samples = sample_pipeline(self.shards, seed=self.cfg.seed, epoch=self.epoch, keys=self.keys,
                                  shuffle_buffer=self.cfg.shuffle_buffer, worker_seed=info.id if info else 0)
        wid = info.id if info else 0
        consumed, pending = self.skip.get(wid, (0, set()))
        for i, sample in enumerate(samples):
            key = sample["__key__"]
            if i < consumed and i not in pending:
                yield Skipped(key, wid, i)
                continue
            rng = random.Random(seed ^ zlib.crc32(key.encode()))
            try:
                out = decode_cached_sample(sample) if "latent.npy" in sample else decode_sample(sample, self.cfg, rng)
            except Exception as e:  # noqa: BLE001 - any failure skips this sample, reported by key
                yield DecodeFailure(key, e if isinstance(e, DecodeError) else DecodeError(f"{type(e).__name__}: {e}"),
                                    wid, i)
                continue
            out["pos"] = (wid, i)
            yield out


# -- batching -------------------------------------------------------------------------------------

def collate(samples: list[dict]) -> dict:
    """Stack samples of one bucket: video (B,F,3,H,W), first_frame (B,3,H,W), fps (B,), text, key;
    cached samples: latent_params (B,F,2C,h,w), clip_image (B,D), text_states (B,77,D), fps, key."""
    if is_cached(samples[0]):
        return {
            "latent_params": torch.stack([s["latent_params"] for s in samples]),
            "clip_image": torch.stack([s["clip_image"] for s in samples]),
            "text_states": torch.stack([s["text_states"] for s in samples]),
            "scaling_factor": samples[0]["scaling_factor"],
            "fps": torch.tensor([s["fps"] for s in samples], dtype=torch.long),
            "text": [s["text"] for s in samples],
            "key": [s["key"] for s in samples],
        }
    return {
        "video": torch.stack([s["video"] for s in samples]),
        "first_frame": torch.stack([s["first_frame"] for s in samples]),
        "fps": torch.tensor([s["fps"] for s in samples], dtype=torch.long),
        "text": [s["text"] for s in samples],
        "key": [s["key"] for s in samples],
    }


class BucketBatcher:
    """Group samples by (frames, height, width) and emit a batch whenever a bucket fills.

    Leftover partial buckets are emitted at the end of the stream (unless ``drop_last``), oldest
    waiting sample first, so a small corpus still trains on every clip; a failure marker goes to
    ``on_error`` and nowhere else; ``Skipped`` markers (a resume's consumed samples) are dropped.
    ``pending()`` lists the stream positions of samples waiting in buckets (none of the batch just
    emitted): with the per-worker counts of samples pulled, that is the resumable position.
    """

    def __init__(self, batch_size: int, on_error: OnError | None = None, drop_last: bool = False):
        self.batch_size = batch_size
        self.on_error = on_error
        self.drop_last = drop_last
        self.buckets: dict[tuple[int, int, int], list[tuple[int, dict]]] = {}

    def pending(self) -> list[tuple[int, int]]:
        return sorted(s["pos"] for b in self.buckets.values() for _seq, s in b if "pos" in s)

    def __call__(self, samples: Iterable) -> Iterator[dict]:
        for seq, s in enumerate(samples):
            if isinstance(s, Skipped):
                continue
            if isinstance(s, DecodeFailure):
                if self.on_error is not None:
                    self.on_error(s.key, s.error)
                else:
                    log.warning("skipping %s: %s", s.key, s.error)
                continue
            bucket = self.buckets.setdefault(sample_shape(s), [])
            bucket.append((seq, s))
            if len(bucket) == self.batch_size:
                batch = collate([x for _q, x in bucket])
                bucket.clear()
                yield batch
        if not self.drop_last:
            for shape in sorted((k for k, b in self.buckets.items() if b), key=lambda k: self.buckets[k][0][0]):
                batch = collate([x for _q, x in self.buckets[shape]])
                self.buckets[shape].clear()
                yield batch


class EpochBatches:
    """One epoch of bucketed batches that knows its resumable position.

    ``position()`` (valid while the consumer holds the last batch) is {"pulled": [[worker, n], ...],
    "pending": [[worker, index], ...]}: how many samples of each DataLoader worker's sequence were
    consumed, and which of those still wait in buckets. Started with ``skip=position``, the same
    epoch yields exactly the batches the original stream would have yielded next; the consumed
    samples are read from their shards again but not decoded.
    """

    def __init__(self, shards: list[ShardSpec | str], cfg: TrainConfig, epoch: int = 0,
                 keys: Iterable[str] | None = None, on_error: OnError | None = None, skip: dict | None = None):
        self.shards, self.cfg, self.epoch, self.keys = shards, cfg, epoch, keys
        self.batcher = BucketBatcher(cfg.batch_size, on_error=on_error)
        self.skip = {int(w): (int(n), set()) for w, n in (skip or {}).get("pulled", [])}
        for w, i in (skip or {}).get("pending", []):
            self.skip.setdefault(int(w), (0, set()))[1].add(int(i))
        self.pulled: dict[int, int] = {w: 0 for w in self.skip}

    def _tap(self, source: Iterable) -> Iterator:
        for item in source:
            w, i = (item.worker, item.index) if isinstance(item, (Skipped, DecodeFailure)) else item["pos"]
            self.pulled[w] = max(self.pulled.get(w, 0), i + 1)
            yield item

    def position(self) -> dict:
        return {"pulled": sorted([w, n] for w, n in self.pulled.items()),
                "pending": [list(p) for p in self.batcher.pending()]}

    def __iter__(self) -> Iterator[dict]:
        stream = ClipStream(self.shards, self.cfg, keys=self.keys, epoch=self.epoch, skip=self.skip)
        source: Iterable = stream
        if self.cfg.num_workers > 0:
            # Its own generator: a DataLoader otherwise draws its base seed from the global torch RNG
            # each time an epoch starts, which shifts every later dropout mask of a resumed run.
            source = torch.utils.data.DataLoader(
                stream, batch_size=None, num_workers=self.cfg.num_workers, persistent_workers=False,
                generator=torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.epoch))
        yield from self.batcher(self._tap(source))


def iter_batches(shards: list[ShardSpec | str], cfg: TrainConfig, epoch: int = 0, keys: Iterable[str] | None = None,
                 on_error: OnError | None = None) -> Iterator[dict]:
    """One epoch of bucketed batches; decoding runs in ``cfg.num_workers`` DataLoader workers."""
    yield from EpochBatches(shards, cfg, epoch=epoch, keys=keys, on_error=on_error)
