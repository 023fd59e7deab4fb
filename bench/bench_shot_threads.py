"""CPU time per frame of each thread in shot detection, against decoding alone (issue 23).

On a many-core GPU host, detection runs as fast as its busiest thread allows (FFmpeg's own decode
threads aside); on a 2-core shared machine frames/s mostly says how busy the neighbours were. This
measures, per frame, the CPU time of each of our threads (``time.thread_time``): the decode-only
loop (the split stage's decode, each frame scaled to 48x27, as bench_transnet_gpu.py's baseline),
and for each detection path PySceneDetect's decode thread (decode calls, the small BGR frame, the
flash watch's grid, hand-over to TransNetV2), the detector thread (the main thread) and the
TransNetV2 worker (48x27 scaling, windows, model calls), and the scaling pool's threads together
(the detectors' small BGR frames, ingest/scale_ahead.py). ``--no-network`` swaps the network for a
no-op of its output's shape (the GPU case, where it takes 30,000 frames/s, costs the CPU about
nothing), so the CPU rows show the feeding cost alone. Threads that are not ours (FFmpeg's decode
threads, torch's intra-op pool) are not counted; the windows left at the end of a source (all of
them when it is shorter than ``split.transnet_batch_windows`` windows, about 17 s at 25 fps) run in
the main thread's ``finish``.

    python bench/bench_transnet_gpu.py ...   # frames/s
    python bench/bench_shot_threads.py --video FILE --no-network --out threads.json
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time

import av

from vidcorpus.config import SplitConfig
from vidcorpus.ingest.split import detect_segments
from vidcorpus.ingest.transnet import TransNetRun
from vidcorpus.ingest.transnet_input import HEIGHT, WIDTH
from vidcorpus.media import upright_array

_CPU: dict[str, float] = {}
_LOCK = threading.Lock()


def _count(name: str, fn):
    """``fn`` wrapped so its thread's CPU time is added to ``_CPU[name]``."""
    def wrapped(*args, **kwargs):
        start = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            with _LOCK:
                _CPU[name] = _CPU.get(name, 0.0) + time.thread_time() - start
    return wrapped


def _instrument() -> None:
    from scenedetect import SceneManager

    SceneManager._decode_thread = _count("decode_thread", SceneManager._decode_thread)
    SceneManager.detect_scenes = _count("main_thread_detect_scenes", SceneManager.detect_scenes)
    try:
        from vidcorpus.ingest import frame_worker, scale_ahead
    except ImportError:  # code from before the helper threads: all of it in the decode thread
        return
    frame_worker.FrameWorker._loop = _count("transnet_worker", frame_worker.FrameWorker._loop)
    init = scale_ahead.ScaleAhead.__init__

    def counted_init(self, decode_next, scale, *args, **kwargs):  # the pool's threads, summed
        init(self, decode_next, _count(f"scaler_pool_{scale_ahead.SCALER_THREADS}_threads", scale), *args, **kwargs)

    scale_ahead.ScaleAhead.__init__ = counted_init


def decode_only(path: str) -> int:
    n = 0
    with av.open(path) as c:
        c.streams.video[0].thread_type = "AUTO"
        for frame in c.decode(video=0):
            upright_array(frame, WIDTH, HEIGHT)
            n += 1
    return n


class NoNetwork:
    def __call__(self, windows):
        import torch

        zeros = torch.zeros(windows.shape[0], windows.shape[1], 1, device=windows.device)
        return zeros, {"many_hot": zeros}


def measure(label: str, fn) -> dict:
    _CPU.clear()
    wall, main = time.perf_counter(), time.thread_time()
    frames = fn()
    wall = time.perf_counter() - wall
    per = {k: round(v / frames * 1e3, 3) for k, v in _CPU.items()}
    per["main_thread_total"] = round((time.thread_time() - main) / frames * 1e3, 3)
    return {"row": label, "frames": frames, "frames_per_s": round(frames / wall, 1), "thread_cpu_ms_per_frame": per}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", required=True)
    ap.add_argument("--no-network", action="store_true", help="swap TransNetV2 for a no-op (see above)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    _instrument()

    def detect(cfg: SplitConfig, with_model: bool):
        def run() -> int:
            tn = TransNetRun.create(cfg) if with_model else None
            if tn is not None and a.no_network:
                tn.stream.model = NoNetwork()
            return detect_segments(a.video, cfg, fps=25.0, transnet=tn).n_frames
        return run

    tn_alone = SplitConfig(detectors=["transnetv2"], transnet_device="auto", flash_filter=False,
                           dissolve_spans=False, histogram_evidence=False)
    both = SplitConfig(transnet_on_gpu=True, transnet_device="auto")
    cases = [("decode_only_48x27", lambda: decode_only(a.video)), ("default", detect(SplitConfig(), False)),
             ("transnetv2", detect(tn_alone, True)), ("default_plus_transnetv2", detect(both, True))]
    out = {"video": os.path.basename(a.video), "no_network": a.no_network, "loadavg": os.getloadavg(), "rows": []}
    for label, fn in cases:
        fn()  # warm-up
        runs = [measure(label, fn) for _ in range(a.repeat)]
        out["rows"].append(min(runs, key=lambda r: sum(r["thread_cpu_ms_per_frame"].values())))
    out["loadavg_end"] = os.getloadavg()
    print(json.dumps(out, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
