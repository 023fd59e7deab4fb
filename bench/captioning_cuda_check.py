"""The captioner's GPU defaults on a GPU, checked for exactness (a check, not a benchmark).

The tiny Qwen2.5-VL preset in float32: the static path with everything a GPU turns on (compiled
prefill and decoding step, CUDA-graph capture, the prefetch thread on its own stream) must give
transformers' ``generate`` tokens, over batches of two shapes (the second compiles the step with
symbolic sizes), for long and short captions.

    python bench/captioning_cuda_check.py --out check.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=300)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from vidcorpus.captioning.captioner import load_captioner
    from vidcorpus.captioning.tiny_models import build_tiny_chat_vlm

    torch.backends.cudnn.allow_tf32 = False  # the reference's Conv3d patch embedding in full float32 too

    path = tempfile.mkdtemp() + "/vlm"
    build_tiny_chat_vlm(path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    common = dict(device=device, dtype=torch.float32, batch_size=args.batch, min_new_tokens=4)
    fast = load_captioner(path, **common)
    ref = load_captioner(path, decode="default", **common)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8) for _ in range(args.clips)]
    out: dict = {"gpu": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__, "clips": args.clips,
                 "batch": args.batch, "prefetch": fast.prefetch, "compile_prefill": fast.compile_prefill,
                 "compile_decode": fast.compile_decode}
    for kind, new in (("long", 24), ("short", 8)):
        t = time.perf_counter()
        got = fast.generate(frames, kind, new)
        out[f"{kind}_fast_s"] = round(time.perf_counter() - t, 2)
        want = ref.generate(frames, kind, new)
        out[f"{kind}_paths"] = sorted({g.decode for g in got})
        out[f"{kind}_rows_equal"] = sum(a.token_ids == b.token_ids for a, b in zip(got, want))
    dec = fast.graph_decoder
    out["compile_decode_still_on"] = bool(dec and dec.compile_decode)
    out["ok"] = all(out[f"{k}_rows_equal"] == args.clips and out[f"{k}_paths"] == ["static_graph"]
                    for k in ("long", "short")) and out["compile_decode_still_on"]
    print(json.dumps(out))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
