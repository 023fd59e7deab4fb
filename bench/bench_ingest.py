"""Ingest benchmark: shot-detection throughput and accuracy, clip extraction speed, worker memory.

One run, one set of generated inputs (PyAV, libx264):
  * a 60 s 640x360 24 fps video with hard cuts every 2-4 s and two 12-frame cross-fades at known frames;
  * a long 1920x1080 24 fps video (``--long-seconds``) for the peak RSS of a worker process.

Measured:
  (a) PyAV decode-only frames/s at the detection size against shot-detection frames/s (same size);
  (b) stream copy against precise re-encode, clips/s;
  (c) peak RSS of a worker process that splits and extracts the long 1080p input;
  (d) precision/recall per detector; a hard cut counts only when found within one frame.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_ingest.py [--long-seconds 90] [--out bench/results/ingest_cpu.json]

Writes raw JSON only; docs/benchmarks.md's tables are rendered from it by bench/render_benchmarks.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import scenedetect

from run_meta import finish_metadata, run_metadata
from vidcorpus.config import load_config
from vidcorpus.ids import source_id
from vidcorpus.ingest.extract import ExtractStage
from vidcorpus.ingest.split import detect_shots
from vidcorpus.media import detection_size
from vidcorpus.ingest.split_stage import SplitStage
from vidcorpus.media import probe_video
from vidcorpus.schemas import empty_row, rows_to_table

FADE = 12


# -- inputs -----------------------------------------------------------------------------------

def _shot_frames(seed: int, n: int, w: int, h: int) -> np.ndarray:
    """A panning blocky texture with a moving bright square: distinct per seed, moving every frame."""
    rng = np.random.default_rng(seed)
    block = 16 if w >= 640 else 8
    big = rng.integers(0, 256, (h // block + 8, w // block + 40, 3), dtype=np.uint8)
    big = np.kron(big, np.ones((block, block, 1), dtype=np.uint8))
    big = ((big.astype(np.int16) + rng.integers(0, 256, 3)) // 2).astype(np.uint8)
    dx = int(rng.integers(2, 6))
    out = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        x0 = (dx * t) % (big.shape[1] - w)
        out[t] = big[:h, x0:x0 + w]
        s = h // 6
        cx = (t * 7 + seed * 31) % (w - s)
        out[t, h // 2 - s // 2:h // 2 + s // 2, cx:cx + s] = 255
    return out


def make_input(path: str, seconds: float, w: int, h: int, fps: int = 24, seed: int = 0,
               fades: int = 2, preset: str = "veryfast", options: dict | None = None,
               force_keyframes: bool = False) -> dict:
    """Encode a video of shots 2-4 s long joined by hard cuts and ``fades`` cross-fades.

    Returns the truth: hard-cut frames (first frame of the new shot) and fade windows (inclusive).
    Frames are generated and encoded shot by shot, so memory stays small for long inputs.
    ``force_keyframes`` starts every shot on an IDR frame, as encoders with scene-cut detection do.
    """
    rng = np.random.default_rng(seed)
    total = int(seconds * fps)
    lengths = []
    while sum(lengths) < total:
        lengths.append(int(rng.integers(2 * fps, 4 * fps)))
    lengths[-1] -= sum(lengths) - total
    if lengths[-1] < fps and len(lengths) > 1:  # fold a stub into the previous shot
        lengths[-2] += lengths.pop()
    n_cuts = len(lengths) - 1
    fade_at = set(np.linspace(1, n_cuts, fades + 2, dtype=int)[1:-1].tolist()) if fades and n_cuts > 2 else set()
    cuts, fade_windows = [], []
    with av.open(path, mode="w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"crf": "23", "preset": preset, **(options or {})}

        def put(arr: np.ndarray, key: bool = False) -> None:
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            if key and force_keyframes:
                frame.pict_type = av.video.frame.PictureType.I
            for p in s.encode(frame):
                c.mux(p)

        pos, prev = 0, None
        for k, n in enumerate(lengths):
            frames = _shot_frames(seed * 1000 + k, n, w, h)
            if k and k in fade_at:
                # The last FADE frames of the previous shot blend into the first of this one.
                a, b = prev[-1].astype(np.float32), frames[0].astype(np.float32)
                for j in range(FADE):
                    wgt = (j + 1) / (FADE + 1)
                    put((a * (1 - wgt) + b * wgt).astype(np.uint8))
                fade_windows.append((pos, pos + FADE - 1))
                pos += FADE
            elif k:
                cuts.append(pos)
            for j, f in enumerate(frames):
                put(f, key=j == 0)
            pos += n
            prev = frames[-1:]
        for p in s.encode():
            c.mux(p)
    return {"path": path, "fps": fps, "frames": pos, "cuts": cuts, "fades": fade_windows, "width": w, "height": h}


# -- accuracy ---------------------------------------------------------------------------------

def predicted_transitions(shots: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(lo, hi) per detected transition: a cut at f is (f, f); a dropped transition is its gap."""
    return [(b[0], b[0]) if b[0] == a[1] + 1 else (a[1] + 1, b[0] - 1) for a, b in zip(shots, shots[1:])]


