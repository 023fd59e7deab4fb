"""Shot detectors and combinations on the wider shot-boundary set (issue 23): real footage, truth by construction.

The footage (``bench_shot_footage.py``): a 72 s edit of packaged real footage with 20 hard cuts
(between shots, same-scene, jump cuts), 17 gradual transitions (dissolves of 8, 12 and 24 frames,
fades to black and back) and two flashes, and 60 s of seven long unedited takes joined by hard
cuts (fast motion, pans, whip pans, zooms, 14 camera flashes). TransNetV2 runs once per file on CPU (its probabilities are
cached under ``--cache`` by the file's hash); its rows re-decide from the saved probabilities.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_shot_wide.py --out bench/results/shot_wide_cpu.json

Metrics. Consecutive shots define a boundary event (the frames between them, empty at a plain cut).
Hard cut: an event within one frame of it; precision counts events that match no transition as
false (flashes included). Gradual transition found: an event overlaps it (lenient: one frame of a
dissolve out of the clips is enough); the strict measure is the share of transition frames inside
shots. False cuts per minute: events in the unedited file that match none of its take changes.
Clean frames dropped: frames of no transition that end up in no shot (what the detectors cost).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_shot_footage as footage  # noqa: E402
from bench_shot_learned import Replay, _NoStream  # noqa: E402 - saved TransNetV2 probabilities

from vidcorpus.config import SplitConfig  # noqa: E402
from vidcorpus.ingest.split import detect_segments  # noqa: E402
from vidcorpus.ingest.transnet import TransNetRun, bfloat16_here, load_probabilities  # noqa: E402

FPS = footage.FPS


def events(shots: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(first frame not in the earlier shot, first frame of the later shot) between consecutive shots."""
    return [(b + 1, a2) for (_, b), (a2, _) in zip(shots, shots[1:])]


def evaluate(shots: list[tuple[int, int]], truth: dict) -> dict:
    n = truth["n"]
    covered = np.zeros(n, bool)
    for a, b in shots:
        covered[a:b + 1] = True
    cuts = [c for c, _ in truth["cuts"]]
    gradual = [(a, b) for a, b, _ in truth["gradual"]]
    ev = events(shots)

    def near_cut(e):  # the event's frames [e0 - 1, e1] reach within one frame of the cut
        return [c for c in cuts if e[0] - 1 <= c <= e[1] + 1]

    def on_gradual(e):
        return [g for g in gradual if e[0] <= g[1] + 2 and e[1] >= g[0] - 1]

    hit: set[int] = set()
    false, extra = [], 0
    for e in ev:
        cs = near_cut(e)
        if cs:
            extra += all(c in hit for c in cs)
            hit.update(cs)
        elif not on_gradual(e):
            false.append(e)
    found = [g for g in gradual if any(on_gradual(e) and g in on_gradual(e) for e in ev)
             or not covered[g[0]:g[1] + 1].all()]
    in_transition = np.zeros(n, bool)
    for a, b in gradual:
        in_transition[a:b + 1] = True
    tp = len(hit)
    p = tp / max(1, tp + len(false) + extra)
    r = tp / max(1, len(cuts))
    kinds = sorted({k for _, k in truth["cuts"]})
    return {
        "hard_precision": round(p, 3), "hard_recall": round(r, 3),
        "hard_f1": round(2 * p * r / (p + r), 3) if p + r else 0.0,
        "recall_by_kind": {k: f"{sum(c in hit for c, kk in truth['cuts'] if kk == k)}/"
                              f"{sum(kk == k for _, kk in truth['cuts'])}" for k in kinds},
        "gradual_found": len(found), "gradual_total": len(gradual),
        "transition_frames": int(in_transition.sum()),
        "transition_frames_inside": int((covered & in_transition).sum()),
        "clean_frames_dropped": int((~covered & ~in_transition).sum()),
        "false_events": [list(e) for e in false],
        "flash_events": [list(e) for e in false if any(e[0] - 1 <= fb + 1 and e[1] >= fa for fa, fb in truth["flashes"])],
        "missed_cuts": [[c, k] for c, k in truth["cuts"] if c not in hit],
    }


