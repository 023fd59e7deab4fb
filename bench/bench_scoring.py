"""Scoring throughput: the CLIP/aesthetic stage end to end against its model alone, same run, same batch.

model-only : the stage's own model objects (open_clip image tower + LAION aesthetic head, weights in
             the stage's precision) on a pre-made device tensor of B preprocessed frames.
end-to-end : ClipScoreStage called on Arrow batches of clip rows, exactly as the Ray actor is: read
             and hash each mp4, decode its K frames with PyAV in the stage's thread pool, crop /
             resize / normalise on the device, the model at the same B, scores and embeddings out.
decode-only: the stage's decoder processes over the same rows, no model (the CPU bound), with the
             CPU time its workers and the driving process spent per clip.
Both with frames resized on the device and with frames resized to the model's input by FFmpeg's
scaler in the decode workers (--scale-in-decoder).
--stills   : clips written by precise extraction's writer with their stills files; end to end and
             decode-only from the stills and from the clips (rows without stills_path), same run; how
             far the two paths' embeddings are apart; the writer's CPU per clip with and without stills.
cpu        : TechnicalStage and MotionStage on one core (--cpu-scorers), clip frames per second.

Clips are generated here with PyAV (moving textures, H.264), so nothing is downloaded. Weights are
random (real architecture, built by the same code as the tiny preset's models).

    python bench/bench_scoring.py --model ViT-L-14 --batch 256 --clips 512 --json out.json
    python bench/bench_scoring.py --model vidcorpus-tiny-clip --batch 16 --clips 24 --calls 2   # CPU smoke
    python bench/bench_scoring.py ... --stills --scale-in-decoder off   # stills (vidcorpus/stills.py) vs clips
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from run_meta import finish_metadata, run_metadata


def make_clip(args: tuple) -> str:
    path, seed, w, h, n, fps, keyframes_at = args
    from vidcorpus.media import encode_video, uniform_indices

    rng = np.random.default_rng(seed)
    big = rng.integers(0, 256, (h // 8 + 8, (w + 4 * n) // 8 + 8, 3), dtype=np.uint8)
    big = np.kron(big, np.ones((8, 8, 1), dtype=np.uint8))
    dx = int(rng.integers(1, 5))
    frames = np.stack([big[:h, dx * t:dx * t + w] for t in range(n)])
    # keyframes_at = K: keyframes at the K frames the scorer samples, as precise extraction writes
    # clips (split.keyframes_at_samples); 0: x264's own placement (one keyframe in a short clip)
    encode_video(frames, fps, path, keyframes=uniform_indices(n, keyframes_at) if keyframes_at else None)
    return path


def make_clips(out: Path, count: int, w: int, h: int, n: int, fps: int, workers: int,
               keyframes_at: int = 0) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(out / f"clip_{i:05d}.mp4"), i, w, h, n, fps, keyframes_at) for i in range(count)]
    with ProcessPoolExecutor(workers) as ex:
        return list(ex.map(make_clip, jobs, chunksize=4))


def texture_frames(seed: int, w: int, h: int, n: int) -> list:
    """The benchmark's moving texture as yuv420p VideoFrames (what a decoded H.264 source gives)."""
    import av

    rng = np.random.default_rng(seed)
    big = rng.integers(0, 256, (h // 8 + 8, (w + 4 * n) // 8 + 8, 3), dtype=np.uint8)
    big = np.kron(big, np.ones((8, 8, 1), dtype=np.uint8))
    dx = int(rng.integers(1, 5))
    return [av.VideoFrame.from_ndarray(np.ascontiguousarray(big[:h, dx * t:dx * t + w]), format="rgb24").reformat(
        format="yuv420p") for t in range(n)]


def extract_clip(frames: list, fps: int, k: int, still_size: int) -> tuple[bytes, bytes | None]:
    """One clip as precise extraction writes it (ingest.extract._ClipWriter, the default split
    settings: H.264 crf 20 veryfast, keyframes at the K sampled frames) and its stills file
    (still_size 0: none)."""
    from vidcorpus.config import SplitConfig
    from vidcorpus.ingest.extract import _ClipWriter

    cfg = SplitConfig()
    w = _ClipWriter(fps, cfg.clip_codec, cfg.clip_crf, cfg.clip_preset, None, None, source_frames=len(frames),
                    keyframes_at=k, stills_at=k, still_short_side=still_size)
    for f in frames:
        w.add(f)
    data = w.close()
    return data, w.stills_jpeg()


def make_extracted_clip(args: tuple) -> tuple[str, str | None]:
    path, seed, w, h, n, fps, k, still_size = args
    data, stills = extract_clip(texture_frames(seed, w, h, n), fps, k, still_size)
    Path(path).write_bytes(data)
    spath = None
    if stills is not None:
        spath = path.replace(".mp4", ".stills.jpg")
        Path(spath).write_bytes(stills)
    return path, spath


def make_extracted_clips(out: Path, count: int, w: int, h: int, n: int, fps: int, workers: int, k: int,
                         still_size: int) -> list[tuple[str, str | None]]:
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(out / f"clip_{i:05d}.mp4"), i, w, h, n, fps, k, still_size) for i in range(count)]
    with ProcessPoolExecutor(workers) as ex:
        return list(ex.map(make_extracted_clip, jobs, chunksize=4))


