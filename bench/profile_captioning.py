"""Where the static-graph captioning path spends its time at one (large) batch size, on a GPU.

Same workload as bench_captioning.py (Qwen2.5-VL with the 3B dimensions, random weights, bf16, 8
frames at 224x224, 64 new tokens). Reports: preprocessing, the prefill's parts (vision tower, a
one-token and a two-token ``generate``, the CPU rope index), the static path's prefill/decode split
with and without a compiled decoding step, and kernel-time tables (by kind and the top kernels) for
the vision tower, the one-token prefill and one decoding step.

    python bench/profile_captioning.py --batch 512 --out profile.json
"""

from __future__ import annotations

import argparse
import json
import re
import time

import numpy as np
import torch

from bench_captioning import build

KINDS = [("gemm", r"nvjet|cutlass|gemm|xmma|cublas|sm90_|Kernel2"), ("attention", r"sdpa|flash|fmha|attention"),
         ("triton", r"^triton_"), ("copy_cat", r"[Cc]opy|Cat|cat|index|gather|scatter|Memcpy|Memset"),
         ("reduce", r"reduce|softmax|norm|argmax|max"), ("elementwise", r"elementwise|Functor|vectorized")]


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if re.search(pattern, name):
            return kind
    return "other"


def sync() -> None:
    torch.cuda.synchronize()


def timed(fn, reps: int = 2) -> float:
    fn()
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return round((time.perf_counter() - t) / reps, 4)


def kernels(fn, top: int = 15) -> dict:
    """Kernel time of one call of ``fn``: by kind, the top kernels, and the aten ops with most device time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        sync()
    events = prof.key_averages()
    ks = [(e.key, e.self_device_time_total, e.count) for e in events
          if e.device_type == DeviceType.CUDA and e.self_device_time_total > 0]
    total = sum(t for _, t, _ in ks)
    by_kind: dict[str, float] = {}
    for k, t, _ in ks:
        by_kind[kind_of(k)] = by_kind.get(kind_of(k), 0.0) + t
    ops = sorted(((e.key, e.self_device_time_total, e.count) for e in events
                  if e.device_type == DeviceType.CPU and e.self_device_time_total > 0), key=lambda r: -r[1])
    ks.sort(key=lambda r: -r[1])
    return {"kernel_ms": round(total / 1e3, 2), "kernels": sum(n for _, _, n in ks),
            "by_kind_ms": {k: round(v / 1e3, 2) for k, v in sorted(by_kind.items(), key=lambda r: -r[1])},
            "top": [{"k": k[:100], "ms": round(t / 1e3, 2), "n": n} for k, t, n in ks[:top]],
            "ops": [{"op": k[:60], "ms": round(t / 1e3, 2), "n": n} for k, t, n in ops[:top]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--out", default=None)
    ap.add_argument("--skip-eager-step", action="store_true", help="profile only the compiled decoding step")
    ap.add_argument("--skip-decode", action="store_true", help="profile only the prefill")
    args = ap.parse_args()
    from vidcorpus.captioning.decode_attention import VARLEN_ATTENTION, register_attention
    from vidcorpus.captioning.fast_decode import GraphDecoder
    from vidcorpus.captioning.fast_prefill import FastPrefill, _on_cpu
    from vidcorpus.captioning.captioner import Captioner
    from vidcorpus.captioning.prompts import get_prompt

    device, dtype = torch.device("cuda"), torch.bfloat16
    out: dict = {"batch": args.batch, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    t0 = time.perf_counter()
    model, processor, n_params, build_s = build("3b", device, dtype, 224)
    cap = Captioner(model, processor, "bench", device, dtype, decode="static_graph", min_new_tokens=args.new_tokens,
                    compile_prefill=True)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (8, 224, 224, 3), dtype=np.uint8) for _ in range(args.batch)]
    prompt = get_prompt("p1", "long")
    with torch.inference_mode():
        sync()
        t = time.perf_counter()
        inputs = cap._inputs(frames, prompt)
        inputs = {k: (v.to(device, dtype) if torch.is_floating_point(v) else v.to(device))
                  for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        sync()
        out["preprocess_s"] = round(time.perf_counter() - t, 3)
        out["prompt_tokens"] = int(inputs["input_ids"].shape[1])
        eos, pad = sorted(cap._eos_ids()), cap.tokenizer.pad_token_id
        register_attention()

        def run(dec):
            sync()
            t = time.perf_counter()
            dec.generate(inputs, args.new_tokens, args.new_tokens, eos, pad)
            sync()
            return round(time.perf_counter() - t, 3), dict(dec.last_stats)

        dec = GraphDecoder(model, compile_prefill=True)
        steps = [("eager_step", False), ("compiled_step", True)][1 if args.skip_eager_step else 0:]
        steps = [] if args.skip_decode else steps
        for label, compiled in steps:
            try:
                dec.compile_decode = compiled
                dec.slots.clear()
                first = run(dec)
                calls = [run(dec) for _ in range(2)]
                st = calls[-1][1]
                out[label] = {"first_call_s": first[0], "calls_s": [c[0] for c in calls],
                              "prefill_s": round(st["prefill_s"], 3), "decode_s": round(st["decode_s"], 3),
                              "graph": st.get("graph"), "compile_decode": dec.compile_decode,
                              "ms_per_step": round(1000 * st["decode_s"] / max(1, st["steps"] - 1), 2)}
                print(label, out[label], flush=True)
                (key, slot), = list(dec.slots.items())[-1:]
                dec._reset(slot, int(slot.prompt_len), slot.out.clone())
                out[label]["step_kernels"] = kernels(lambda: [dec._step(slot, 1.0) for _ in range(3)])
            except Exception as exc:  # noqa: BLE001 - a profile records what failed and goes on
                import traceback

                traceback.print_exc()
                out[label + "_error"] = repr(exc)[:500]
        print("decode done", round(time.perf_counter() - t0, 1), flush=True)

        vision = model.model.visual
        pix, grid = inputs["pixel_values_videos"], inputs["video_grid_thw"]
        import vidcorpus.captioning.fused_blocks as fp

        with dec.fast_prefill:
            for aligned in (False, True):  # the vision MLP as transformers' three products, then aligned
                fp.ALIGNED_VISION_MLP = aligned
                out[f"vision_aligned_mlp_{aligned}_s"] = timed(lambda: vision(pix, grid_thw=grid))
            out["vision_s"] = timed(lambda: vision(pix, grid_thw=grid))
            out["vision_kernels"] = kernels(lambda: vision(pix, grid_thw=grid))
            gen = lambda n: model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)  # noqa: E731
            out["generate_1_s"] = timed(lambda: gen(1))
            out["generate_2_s"] = timed(lambda: gen(2))
            out["generate_1_kernels"] = kernels(lambda: gen(1))
            once = model.model.get_rope_index  # inside the context: the one-row form, on CPU copies
            rope = _on_cpu(model.model.__class__.get_rope_index.__get__(model.model))
            kw = {k: inputs[k] for k in ("video_grid_thw", "attention_mask", "second_per_grid_ts", "mm_token_type_ids")
                  if k in inputs}
            try:
                out["rope_index_cpu_s"] = timed(lambda: rope(inputs["input_ids"], **kw))
                out["rope_index_once_s"] = timed(lambda: once(inputs["input_ids"], **kw))
            except Exception as exc:  # noqa: BLE001 - signatures differ between transformers versions
                out["rope_index_cpu_s"] = repr(exc)[:200]
        print("prefill parts done", round(time.perf_counter() - t0, 1), flush=True)
    out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    out["total_s"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