def combine(rows: dict[str, dict], truth: dict) -> dict:
    """Both files' counts into the table's measures."""
    e, u = rows["edit"], rows["unedited"]
    tp = sum(r["hard_recall"] * len(truth[f]["cuts"]) for f, r in rows.items())
    n_cuts = sum(len(truth[f]["cuts"]) for f in rows)
    false = len(e["false_events"]) + len(u["false_events"])
    p = round(tp) / max(1, round(tp) + false)
    r = tp / n_cuts
    inside = sum(r_["transition_frames_inside"] for r_ in rows.values())
    total = sum(r_["transition_frames"] for r_ in rows.values())
    return {
        "hard_precision": round(p, 3), "hard_recall": round(r, 3), "hard_f1": round(2 * p * r / (p + r), 3) if p + r else 0,
        "gradual_recall": round(e["gradual_found"] / e["gradual_total"], 3),
        "false_cuts_per_min_unedited": round(len(u["false_events"]) / (truth["unedited"]["n"] / FPS / 60), 2),
        "flash_cuts": len(e["flash_events"]) + len(u["flash_events"]),
        "transition_frames_inside": round(inside / max(1, total), 3),
        "clean_frames_dropped": e["clean_frames_dropped"] + u["clean_frames_dropped"],
    }


AH, TN = ["adaptive", "histogram"], "transnetv2"
SPANS, EVIDENCE = dict(dissolve_spans=True), dict(histogram_evidence=True)


def row(detectors: list[str], **settings) -> dict:
    """A table row's split settings: the new checks off unless named (not the defaults of the day)."""
    return {"detectors": detectors, "dissolve_spans": False, "histogram_evidence": False,
            "transnet_gradual_only": False, **settings}


CONFIGS = {
    "adaptive+histogram": row(AH),
    "adaptive+histogram, flash filter off": row(AH, flash_filter=False),
    "adaptive+histogram + dissolve spans": row(AH, **SPANS),
    "adaptive+histogram + dissolve spans, no scan": row(AH, dissolve_scan=False, **SPANS),
    "adaptive+histogram + evidence": row(AH, **EVIDENCE),
    "adaptive+histogram + evidence + dissolve spans": row(AH, **EVIDENCE, **SPANS),
    "adaptive+histogram + evidence + dissolve spans + jump cuts": row(AH, jump_cuts=True, **EVIDENCE, **SPANS),
    "adaptive": row(["adaptive"]),
    "adaptive + dissolve spans": row(["adaptive"], **SPANS),
    "content": row(["content"]),
    "content + dissolve spans": row(["content"], **SPANS),
    "transnetv2": row([TN]),
    "transnetv2 + dissolve spans": row([TN], **SPANS),
    "adaptive+transnetv2": row(["adaptive", TN]),
    "adaptive+transnetv2 + dissolve spans": row(["adaptive", TN], **SPANS),
    "adaptive+histogram+transnetv2": row([*AH, TN]),
    "adaptive+histogram+transnetv2 + evidence + dissolve spans": row([*AH, TN], **EVIDENCE, **SPANS),
    # TransNetV2 beside the default gives only its dissolves and fades (ingest/transnet_gradual.py)
    "adaptive+histogram + evidence + dissolve spans + transnetv2 gradual": row([*AH, TN], transnet_gradual_only=True,
                                                                               **EVIDENCE, **SPANS),
}


def transnet_probabilities(path: str, cache: str, bfloat16: bool = False) -> tuple[str, float]:
    """The file's saved TransNetV2 probabilities (run on CPU once; cached by the file's hash and the
    precision: ``bfloat16`` only where the CPU has it natively, see ``bfloat16_here``), and frames/s."""
    cfg = SplitConfig(detectors=["transnetv2"], transnet_device="cpu", dissolve_spans=False,
                      transnet_cpu_bfloat16=bfloat16)
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()[:16]
    url = os.path.join(cache, f"{digest}-bf16.parquet" if bfloat16 else f"{digest}.parquet")
    if os.path.exists(url):
        return url, float("nan")
    run = TransNetRun.create(cfg, probabilities_url=url)
    t = time.perf_counter()
    found = detect_segments(path, cfg, fps=FPS, transnet=run)
    return url, found.n_frames / (time.perf_counter() - t)


