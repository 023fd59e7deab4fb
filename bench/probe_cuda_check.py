"""The fast paths' self-check on a GPU: does the first-batch probe accept the correct static-graph
path in bf16 and reject a broken one? (A check, not a benchmark.)

The captioner with every GPU default on (compiled prefill and decoding step, CUDA graphs, the probe
on the job's first batch, captioning/fast_decode_check.py) captions one batch of long and one of short captions:

- ``tiny`` (float32): the probe must accept, and the tokens must equal transformers' ``generate``;
- ``3b`` (the Qwen2.5-VL-3B shape, random weights, bf16): the probe must accept, although bf16
  greedy tokens of the two paths agree only in part on random weights (near-tied logits). Its
  margin is reported: the share of positions off and the largest gap, against the tolerance. The
  same check on the batch's tokens shifted by one position (a broken path) must reject.

    python bench/probe_cuda_check.py --sizes tiny,3b --batch 64 --out probe.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def check(size: str, batch: int, long_new: int, short_new: int, device: torch.device) -> dict:
    import transformers

    from bench_captioning import build
    from vidcorpus.captioning.captioner import Captioner, load_captioner
    from vidcorpus.captioning.prompts import get_prompt
    from vidcorpus.captioning.tiny_models import build_tiny_chat_vlm
    from vidcorpus.captioning.fast_decode_check import HALF_MAX_OFF, HALF_TOLERANCE, TOLERANCE, check_tokens
    from vidcorpus.fast_paths import FastPathWarning

    rng = np.random.default_rng(0)
    if size == "tiny":
        path = tempfile.mkdtemp() + "/vlm"
        build_tiny_chat_vlm(path)
        torch.backends.cudnn.allow_tf32 = False
        fast = load_captioner(path, device=device, dtype=torch.float32, batch_size=batch)
        ref = load_captioner(path, device=device, dtype=torch.float32, batch_size=batch, decode="default")
        frames = [rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8) for _ in range(batch)]
    else:
        model, processor, n_params, _ = build(size, device, torch.bfloat16, 224)
        fast = Captioner(model, processor, size, device, torch.bfloat16, batch_size=batch)
        ref = Captioner(model, processor, size, device, torch.bfloat16, batch_size=batch, decode="default")
        frames = [rng.integers(0, 256, (8, 224, 224, 3), dtype=np.uint8) for _ in range(batch)]
    out: dict = {"size": size, "batch": batch, "dtype": str(fast.dtype), "transformers": transformers.__version__,
                 "torch": torch.__version__, "compile_prefill": fast.compile_prefill,
                 "compile_decode": fast.compile_decode}
    for kind, new in (("long", long_new), ("short", short_new)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t = time.perf_counter()
            got = fast.generate(frames, kind, new)
            out[f"{kind}_s"] = round(time.perf_counter() - t, 2)
        out[f"{kind}_paths"] = sorted({g.decode for g in got})
        out[f"{kind}_switch_offs"] = [str(w.message) for w in caught if issubclass(w.category, FastPathWarning)]
        out[f"{kind}_other_warnings"] = sorted({f"{w.category.__name__}: {str(w.message)[:160]}" for w in caught
                                                if not issubclass(w.category, FastPathWarning)})
        if kind == "long":
            want = ref.generate(frames, kind, new)
            x, y = np.array([g.token_ids for g in got]), np.array([g.token_ids for g in want])
            out["long_token_agreement_with_generate"] = round(float((x == y).mean()), 4)
            out["long_rows_equal_generate"] = int((x == y).all(1).sum())
            # the probe's numbers, on the first rows' tokens as written and shifted by one position
            rows = 4
            inputs = fast._device_inputs(frames[:rows], get_prompt(fast.prompt_version, kind))
            eos, stop = sorted(fast._eos_ids()), fast._stop_ids()
            new_ids = torch.tensor(x[:rows], device=device)
            t = time.perf_counter()
            ok = check_tokens(fast.model, inputs, new_ids, eos, stop, fast.min_new_tokens)
            out["probe_s"] = round(time.perf_counter() - t, 3)
            bad = check_tokens(fast.model, inputs, torch.roll(new_ids, 1, dims=1), eos, stop, fast.min_new_tokens)
            for name, r in (("probe_correct", ok), ("probe_shifted", bad)):
                out[name] = {"positions": r.positions, "off": r.off, "share_off": round(r.share_off, 4),
                             "worst_gap_std": round(r.worst, 4), "exact": r.exact, "agrees": r.agrees()}
            out["tolerance_std"] = TOLERANCE[fast.dtype] if ok.exact else HALF_TOLERANCE
            out["max_share_off"] = 0.0 if ok.exact else HALF_MAX_OFF
    out["ok"] = (out["long_paths"] == out["short_paths"] == ["static_graph"] and not out["long_switch_offs"]
                 and not out["short_switch_offs"] and out["probe_correct"]["agrees"]
                 and not out["probe_shifted"]["agrees"]
                 and (size != "tiny" or out["long_rows_equal_generate"] == batch))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="tiny,3b")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--long", type=int, default=160, help="new tokens of the long caption (production: 160)")
    ap.add_argument("--short", type=int, default=32)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = {"gpu": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "date": time.strftime("%Y-%m-%d"), "checks": []}
    for size in args.sizes.split(","):
        results["checks"].append(check(size, args.batch, args.long, args.short, device))
        print(json.dumps(results["checks"][-1]), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