def score(shots: list[tuple[int, int]], truth: dict) -> dict:
    """Precision/recall, matching each truth transition to at most one prediction.

    A hard cut at c matches a prediction within one frame of c; a fade matches a prediction that
    overlaps its window widened by one frame on each side.
    """
    preds = predicted_transitions(shots)
    used: set[int] = set()

    def match(lo: int, hi: int) -> bool:
        for i, (a, b) in enumerate(preds):
            if i not in used and a <= hi and b >= lo:
                used.add(i)
                return True
        return False

    hits_cut = sum(match(c - 1, c + 1) for c in truth["cuts"])
    hits_fade = sum(match(f0 - 1, f1 + 1) for f0, f1 in truth["fades"])
    n_truth = len(truth["cuts"]) + len(truth["fades"])
    tp = hits_cut + hits_fade
    return {"precision": tp / len(preds) if preds else 1.0, "recall": tp / n_truth,
            "cuts_within_1": f"{hits_cut}/{len(truth['cuts'])}", "fades_found": f"{hits_fade}/{len(truth['fades'])}",
            "predicted": len(preds)}


# -- throughput -------------------------------------------------------------------------------

def decode_only_fps(path: str, size: tuple[int, int]) -> float:
    """PyAV decode with the same FFmpeg scaling and BGR conversion that detection's stream does."""
    t = time.perf_counter()
    n = 0
    with av.open(path) as c:
        st = c.streams.video[0]
        st.thread_type = "AUTO"
        for frame in c.decode(st):
            frame.to_ndarray(width=size[0], height=size[1], format="bgr24", interpolation="AREA")
            n += 1
    return n / (time.perf_counter() - t)


def timed_detect(path: str, n_frames: int, **split) -> tuple[float, list]:
    cfg = load_config(None, [], **{f"split.{k}": v for k, v in split.items()}).split
    t = time.perf_counter()
    shots = detect_shots(path, cfg)
    return n_frames / (time.perf_counter() - t), shots


def source_row(path: str) -> dict:
    info = probe_video(path)
    return empty_row(source_id=source_id(path), uri=path, media_type="video", source_path=path, **info)


def run_stages(path: str, workdir: str, overrides: list[str]) -> tuple[list[dict], float, float]:
    cfg = load_config(None, overrides, workdir=workdir)
    table = rows_to_table([source_row(path)])
    t0 = time.perf_counter()
    table = SplitStage(cfg)(table)
    t1 = time.perf_counter()
    table = ExtractStage(cfg)(table)
    t2 = time.perf_counter()
    return table.to_pylist(), t1 - t0, t2 - t1


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(path: str, workdir: str, overrides: list[str]) -> None:
    """Subprocess body for (c): split + extract one source, report timings and peak RSS.

    The imports' own peak is taken out: the kernel's high-water mark (VmHWM) is reset after them
    (``echo 5 > /proc/self/clear_refs``), so the reported peak belongs to splitting and extracting.
    """
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_mb("VmRSS")
    rows, t_split, t_extract = run_stages(path, workdir, overrides)
    modes = {}
    for r in rows:
        modes[r["extract_mode"]] = modes.get(r["extract_mode"], 0) + 1
    print(json.dumps({"clips": len(rows), "errors": sum(bool(r["error_class"]) for r in rows),
                      "modes": ", ".join(f"{k} {v}" for k, v in sorted(modes.items(), key=str)),
                      "split_s": t_split, "extract_s": t_extract,
                      "rss_after_imports_mb": base, "peak_rss_mb": _status_mb("VmHWM")}))