def bench_extraction_overhead(w: int, h: int, n: int, fps: int, k: int, still_size: int, clips: int,
                              repeat: int = 3) -> dict:
    """CPU ms per clip of the extraction writer (encode, keyframes at the samples) without and with
    stills, same source frames, alternating, in this process; best of `repeat`. Source decoding is
    not included (it is the same either way), so the overhead's share is an upper bound."""
    import cv2

    cv2.setNumThreads(1)
    sources = [texture_frames(1000 + i, w, h, n) for i in range(clips)]
    best = {"without_stills_ms": 1e9, "with_stills_ms": 1e9}
    size = 0
    for _ in range(repeat):
        for key, ss in (("without_stills_ms", 0), ("with_stills_ms", still_size)):
            c0 = time.process_time()
            for fr in sources:
                _, st = extract_clip(fr, fps, k, ss)
                size += len(st or b"")
            best[key] = min(best[key], (time.process_time() - c0) / clips * 1e3)
    stills_bytes = size / (repeat * clips)
    clip_bytes = np.mean([len(extract_clip(fr, fps, k, 0)[0]) for fr in sources[:4]])
    return {**best, "overhead_ms": best["with_stills_ms"] - best["without_stills_ms"],
            "overhead_ratio": best["with_stills_ms"] / best["without_stills_ms"] - 1,
            "stills_kib": stills_bytes / 1024, "clip_kib": float(clip_bytes) / 1024, "clips": clips,
            "frames_per_clip": n, "still_size": still_size}


def compare_paths(stage, rows: list[dict]) -> dict:
    """Embeddings and aesthetic scores of the same clips from their stills and from their decoded
    frames (the fallback): how far apart, against how far the clips are from each other."""
    from vidcorpus.schemas import rows_to_table

    def run(rs):
        out = stage(rows_to_table(rs)).to_pylist()
        assert not any(r["error_class"] for r in out)
        emb = np.array([r["embedding"] for r in out], dtype=np.float64)
        aes = np.array([next(s["value"] for s in r["scores"] if s["scorer"] == "aesthetic") for r in out])
        return emb, aes

    e1, a1 = run(rows)
    e0, a0 = run([dict(r, stills_path=None) for r in rows])
    cos = (e1 * e0).sum(1)
    between = e0 @ e0.T
    np.fill_diagonal(between, np.nan)
    return {"clips": len(rows), "cos_stills_vs_clip_min": float(cos.min()), "cos_stills_vs_clip_mean": float(cos.mean()),
            "cos_between_clips_max": float(np.nanmax(between)), "cos_between_clips_mean": float(np.nanmean(between)),
            "aesthetic_abs_diff_max": float(np.abs(a1 - a0).max()), "aesthetic_spread_std": float(a0.std())}


