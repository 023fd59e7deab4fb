"""TransNetV2 frames per second, decode included, against decoding alone on the same file (issue 23).

Measures, on one video (``--video``, or ``--make SECONDS`` renders moving noise with PyAV):

- ``decode_only_48x27``: the split stage's decode, each frame scaled to the model's 48x27 RGB;
- ``transnetv2``: shot detection with ``split.detectors=[transnetv2]`` (the same decode feeding the
  model in batched windows; ``split.transnet_device`` auto: CUDA when the process sees a GPU);
- ``default_plus_transnetv2``: what ``split.transnet_on_gpu`` gives a GPU worker (adaptive+histogram,
  the evidence and dissolve checks, and TransNetV2 on one decode);
- ``default``: the CPU default alone, for scale;
- ``default_plus_transnetv2_in_process``, ``..._in_child``, ``default_in_child`` (``--only`` them; code
  with ``split.decode_process``): the rows with the decoding in this process or in a child of its own;
- ``model_only``: the network on frames already on the device (batched 100-frame windows);
- ``decode_only_unscaled``: decoding alone, no frame converted (the ceiling of any detector);
- ``transnetv2_feed`` (``--only`` it): the TransNetV2 path with the network swapped for a no-op that
  returns zeros of its output's shape: what feeding the model costs, the bound on a GPU where the
  network takes 30,000 frames/s. A proxy for CPU-only machines, never a detection result.

Detection rows get the probe's rotation, as the split stage hands it to ``detect_segments`` (without
it the split opens the file once more to read the first frame's display matrix).

``cpu_ms_per_frame`` gives each row's CPU time (all threads of the process and of its decoding child) per frame: on a node
whose cores are all busy with other tasks, that, not frames/s, is what detection costs.

Each is run ``--repeat`` times after one warm-up (model load, CUDA context, cuDNN autotuning), and
the best run is kept. Prints JSON (and writes it to ``--out``). Imports only torch, av, numpy,
scenedetect and vidcorpus, so it runs on a GPU machine with carried wheels:

    python bench/bench_transnet_gpu.py --make 120 --out transnet_gpu.json
    python bench/bench_transnet_gpu.py --video some.mp4 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import av
import cv2
import numpy as np
import torch

from vidcorpus.config import SplitConfig
from vidcorpus.ingest import scale_ahead
from vidcorpus.ingest.probe import probe_video_file
from vidcorpus.ingest.split import detect_segments
from vidcorpus.ingest.transnet import CONTEXT, STEP, WINDOW, TransNetRun, bfloat16_here, load_model, pick_device
from vidcorpus.ingest.transnet_input import HEIGHT, WIDTH
from vidcorpus.media import upright_array


def make_video(path: str, seconds: float, fps: int = 25, size: tuple[int, int] = (1280, 720)) -> str:
    """Moving low-frequency noise with a hard cut every 4 s (H.264): something to decode and detect."""
    rng = np.random.default_rng(0)
    w, h = size
    with av.open(path, mode="w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "23"}
        tile = None
        for k in range(int(seconds * fps)):
            if k % (4 * fps) == 0:
                tile = np.kron(rng.integers(0, 256, (h // 40 + 2, w // 40 + 2, 3), dtype=np.uint8),
                               np.ones((40, 40, 1), np.uint8))
            shift = (3 * k) % 40
            arr = np.ascontiguousarray(tile[shift:shift + h, shift:shift + w])
            for p in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def decode_only(path: str) -> int:
    n = 0
    with av.open(path) as c:
        c.streams.video[0].thread_type = "AUTO"
        for frame in c.decode(video=0):
            upright_array(frame, WIDTH, HEIGHT)
            n += 1
    return n


def decode_unscaled(path: str) -> int:
    n = 0
    with av.open(path) as c:
        c.streams.video[0].thread_type = "AUTO"
        for _frame in c.decode(video=0):
            n += 1
    return n


CPU_MS: dict = {}  # row -> CPU ms per frame of its best run


def cpu_seconds() -> float:
    """CPU seconds of this process and of its shot-decoding children (``split.decode_process``: they
    stay, so ``os.times()``' children fields, which count only children waited for, miss them)."""
    total = time.process_time()
    try:
        from vidcorpus.ingest import decode_process
    except ImportError:  # code from before the decoding process
        return total
    for decoder in list(decode_process._ALL):
        try:
            with open(f"/proc/{decoder.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
        except (OSError, ValueError, IndexError):
            pass
    return total


def best_of(fn, repeat: int, row: str | None = None) -> tuple[float, int]:
    """(best seconds, frames) over ``repeat`` runs after one warm-up."""
    fn()
    best, frames = float("inf"), 0
    for _ in range(repeat):
        t, c = time.perf_counter(), cpu_seconds()
        frames = fn()
        if time.perf_counter() - t < best:
            best = time.perf_counter() - t
            if row:
                CPU_MS[row] = round((cpu_seconds() - c) / max(1, frames) * 1e3, 3)
    return best, frames


class NoNetwork:
    """Stands in for TransNetV2 in the ``transnetv2_feed`` row: zeros of the network's output shape."""

    def __call__(self, windows):
        zeros = torch.zeros(windows.shape[0], windows.shape[1], 1, device=windows.device)
        return zeros, {"many_hot": zeros}


def model_only(device: str, batch_windows: int, n_windows: int = 32, bfloat16: bool = False) -> float:
    """Frames/s of the network alone: ``n_windows`` windows of random frames already on ``device``."""
    model = load_model(device=device)
    x = torch.randint(0, 256, (batch_windows, WINDOW, HEIGHT, WIDTH, 3), dtype=torch.uint8, device=device)

    def run() -> int:
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bfloat16):
            for _ in range(max(1, n_windows // batch_windows)):
                model(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return max(1, n_windows // batch_windows) * batch_windows * STEP  # frames each window predicts

    seconds, frames = best_of(run, 3)
    return frames / seconds


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", help="the video to measure on")
    ap.add_argument("--make", type=float, metavar="SECONDS", help="render a test video of this length")
    ap.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT of the --make video")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--batch-windows", type=int, default=8, help="split.transnet_batch_windows")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="split.transnet_device")
    ap.add_argument("--float32", action="store_true", help="on CPU, TransNetV2 in float32 even where the CPU has "
                                                          "native bfloat16 (split.transnet_cpu_bfloat16=false)")
    ap.add_argument("--default-layout", action="store_true", help="the network's weights in PyTorch's default "
                                                                 "layout, as before the channels-last change (CPU)")
    ap.add_argument("--skip-default", action="store_true", help="leave out the CPU-default rows")
    ap.add_argument("--only", help="comma-separated rows to run (default: all but transnetv2_feed)")
    ap.add_argument("--cv2-threads", type=int, help="OpenCV's threads in this process (the detection's default: 1)")
    ap.add_argument("--out", help="write the JSON here too")
    a = ap.parse_args(argv)
    if not a.video and not a.make:
        ap.error("give --video PATH or --make SECONDS")
    if a.cv2_threads is not None:  # the scaler pool sets scale_ahead.OPENCV_THREADS once it exists
        scale_ahead.OPENCV_THREADS = a.cv2_threads
        cv2.setNumThreads(a.cv2_threads)
    size = tuple(int(v) for v in a.size.lower().split("x"))
    path = a.video or make_video(os.path.join(tempfile.mkdtemp(), "transnet_bench.mp4"), a.make, size=size)
    device = pick_device(a.device)
    if a.default_layout:  # load_model keeps one model per process: every row gets this one
        load_model(device=device).to(memory_format=torch.contiguous_format)
    with av.open(path) as c:
        st = c.streams.video[0]
        info = {"video": os.path.basename(path), "width": st.codec_context.width, "height": st.codec_context.height,
                "fps": float(st.average_rate or 0)}
    fps = info["fps"] or 25.0
    result: dict = {**info, "device": device, "torch": torch.__version__, "batch_windows": a.batch_windows,
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cv2_threads": cv2.getNumThreads(),
                    "host": platform.node(), "loadavg": os.getloadavg()}
    if device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name(0)

    wanted = set(a.only.split(",")) if a.only else {
        "decode_only_48x27", "decode_only_unscaled", "transnetv2", "model_only",
        *(() if a.skip_default else ("default_plus_transnetv2", "default"))}
    seconds, frames = best_of(lambda: decode_only(path), a.repeat, "decode_only_48x27")
    result["frames"] = frames
    rows = {"decode_only_48x27": frames / seconds}
    if "decode_only_unscaled" in wanted:
        seconds, _ = best_of(lambda: decode_unscaled(path), a.repeat, "decode_only_unscaled")
        rows["decode_only_unscaled"] = frames / seconds

    with open(path, "rb") as f:  # the split stage passes the probe's rotation (ingest/split_stage.py), as here
        rotation = probe_video_file(f)["rotation"]

    def detect(cfg: SplitConfig, with_model: bool, network: bool = True):
        def run() -> int:
            run_ = TransNetRun.create(cfg) if with_model else None
            if run_ is not None and not network:
                run_.stream.model = NoNetwork()
            return detect_segments(path, cfg, fps=fps, transnet=run_, rotation=rotation).n_frames
        return run

    tn = SplitConfig(detectors=["transnetv2"], transnet_device=a.device, transnet_batch_windows=a.batch_windows,
                     flash_filter=False, dissolve_spans=False, histogram_evidence=False,
                     transnet_cpu_bfloat16=not a.float32)
    both = SplitConfig(transnet_on_gpu=True, transnet_device=a.device, transnet_batch_windows=a.batch_windows,
                       transnet_cpu_bfloat16=not a.float32)
    result["transnet_bfloat16"] = bfloat16_here(tn, device)
    result["weights_layout"] = "channels_last_3d" if device == "cpu" and not a.default_layout else "default"
    where = []  # the same rows decoded in this process and in a child (split.decode_process; code that has it)
    if "decode_process" in SplitConfig.model_fields:
        where = [("default_plus_transnetv2_in_process", both.model_copy(update={"decode_process": "off"}), True, True),
                 ("default_plus_transnetv2_in_child", both.model_copy(update={"decode_process": "on"}), True, True),
                 ("default_in_child", SplitConfig(decode_process="on"), False, True)]
    for row, cfg, with_model, network in [("transnetv2", tn, True, True), ("transnetv2_feed", tn, True, False),
                                          ("default_plus_transnetv2", both, True, True),
                                          ("default_plus_transnetv2_feed", both, True, False),
                                          ("default", SplitConfig(), False, True), *where]:
        if row in wanted:
            seconds, _ = best_of(detect(cfg, with_model, network), a.repeat, row)
            rows[row] = frames / seconds
    if "model_only" in wanted:
        rows["model_only"] = model_only(device, a.batch_windows, bfloat16=result["transnet_bfloat16"])
    result["frames_per_s"] = {k: round(v, 1) for k, v in rows.items()}
    result["cpu_ms_per_frame"] = CPU_MS
    for row in rows:
        if row not in ("decode_only_48x27", "model_only"):
            result[f"{row}_of_decode_only"] = round(rows[row] / rows["decode_only_48x27"], 3)
    result["loadavg_end"] = os.getloadavg()
    result["cv2_threads_end"] = cv2.getNumThreads()  # the detection rows set it (ingest/scale_ahead.OPENCV_THREADS)
    result["context_frames"] = CONTEXT
    print(json.dumps(result, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