def rss_of_worker(path: str, workdir: str, overrides: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", path, workdir, *overrides],
                         check=True, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- run --------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the 640x360 test video")
    ap.add_argument("--long-seconds", type=float, default=60.0, help="length of the 1080p video for peak RSS (0 skips)")
    ap.add_argument("--repeat", type=int, default=3, help="throughput: best of this many runs")
    ap.add_argument("--out", default="bench/results/ingest_cpu.json",
                    help="raw JSON of the run (docs/benchmarks.md is rendered from it: bench/render_benchmarks.py)")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.worker[2:])
        return

    result: dict = {"meta": run_metadata(), "pyav": av.__version__, "scenedetect": scenedetect.__version__,
                    "args": {k: v for k, v in vars(args).items() if k != "worker"}}
    tmp = Path(tempfile.mkdtemp(prefix="bench_ingest_"))
    t0 = time.perf_counter()
    truth = make_input(str(tmp / "cuts_360p.mp4"), args.seconds, 640, 360)
    print(f"input: {truth['frames']} frames, {len(truth['cuts'])} hard cuts, {len(truth['fades'])} fades "
          f"({time.perf_counter() - t0:.1f} s to generate)", flush=True)
    path, n = truth["path"], truth["frames"]
    size = detection_size(640, 360, 0)
    result["input"] = {"frames": n, "hard_cuts": len(truth["cuts"]), "fades": len(truth["fades"]),
                       "fade_frames": FADE, "detection_size": f"{size[0]}x{size[1]}"}

    # (a) throughput at the same detection size; runs interleaved so that load from other jobs on
    # the machine hits the reference and the detectors alike; best of --repeat for each
    runs = [("default (adaptive+histogram), pyav backend", {}),
            ("default, opencv backend (scenedetect's resize)", {"backend": "opencv"}),
            ("default, pyav, frame_skip=1", {"frame_skip": 1}),
            ("content only, pyav", {"detectors": ["content"]})]
    dec, det = 0.0, [0.0] * len(runs)
    for _ in range(args.repeat):
        dec = max(dec, decode_only_fps(path, size))
        for i, (_label, split) in enumerate(runs):
            det[i] = max(det[i], timed_detect(path, n, **split)[0])
    result["throughput"] = [{"pipeline": "PyAV decode-only (FFmpeg scale to detection size, BGR)",
                             "frames_per_s": dec, "of_decode_only": 1.0}]
    result["throughput"] += [{"pipeline": f"shot detection: {label}", "frames_per_s": fps, "of_decode_only": fps / dec}
                             for (label, _split), fps in zip(runs, det)]
    print(json.dumps(result["throughput"], indent=1), flush=True)

    # (d) accuracy per detector
    result["accuracy"] = []
    for label, split in [("content", {"detectors": ["content"]}), ("adaptive", {"detectors": ["adaptive"]}),
                         ("histogram", {"detectors": ["histogram"]}), ("hash", {"detectors": ["hash"]}),
                         ("adaptive+histogram (default)", {}), ("default, frame_skip=1", {"frame_skip": 1}),
                         ("histogram, threshold 0.03", {"detectors": ["histogram"], "histogram_threshold": 0.03}),
                         ("adaptive + histogram 0.03", {"histogram_threshold": 0.03})]:
        fps, shots = timed_detect(path, n, **split)
        result["accuracy"].append({"detectors": label, **score(shots, truth), "frames_per_s": fps})
        print(result["accuracy"][-1], flush=True)

    # (b) stream copy vs precise re-encode on the same clips
    result["extraction"] = []
    for label, over in [("copy (keyframe packets, no decode)",
                         ["split.extract_mode=copy", "split.copy_max_lead_seconds=null"]),
                        ("precise (libx264 veryfast crf 20, source size)", []),
                        ("precise, short side 180, 12 fps", ["split.clip_short_side=180", "split.clip_fps=12"])]:
        rows, _, t_ex = run_stages(path, str(tmp / ("w_" + label[:4])), over)
        good = [r for r in rows if not r["error_class"]]
        result["extraction"].append({"mode": label, "clips": len(good), "seconds": t_ex,
                                     "clips_per_s": len(good) / t_ex,
                                     "recorded_modes": ",".join(sorted({r["extract_mode"] for r in good}))})
        print(result["extraction"][-1], flush=True)

    # (c) peak RSS of a worker on a long 1080p input
    if args.long_seconds > 0:
        t0 = time.perf_counter()
        # ultrafast turns x264's scene-cut keyframes off; force them, as real encodes have them
        long = make_input(str(tmp / "long_1080p.mp4"), args.long_seconds, 1920, 1080, seed=1, preset="ultrafast",
                          options={"forced-idr": "1"}, force_keyframes=True)
        print(f"long input: {long['frames']} frames ({time.perf_counter() - t0:.1f} s to generate)", flush=True)
        result["worker_rss"] = {"seconds": args.long_seconds, "frames": long["frames"],
                                "raw_rgb_gib": long["frames"] * 1920 * 1080 * 3 / 1024**3, "rows": []}
        for label, over in [("split + copy", ["split.extract_mode=copy"]),
                            ("split + precise (short side 360)", ["split.clip_short_side=360"])]:
            r = rss_of_worker(long["path"], str(tmp / ("long_" + label[8:12])), over)
            r.update(worker=label, detection_frames_per_s=long["frames"] / r["split_s"])
            result["worker_rss"]["rows"].append(r)
            print(r, flush=True)

    result["meta"] = finish_metadata(result["meta"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}; render the doc with: python bench/render_benchmarks.py")


if __name__ == "__main__":
    main()
