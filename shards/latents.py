"""The latent cache: sidecar shards of frozen-encoder outputs, so training can skip decode and encode.

For every sample of a source shard, a sidecar shard with the same keys holds

- ``latent.npy``: the VAE posterior parameters (mean and log-variance, float16, (F, 2C, h, w)) of
  the clip's frames, sampled at ``fps`` from the first frame and resized/cropped to the bucket as
  the trainer does (a trainer samples its own posterior draw from them, and applies the VAE's
  scaling factor recorded in the json);
- ``clip_image.npy``: the CLIP image embedding of the first frame (float16, (D,));
- ``text.npy``: the CLIP text encoder's hidden states of the sample's caption (float16, (77, D));
- ``json``: frame count, fps, shape, the VAE scaling factor and the cache key.

Entries are addressed by a cache key: a hash of every frozen encoder's weights (file contents),
the resolution, frame count, fps and caption version. Change any of them and the key changes, so
a stale entry can never be found for a different encoder (no reuse across weight updates).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

ENCODER_PARTS = ("vae", "image_encoder", "text_encoder", "tokenizer", "feature_extractor")


@dataclass(frozen=True)
class LatentParams:
    height: int
    width: int
    frames: int
    fps: int
    caption_version: str
    caption_kind: str = "long"  # the text states are of this caption kind (the refiner trains on "short")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def for_training(cls, cfg) -> "LatentParams":
        """The parameters a training run with ``cfg`` (a full ``Config``) needs its cache entries made
        with: its bucket, frames, fps and caption (the train section's version, else the shards' txt
        version, which is what the trainer reads when it names none)."""
        t = cfg.train
        return cls(height=t.height, width=t.width, frames=t.num_frames, fps=t.fps,
                   caption_version=t.caption_version or cfg.shards.caption_version, caption_kind=t.caption_kind)


_TREE_HASHES: dict[tuple, str] = {}


def _hash_tree(folder: Path) -> str:
    """sha256 over a folder's files, remembered for the process while no file's size or mtime changes
    (a training run with --follow asks for the cache key at every epoch; production encoders are GBs)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    signature = (str(folder.resolve()), tuple((str(f), st.st_size, st.st_mtime_ns) for f in files for st in [f.stat()]))
    if signature not in _TREE_HASHES:
        _TREE_HASHES[signature] = _sha256_files(folder, files)
    return _TREE_HASHES[signature]


def _sha256_files(folder: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(folder)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def encoder_fingerprint(model_dir: str) -> dict[str, str]:
    """Content hashes of the frozen encoders in a diffusers-layout directory (weights and configs)."""
    root = Path(model_dir)
    out = {}
    for part in ENCODER_PARTS:
        if (root / part).is_dir():
            out[part] = _hash_tree(root / part)
    if "vae" not in out:
        raise FileNotFoundError(f"{model_dir} has no vae/ folder: not a diffusers-layout I2VGen-XL directory")
    return out


def cache_key(fingerprint: dict[str, str], params: LatentParams) -> str:
    text = json.dumps({"encoders": fingerprint, "params": params.to_dict()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sidecar_url(root: str, key: str, shard_id: str) -> str:
    return f"{root.rstrip('/')}/{key}/{shard_id}.tar"
