"""Do torch.compile's cache artifacts (vidcorpus/compile_cache.py) spare a fresh GPU node its compiles?

Three processes compile the same small transformer stack (bf16 on a GPU) with Inductor, each with
its own empty or kept local folders (``TORCHINDUCTOR_CACHE_DIR`` and ``TRITON_CACHE_DIR``):

1. cold: empty folders, no artifacts; writes the artifacts after compiling (``save_artifacts``).
2. fresh node: new empty folders, hot-loads the artifacts first (``load_artifacts``).
3. warm node: the cold process's folders again (what a node's second job finds), no artifacts.

On the CPU the artifacts carry each graph's C++ source, which a new folder builds again; on a GPU
Inductor bundles the compiled Triton kernels into the graph's entry. Needs torch and fsspec only.

    python bench/probe_compile_cache_gpu.py --out DIR   (DIR/compile_cache_probe.json)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_meta import emit, finish_metadata, run_metadata  # noqa: E402

ONE = """
import json, sys, time
import torch
from torch._dynamo.utils import counters
from vidcorpus.compile_cache import load_artifacts, save_artifacts
url, mode, layers, width = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cuda = torch.cuda.is_available()
dev, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
t = time.perf_counter()
loaded = load_artifacts(url) if mode == "fresh_node" else None
load_s = time.perf_counter() - t
torch.manual_seed(0)
model = torch.nn.Sequential(*[torch.nn.TransformerEncoderLayer(width, 8, 4 * width, batch_first=True, norm_first=True)
                              for _ in range(layers)]).to(dev, dtype).eval()
x = torch.randn(32, 256, width, device=dev, dtype=dtype)
f = torch.compile(model)
t = time.perf_counter()
with torch.no_grad():
    f(x)
if cuda:
    torch.cuda.synchronize()
first_call_s = time.perf_counter() - t
t = time.perf_counter()
with torch.no_grad():
    for _ in range(5):
        f(x)
if cuda:
    torch.cuda.synchronize()
steady_s = (time.perf_counter() - t) / 5
saved = save_artifacts(url, loaded) if mode == "cold" else None
print(json.dumps({"mode": mode, "first_call_s": round(first_call_s, 2), "steady_call_s": round(steady_s, 4),
                  "load_s": round(load_s, 2), "loaded": loaded is not None, "saved": saved,
                  "inductor_counters": {k: v for k, v in counters["inductor"].items() if "cache" in k},
                  "aot_autograd_counters": {k: v for k, v in counters["aot_autograd"].items() if "cache" in k},
                  "torch": torch.__version__, "accelerator": torch.cuda.get_device_name(0) if cuda else "none (CPU)"}))
"""


def run_one(mode: str, folders: Path, url: str, layers: int, width: int) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(folders / "inductor"), "TRITON_CACHE_DIR": str(folders / "triton"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", ONE, url, mode, str(layers), str(width)], capture_output=True,
                         text=True, env=env, timeout=900)
    if out.returncode:
        raise SystemExit(f"{mode} failed: {out.stderr[-1500:]}")
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "process_s": round(time.perf_counter() - t, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--out", required=True, help="folder for compile_cache_probe.json")
    args = ap.parse_args()
    meta = run_metadata()
    work = Path(tempfile.mkdtemp(prefix="vc-compile-probe-"))
    url = str(work / "artifacts" / "probe.bin")
    runs = [run_one("cold", work / "node1", url, args.layers, args.width),
            run_one("fresh_node", work / "node2", url, args.layers, args.width),
            run_one("warm", work / "node1", url, args.layers, args.width)]
    runs[0]["artifacts_bytes"] = os.path.getsize(url) if os.path.exists(url) else 0
    shutil.rmtree(work, ignore_errors=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    emit({**finish_metadata(meta), "layers": args.layers, "width": args.width, "runs": runs},
         str(Path(args.out) / "compile_cache_probe.json"))


if __name__ == "__main__":
    main()