def precision_differences(probs: dict, cache: str) -> dict:
    """Per file, the largest difference between the bfloat16 and float32 probabilities of each head,
    where both are in the cache (a --float32 run first, then one without)."""
    out = {}
    for name, url in probs.items():
        if not url.endswith("-bf16.parquet"):
            continue
        fp32 = url[:-len("-bf16.parquet")] + ".parquet"
        if os.path.exists(fp32):
            (s16, m16, _), (s32, m32, _) = load_probabilities(url), load_probabilities(fp32)
            out[name] = {"single": float(np.abs(s16 - s32).max()), "many": float(np.abs(m16 - m32).max())}
    return out


def rendered(folder: str, sources: str | None, seed: int) -> dict:
    """The footage's truth, rendered into ``folder`` unless an earlier run left it there (same seed)."""
    saved = os.path.join(folder, "truth.json")
    if os.path.exists(saved):
        with open(saved) as f:
            truth = json.load(f)
        if truth.get("seed") == seed:
            truth.pop("seed")
            return truth
    os.makedirs(folder, exist_ok=True)
    truth = footage.build(folder, sources, seed)
    with open(saved, "w") as f:
        json.dump({**truth, "seed": seed}, f)
    return truth


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--sources", help="folder with bikes.mp4, bigbuckbunny.mp4, transnetv2_test.mp4 "
                                      "(default: the installed packages' files)")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "vidcorpus-shot-bench"),
                    help="where TransNetV2's probabilities are kept between runs")
    ap.add_argument("--no-transnet", action="store_true", help="leave out the rows with transnetv2")
    ap.add_argument("--float32", action="store_true", help="TransNetV2 in float32 even on a CPU with native "
                                                          "bfloat16 (the CPU default uses bfloat16 there)")
    ap.add_argument("--only", nargs="*", help="run only these rows (names as in the table)")
    ap.add_argument("--seed", type=int, default=0, help="the edit's shuffle of takes and joins (0: the table's); "
                                                        "other seeds check that a change is not fitted to one edit")
    ap.add_argument("--footage", help="render the footage into this folder, or reuse what an earlier run rendered "
                                      "there (its truth.json): H.264 renders differ by a few bytes between runs, "
                                      "so reusing them keeps TransNetV2's cached probabilities")
    a = ap.parse_args(argv)
    tmp = a.footage or tempfile.mkdtemp()
    os.makedirs(a.cache, exist_ok=True)
    t0 = time.perf_counter()
    truth = rendered(tmp, a.sources, a.seed)
    results: dict = {"build_s": round(time.perf_counter() - t0, 1), "seed": a.seed, "truth": truth, "detectors": {},
                     "loadavg_start": os.getloadavg()}
    probs, tn_fps = {}, []
    bf16 = bfloat16_here(SplitConfig(transnet_cpu_bfloat16=not a.float32), "cpu")  # as the CPU default decides
    for name, t in truth.items():
        if not a.no_transnet:
            probs[name], fps = transnet_probabilities(t["path"], a.cache, bf16)
            tn_fps.append(fps)
    results["transnetv2_precision_cpu"] = "bfloat16" if bf16 else "float32"
    results["bf16_vs_fp32_max_abs_diff"] = precision_differences(probs, a.cache)
    results["transnetv2_fps_cpu"] = [round(x, 1) if x == x else None for x in tn_fps]  # None: read from the cache
    for label, kw in CONFIGS.items():
        if a.only and label not in a.only or a.no_transnet and "transnetv2" in kw["detectors"]:
            continue
        cfg = SplitConfig(**kw)
        rows, frames, seconds = {}, 0, 0.0
        for name, t in truth.items():
            replay = Replay(_NoStream(), cfg, "replay", probs[name]) if "transnetv2" in cfg.detectors else None
            t1 = time.perf_counter()
            found = detect_segments(t["path"], cfg, fps=FPS, transnet=replay)
            seconds += time.perf_counter() - t1
            frames += found.n_frames
            rows[name] = evaluate(found.shots, t)
        summary = combine(rows, truth)
        if "transnetv2" not in cfg.detectors:
            summary["fps_cpu"] = round(frames / seconds, 1)
        results["detectors"][label] = {"summary": summary, "files": rows}
        print(label, json.dumps(summary), flush=True)
    results["loadavg_end"] = os.getloadavg()
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    for t in truth.values():
        t.pop("path")
    if not a.footage:
        shutil.rmtree(tmp, ignore_errors=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