def rows_for(paths: list, n: int, fps: int, w: int, h: int, text: bool, stills: bool = False) -> list[dict]:
    """Clip rows; paths are clip paths or (clip path, stills path) pairs (stills: rows carry them)."""
    from vidcorpus.schemas import empty_row

    pairs = [p if isinstance(p, tuple) else (p, None) for p in paths]
    return [empty_row(clip_id=f"c{i:06d}", media_type="video", clip_path=p, fps=float(fps), width=w, height=h,
                      first_frame=0, last_frame=n - 1, start_s=0.0, end_s=n / fps, clip_frames=n,
                      clip_width=w, clip_height=h, clip_fps=float(fps), stills_path=sp if stills else None,
                      text="a textured surface seen in a slow camera pan" if text else "")
            for i, (p, sp) in enumerate(pairs)]


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_model_only(stage, batch: int, iters: int) -> float:
    import torch

    x = torch.randn(batch, 3, stage.image_size, stage.image_size, device=stage.device).to(stage.dtype)
    with torch.inference_mode():
        for _ in range(3):
            stage.head(stage.model.encode_image(x, normalize=True).float())
        sync(stage.device)
        t0 = time.perf_counter()
        for _ in range(iters):
            stage.head(stage.model.encode_image(x, normalize=True).float())
        sync(stage.device)
    return batch * iters / (time.perf_counter() - t0)


def bench_e2e(stage, rows: list[dict], rows_per_call: int, calls: int) -> tuple[float, int]:
    from vidcorpus.schemas import rows_to_table

    tables = [rows_to_table([rows[(c * rows_per_call + i) % len(rows)] for i in range(rows_per_call)])
              for c in range(calls + 1)]
    out = stage(tables[0])  # warm-up (threads, allocator, kernels)
    assert not any(out.column("error_class").to_pylist()), out.column("error").to_pylist()[:3]
    sync(stage.device)
    t0 = time.perf_counter()
    frames = 0
    for t in tables[1:]:
        out = stage(t)
        frames += sum(len(s) and stage.config.filters.frames_per_clip for s in out.column("scores").to_pylist())
    sync(stage.device)
    return frames / (time.perf_counter() - t0), frames


def _proc_cpu_s(pids) -> float:
    """User + system CPU seconds of processes (all their threads), from /proc."""
    tck = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(f[11]) + int(f[12])
    return total / tck


def decode_all(dec, rows: list[dict]) -> int:
    """Decode rows in order through the decoder's slots and drop the frames; frames decoded."""
    jobs: list = []
    n = 0
    for j in range(len(rows)):
        if j >= len(jobs) or len(dec.free) >= dec.n_slots // 4:
            jobs += dec.submit_many([(r, dec.k) for r in rows[len(jobs):]])
        shape, _ = dec.result(jobs[j])
        n += shape[0]
        dec.release(jobs[j][2])
    return n


def bench_decode_only(stage, rows: list[dict], k: int) -> dict:
    """The stage's decoder processes alone over the same rows (the CPU side's own ceiling), with the
    CPU time the workers and this process spent per clip (where the time goes)."""
    dec = stage.decoder()
    decode_all(dec, rows[:32])
    pids = list(dec.pool._processes)
    s0 = dec.stills_clips
    w0, c0, t0 = _proc_cpu_s(pids), time.process_time(), time.perf_counter()
    n = decode_all(dec, rows)
    wall = time.perf_counter() - t0
    work, main = _proc_cpu_s(pids) - w0, time.process_time() - c0
    return {"fps": n / wall, "clips_per_s": len(rows) / wall, "workers": dec.workers, "hw_clips": dec.hw_clips,
            "stills_clips": dec.stills_clips - s0,
            "worker_cpu_ms_per_clip": work / len(rows) * 1e3, "main_cpu_ms_per_clip": main / len(rows) * 1e3,
            "worker_busy": work / (wall * dec.workers)}


def profile_worker(rows: list[dict], k: int, scale) -> dict:
    """CPU ms per clip of each step of a decode worker, in this process (one core): read + sha256,
    open (stream info probed without decoding) + demux, decoding the K frames without converting them,
    then with the RGB conversion, then with the scaler's resize to the model input (`scale`)."""
    from vidcorpus.filters.clip_frames import read_clip
    from vidcorpus.frame_seek import decode_frames_seeking, open_video, to_rgb
    from vidcorpus.media import uniform_indices

    datas = [read_clip(r)[0] for r in rows]
    wanted = [uniform_indices(r["clip_frames"], k) for r in rows]

    def demux(d):
        with open_video(d) as c:
            s = c.streams.video[0]
            for _ in c.demux(s):
                pass

    steps = {"read_sha256": lambda i: read_clip(rows[i]),
             "open_demux": lambda i: demux(datas[i]),
             "decode_k_no_convert": lambda i: decode_frames_seeking(datas[i], wanted[i], lambda f: None),
             "decode_k_rgb": lambda i: decode_frames_seeking(datas[i], wanted[i], to_rgb),
             "decode_k_scaled": lambda i: decode_frames_seeking(datas[i], wanted[i], scale)}
    out = {}
    for name, fn in steps.items():
        best = 1e9
        for _ in range(3):
            c0 = time.process_time()
            for i in range(len(rows)):
                fn(i)
            best = min(best, (time.process_time() - c0) / len(rows) * 1e3)
        out[name + "_ms"] = best
    return out


def check_hwaccel(rows: list[dict], k: int) -> dict:
    """NVDEC (KeyframeDecoder) against the CPU decoder on the same clips, in this process: identical
    frames?, and the CPU ms per clip of each (one core)."""
    from vidcorpus.filters.clip_frames import read_clip
    from vidcorpus.frame_seek import KeyframeDecoder, decode_frames_seeking
    from vidcorpus.media import uniform_indices

    out: dict = {}
    try:
        kd = KeyframeDecoder("cuda")
    except Exception as e:  # noqa: BLE001
        return {"error": repr(e)}
    datas = [read_clip(r)[0] for r in rows]
    wanted = [uniform_indices(r["clip_frames"], k) for r in rows]
    same, max_diff, hw_none = 0, 0, 0
    for d, w in zip(datas, wanted):
        a, b = kd.decode(d, w), decode_frames_seeking(d, w)
        if a is None:
            hw_none += 1
            continue
        diffs = [int(np.abs(a[i].astype(np.int16) - b[i]).max()) for i in w]
        same += all(x == 0 for x in diffs)
        max_diff = max(max_diff, *diffs)
    out.update(clips=len(rows), identical=same, hw_declined=hw_none, max_abs_diff=max_diff)
    for name, fn in (("cpu_ms_per_clip_nvdec", lambda d, w: kd.decode(d, w)),
                     ("cpu_ms_per_clip_software", decode_frames_seeking)):
        best, wall = 1e9, 1e9
        for _ in range(3):
            c0, t0 = time.process_time(), time.perf_counter()
            for d, w in zip(datas, wanted):
                fn(d, w)
            best = min(best, (time.process_time() - c0) / len(rows) * 1e3)
            wall = min(wall, (time.perf_counter() - t0) / len(rows) * 1e3)
        out[name] = best
        out[name.replace("cpu", "wall")] = wall
    return out


def set_decode_scale(stage, on: bool) -> None:
    """Frames resized to the model's input by FFmpeg's scaler in the workers (on) or on the device."""
    from vidcorpus.filters.clip_frames import ScaleToModel

    import open_clip

    if stage._decoder is not None:
        stage._decoder.close()
        stage._decoder = None
    pre = open_clip.get_model_preprocess_cfg(stage.model)
    stage.decode_scale = ScaleToModel(pre.get("size", 224), pre.get("interpolation", "bicubic"),
                                      pre.get("resize_mode", "shortest")) if on else None


def bench_cpu_scorers(rows: list[dict], n_frames: int, repeat: int) -> dict:
    """Technical and motion on one core (this process, OpenCV single-threaded): clip frames/s."""
    import cv2

    from vidcorpus.config import load_config
    from vidcorpus.filters.motion import MotionStage
    from vidcorpus.filters.technical import TechnicalStage
    from vidcorpus.schemas import rows_to_table

    cv2.setNumThreads(1)
    cfg = load_config(None, [])
    out = {}
    from vidcorpus.filters.clip_frames import decode_wanted

    best = 0.0  # reference: decoding every frame of the same clips, one thread, nothing else
    for _ in range(repeat):
        t0 = time.perf_counter()
        for r in rows:
            decode_wanted(Path(r["clip_path"]).read_bytes(), list(range(n_frames)))
        best = max(best, len(rows) * n_frames / (time.perf_counter() - t0))
    out["decode_all_frames"] = {"clip_frames_per_s_per_core": best, "clips_per_s_per_core": best / n_frames}
    for name, cls in (("technical", TechnicalStage), ("motion", MotionStage)):
        stage = cls(cfg)
        stage(rows_to_table(rows[:2]))
        best = 0.0
        for _ in range(repeat):
            t0 = time.perf_counter()
            res = stage(rows_to_table(rows))
            dt = time.perf_counter() - t0
            assert not any(res.column("error_class").to_pylist())
            best = max(best, len(rows) * n_frames / dt)
        out[name] = {"clip_frames_per_s_per_core": best, "clips_per_s_per_core": best / n_frames,
                     "of_decode": best / out["decode_all_frames"]["clip_frames_per_s_per_core"]}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ViT-L-14")
    p.add_argument("--batch", type=int, default=256, help="frames per model batch (B), both measurements")
    p.add_argument("--clips", type=int, default=512, help="distinct generated clip files per clip length")
    p.add_argument("--rows-per-call", type=int, default=1024, help="clips per stage call (the Ray batch)")
    p.add_argument("--calls", type=int, default=4, help="timed stage calls")
    p.add_argument("--iters", type=int, default=20, help="timed model-only batches")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--frames", type=int, nargs="+", default=[48],
                   help="frames per clip, one end-to-end measurement each (48 = 2 s at 24 fps); the first is "
                        "also measured with text (clip_text adds the text tower)")
    p.add_argument("--k", type=int, default=3, help="frames scored per clip")
    p.add_argument("--threads", type=int, default=0, help="decode worker processes (0: the stage default)")
    p.add_argument("--scale-in-decoder", choices=["both", "off", "on"], default="both",
                   help="end to end with frames resized on the device (off), by FFmpeg's scaler in the decode "
                        "workers (on), or both in the same run")
    p.add_argument("--hwaccel", choices=["none", "cuda", "both"], default="none",
                   help="decode workers with a long-lived NVDEC decoder for keyframe samples (cuda), on the CPU "
                        "(none), or both in the same run")
    p.add_argument("--sweep-workers", type=int, nargs="*", default=[],
                   help="also decode-only with these worker counts (first clip length)")
    p.add_argument("--keyframes", choices=["samples", "encoder"], default="samples",
                   help="samples: clips carry keyframes at the K sampled frames, as vidcorpus's precise "
                        "extraction writes them; encoder: x264's own placement (one keyframe per short clip)")
    p.add_argument("--stills", action="store_true",
                   help="clips written by precise extraction's writer with their stills file (filters.still_size); "
                        "end to end and decode-only both from the stills and decoding the clips, same run, plus "
                        "the writer's CPU cost with and without stills")
    p.add_argument("--still-size", type=int, default=256, help="short side of the stills (filters.still_size)")
    p.add_argument("--extract-clips", type=int, default=16, help="clips timed for the extraction overhead")
    p.add_argument("--cpu-scorers", action="store_true", help="also time technical and motion on one core")
    p.add_argument("--cpu-only", action="store_true", help="only the CPU scorers")
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=None)
    a = p.parse_args()

    import torch

    from vidcorpus.config import load_config
    from vidcorpus.clip_models import build_tiny_clip
    from vidcorpus.filters.aesthetic_head import build_tiny_aesthetic_head

    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench-scoring-"))
    result: dict = {"meta": run_metadata(), "args": vars(a), "cpu_count": os.cpu_count(),
                    "torch": torch.__version__, "device": "cpu", "runs": []}
    if torch.cuda.is_available():
        result["device"] = torch.cuda.get_device_name(0)
    import av
    import cv2

    result.update(cv2=cv2.__version__, av=av.__version__)
    t0 = time.time()
    clip_sets = {}
    for n in a.frames:
        if a.stills:
            paths = make_extracted_clips(work / f"clips-{n}-extracted-s{a.still_size}", a.clips, a.width, a.height,
                                         n, 24, max(1, os.cpu_count() or 2), a.k, a.still_size)
            assert all(sp for _, sp in paths), "the writer gave no stills"
        else:
            paths = make_clips(work / f"clips-{n}-{a.keyframes}", a.clips, a.width, a.height, n, 24,
                               max(1, os.cpu_count() or 2), a.k if a.keyframes == "samples" else 0)
        clip_sets[n] = paths
    result["generate_s"] = time.time() - t0
    first = a.frames[0]
    if a.stills:
        result["load_before_extract"] = os.getloadavg()
        result["extraction"] = [bench_extraction_overhead(a.width, a.height, n, 24, a.k, a.still_size, a.extract_clips)
                                for n in a.frames]
        result["load_after_extract"] = os.getloadavg()
        print(f"extraction writer, CPU ms per clip: {json.dumps(result['extraction'])}", flush=True)
    if a.cpu_scorers or a.cpu_only:
        result["load_before_cpu"] = os.getloadavg()
        result["cpu"] = {}
        for n in a.frames:
            rows = rows_for(clip_sets[n], n, 24, a.width, a.height, False)
            result["cpu"][f"{n}_frames"] = bench_cpu_scorers(rows[:min(len(rows), 16)], n, 3)
        result["load_after_cpu"] = os.getloadavg()
        print(json.dumps(result["cpu"], indent=1), flush=True)
    if not a.cpu_only:
        from vidcorpus.filters.clip_scores import ClipScoreStage

        t0 = time.time()
        weights = build_tiny_clip(work / "models" / "clip.safetensors", a.model)
        head = build_tiny_aesthetic_head(work / "models" / "aesthetic.pth", a.model)
        cfg = load_config(None, [], **{"models.clip_model": a.model, "models.clip_pretrained": weights,
                                       "models.aesthetic_head": head, "filters.clip_batch_size": a.batch,
                                       "filters.frames_per_clip": a.k, "filters.decode_threads": a.threads})
        stage = ClipScoreStage(cfg)
        stage.setup()
        stage._ready = True
        result["model_build_s"] = time.time() - t0
        result["dtype"] = str(stage.dtype)
        result["decode_workers"] = stage.decoder().workers
        models = [bench_model_only(stage, a.batch, a.iters)]
        print(f"model-only {models[-1]:.0f} frames/s", flush=True)
        scales = {"both": [False, True], "off": [False], "on": [True]}[a.scale_in_decoder]
        hws = {"both": [None, "cuda"], "none": [None], "cuda": ["cuda"]}[a.hwaccel]
        if "cuda" in hws:
            rows = rows_for(clip_sets[first], first, 24, a.width, a.height, False)
            result["hwaccel_check"] = check_hwaccel(rows[:32], a.k)
            print(f"NVDEC check: {json.dumps(result['hwaccel_check'])}", flush=True)
            chk = result["hwaccel_check"]
            if "error" in chk or chk["hw_declined"] == chk["clips"]:
                hws = [h for h in hws if h != "cuda"] or [None]  # no working NVDEC here: CPU runs only
        sts = [True, False] if a.stills else [False]
        plan = ([(n, False, sc, hw, st) for hw in hws for sc in scales for n in a.frames for st in sts]
                + [(first, True, scales[-1], hws[-1], sts[0])])
        if a.stills:
            result["stills_vs_clip"] = compare_paths(stage, rows_for(clip_sets[first], first, 24, a.width, a.height,
                                                                     False, True)[:min(a.clips, 2 * a.batch)])
            print(f"stills against clip frames: {json.dumps(result['stills_vs_clip'])}", flush=True)
        for n, text, sc, hw, st in plan:
            if (stage.decode_scale is not None) != sc or stage.decode_hwaccel != hw:
                stage.decode_hwaccel = hw
                set_decode_scale(stage, sc)
            rows = rows_for(clip_sets[n], n, 24, a.width, a.height, text, st)
            e2e, frames = bench_e2e(stage, rows, a.rows_per_call, a.calls)
            dec = bench_decode_only(stage, rows, a.k)
            run = {"clip": f"{a.width}x{a.height} H.264, {n} frames at 24 fps", "frames_per_clip": n, "text": text,
                   "scale_in_decoder": sc, "hwaccel": hw, "stills": st, "e2e_fps": e2e, "e2e_frames": frames, "decode_only_fps": dec["fps"],
                   "decode_only": dec, "load": os.getloadavg()}
            result["runs"].append(run)
            if a.json:  # partial results survive a run cut short
                Path(a.json).write_text(json.dumps(result, indent=1, default=str))
            print(f"end-to-end {run['clip']} text={text} scale_in_decoder={sc} hwaccel={hw} stills={st}: {e2e:.0f} frames/s over {frames} "
                  f"frames; decode-only {json.dumps(dec)}", flush=True)
        if a.sweep_workers:
            rows = rows_for(clip_sets[first], first, 24, a.width, a.height, False)
            from vidcorpus.filters.clip_frames import ScaleToModel

            pre = __import__("open_clip").get_model_preprocess_cfg(stage.model)
            result["worker_profile"] = profile_worker(rows[:64], a.k, ScaleToModel(
                pre.get("size", 224), pre.get("interpolation", "bicubic"), pre.get("resize_mode", "shortest")))
            print(f"one worker's steps, CPU ms per clip: {json.dumps(result['worker_profile'])}", flush=True)
            rows = rows * 3
            result["worker_sweep"] = []
            for w in a.sweep_workers:
                stage._decoder.close()
                stage._decoder = None
                stage.config.filters.decode_threads = w
                dec = bench_decode_only(stage, rows, a.k)
                dec["scale_in_decoder"] = stage.decode_scale is not None
                dec["hwaccel"] = stage.decode_hwaccel
                result["worker_sweep"].append(dec)
                print(f"decode-only, {w} workers: {json.dumps(dec)}", flush=True)
        models.append(bench_model_only(stage, a.batch, a.iters))
        print(f"model-only (again) {models[-1]:.0f} frames/s", flush=True)
        model = sum(models) / len(models)
        result.update(model_only_fps=models, model_only_mean_fps=model)
        for run in result["runs"]:
            run["ratio"] = run["e2e_fps"] / model
            print(f"ratio {run['clip']} text={run['text']} scale_in_decoder={run['scale_in_decoder']} "
                  f"hwaccel={run['hwaccel']} stills={run.get('stills')}: "
                  f"{run['ratio']:.3f}", flush=True)
        if torch.cuda.is_available():
            result["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    result["meta"] = finish_metadata(result["meta"])
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "args"}, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
