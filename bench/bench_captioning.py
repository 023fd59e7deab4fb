"""Captioning throughput: transformers' default ``generate`` against the captioner's static_graph path.

Both paths are the real ``Captioner`` (captioning/captioner.py) on the same model and the same clips:
``decode="default"`` calls ``model.generate``; ``decode="static_graph"`` prefills with ``generate``
and decodes with a static KV cache and a CUDA-graph step (captioning/fast_decode.py). The model is
Qwen2.5-VL with the 3B dimensions and random weights, built from its config directly on the device
(no download), bf16, SDPA; the processor is the offline one of the tiny preset (byte-level BPE
trained in-process, Qwen chat template), so frames go through the real preprocessing: 8 frames at
224x224 per clip -> 256 video tokens. Random weights never stop by themselves, and
min_new_tokens = max_new_tokens forces exactly the same number of new tokens on both paths.

    python bench/bench_captioning.py --size 3b --batches 1,64,128,256 --out results.json
    python bench/bench_captioning.py --size tiny --batches 1,4 --device cpu   # a CPU smoke test

Reported per batch size: seconds per call, output tokens/s, clips/s, peak GPU memory, the static
path's first-call time (graph capture included) and prefill/decode split, and how many generated
tokens of the static path equal the default path's (greedy, same inputs; bf16 may differ slightly).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings

import numpy as np
import torch


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def build(size: str, device: torch.device, dtype: torch.dtype, px: int, min_px: int | None = None):
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    from vidcorpus.captioning.tiny_models import build_chat_tokenizer, chat_processor, chat_vlm_config

    tok = build_chat_tokenizer()
    processor = chat_processor(tok, min_pixels=(min_px or px) ** 2, max_pixels=px * px)
    config = chat_vlm_config(tok, size)
    torch.manual_seed(0)
    t = time.perf_counter()
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.eval()
    model.generation_config = GenerationConfig(eos_token_id=config.text_config.eos_token_id,
                                               pad_token_id=config.text_config.pad_token_id)
    _sync(device)
    n_params = sum(p.numel() for p in model.parameters())
    return model, processor, n_params, time.perf_counter() - t


def run_path(cap, frames, new_tokens: int) -> tuple[float, list]:
    from vidcorpus.captioning.prompts import get_prompt

    prompt = get_prompt(cap.prompt_version, "long")
    _sync(cap.device)
    t = time.perf_counter()
    gens = cap._generate_batch(frames, prompt, new_tokens)  # one batch of the real captioner path
    _sync(cap.device)
    return time.perf_counter() - t, gens


def match_stats(a: list, b: list) -> dict:
    x = np.array([g.token_ids for g in a])
    y = np.array([g.token_ids for g in b])
    same = x == y
    first_diff = [int(np.argmin(r)) if not r.all() else len(r) for r in same]
    return {"token_match": round(float(same.mean()), 4), "rows_identical": round(float(same.all(1).mean()), 4),
            "median_first_divergence": float(np.median(first_diff))}


def kernel_profile(fn, device, top: int = 12, cpu: bool = False) -> dict:
    """CUDA time of one call by kernel (the top few) and in all, from torch.profiler; with ``cpu``
    also the wall time and the operators with the most self CPU time (host overhead)."""
    if device.type != "cuda":
        return {}
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CUDA] + ([ProfilerActivity.CPU] if cpu else [])
    t = time.perf_counter()
    with profile(activities=acts) as prof:
        fn()
        _sync(device)
    wall = time.perf_counter() - t
    events = prof.key_averages()
    rows = [(e.key, e.self_device_time_total) for e in events if e.self_device_time_total > 0]
    rows.sort(key=lambda r: -r[1])
    total = sum(t for _, t in rows)
    out = {"cuda_ms": round(total / 1000, 1),
           "top": [{"kernel": k[:90], "ms": round(t / 1000, 1), "share": round(t / total, 3)} for k, t in rows[:top]]}
    if cpu:
        host = sorted(((e.key, e.self_cpu_time_total, e.count) for e in events), key=lambda r: -r[1])[:top]
        out["wall_ms_profiled"] = round(1000 * wall, 1)
        out["cpu_top"] = [{"op": k[:70], "self_cpu_ms": round(t / 1000, 1), "calls": n} for k, t, n in host]
    return out


def breakdown(model, cap, frames, device, compile_prefill: bool = False) -> dict:
    """Seconds of the prefill's parts at one batch size: the vision tower with transformers' SDPA loop,
    with the packed attention alone, and in the static path's fast form (fast_prefill.py, with and
    without compiled blocks, with a kernel profile), and a one-token ``generate`` (vision + language
    prefill)."""
    from vidcorpus.captioning.decode_attention import VARLEN_ATTENTION, AttnSwitch, register_attention
    from vidcorpus.captioning.prompts import get_prompt

    register_attention()
    inputs = cap._inputs(frames, get_prompt("p1", "long"))
    inputs = {k: (v.to(device, cap.dtype) if torch.is_floating_point(v) else v.to(device))
              for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    vision = model.model.visual
    out = {"batch": len(frames), "prompt_tokens": int(inputs["input_ids"].shape[1])}

    def timed(fn) -> float:
        fn()
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        return round(time.perf_counter() - t, 3)

    from vidcorpus.captioning.fast_prefill import FastPrefill

    with torch.inference_mode():
        pix, grid = inputs["pixel_values_videos"], inputs["video_grid_thw"]
        out["vision_sdpa_loop_s"] = timed(lambda: vision(pix, grid_thw=grid))
        with FastPrefill(model, VARLEN_ATTENTION):
            out["vision_fast_s"] = timed(lambda: vision(pix, grid_thw=grid))
            out["vision_fast_profile"] = kernel_profile(lambda: vision(pix, grid_thw=grid), device)
        if compile_prefill:
            fv = FastPrefill(model, VARLEN_ATTENTION, compile=True)
            with fv:
                _sync(device)
                t = time.perf_counter()
                vision(pix, grid_thw=grid)
                _sync(device)
                out["vision_fast_compiled_first_call_s"] = round(time.perf_counter() - t, 2)
                out["vision_fast_compiled_s"] = timed(lambda: vision(pix, grid_thw=grid))
                out["vision_fast_compiled_profile"] = kernel_profile(lambda: vision(pix, grid_thw=grid), device)
                gen1 = lambda: model.generate(**inputs, max_new_tokens=1, do_sample=False)  # noqa: E731
                out["generate_1_token_fast_prefill_compiled_s"] = timed(gen1)
                out["generate_1_token_fast_prefill_compiled_profile"] = kernel_profile(gen1, device, cpu=True)
        with FastPrefill(model, VARLEN_ATTENTION):
            gen1 = lambda: model.generate(**inputs, max_new_tokens=1, do_sample=False)  # noqa: E731
            out["generate_1_token_fast_prefill_s"] = timed(gen1)
            out["generate_1_token_fast_prefill_profile"] = kernel_profile(gen1, device, cpu=True)
        with AttnSwitch(model.config.vision_config, VARLEN_ATTENTION):
            out["vision_packed_s"] = timed(lambda: vision(pix, grid_thw=grid))
            out["generate_1_token_packed_vision_s"] = timed(
                lambda: model.generate(**inputs, max_new_tokens=1, do_sample=False))
        out["generate_1_token_s"] = timed(lambda: model.generate(**inputs, max_new_tokens=1, do_sample=False))
        out["generate_2_tokens_s"] = timed(lambda: model.generate(**inputs, max_new_tokens=2, min_new_tokens=2,
                                                                  do_sample=False))
    return out


def fp32_check(args, device) -> dict:
    """Both paths in float32 on clips of two sizes (so prompts are left-padded): the same greedy tokens
    are expected, which bf16 cannot show with random weights (their logits are nearly tied)."""
    from vidcorpus.captioning.captioner import Captioner

    model, processor, _, _ = build(args.size, device, torch.float32, args.px, min_px=112)
    common = dict(min_new_tokens=args.new_tokens, prompt_version="p1", compile_prefill=False, compile_decode=False)
    default = Captioner(model, processor, "bench", device, torch.float32, decode="default", **common)
    fast = Captioner(model, processor, "bench", device, torch.float32, decode="static_graph", **common)
    rng = np.random.default_rng(1)
    half = args.fp32_check // 2
    frames = [rng.integers(0, 256, (args.frames, args.px, args.px, 3), dtype=np.uint8) for _ in range(half)]
    frames += [rng.integers(0, 256, (args.frames, 168, 280, 3), dtype=np.uint8) for _ in range(args.fp32_check - half)]
    rng.shuffle(frames)
    t_def, g_def = run_path(default, frames, args.new_tokens)
    run_path(fast, frames, args.new_tokens)  # capture
    t_fast, g_fast = run_path(fast, frames, args.new_tokens)
    from vidcorpus.captioning.prompts import get_prompt

    inputs = fast._inputs(frames, get_prompt("p1", "long"))
    lengths = inputs["attention_mask"].sum(1).tolist()
    return {"clips": len(frames), "prompt_lengths": sorted(set(int(x) for x in lengths)),
            "graph": fast.graph_decoder.last_stats.get("graph"), "default_s": round(t_def, 3),
            "static_graph_s": round(t_fast, 3), **match_stats(g_def, g_fast)}


def measure_fast(row: dict, label: str, cap, model, frames, tokens: int, new_tokens: int, t_def: float, g_def,
                 device) -> None:
    """Time one static-graph captioner on the batch: a first call (graph capture, any compile), then a
    measured one; fill row[label], the speed-up over the default path and the token agreement."""
    _peak_reset(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t_first, g_first = run_path(cap, frames, new_tokens)
    if any(g.decode != "static_graph" for g in g_first):
        # the graph path failed and the captioner fell back: say why, measure the eager static loop
        from vidcorpus.captioning.fast_decode import GraphDecoder

        row[label + "_graph_error"] = "; ".join(str(c.message) for c in caught)[:1000]
        cap._graph = GraphDecoder(model, use_graph=False, compile_prefill=cap.compile_prefill,
                                  compile_decode=cap.compile_decode)
        t_first, g_first = run_path(cap, frames, new_tokens)
    first_stats = dict(cap.graph_decoder.last_stats)
    calls = [run_path(cap, frames, new_tokens) for _ in range(2)]  # the same graph replayed in 2 more calls
    t_fast, g_fast = sum(c[0] for c in calls) / len(calls), calls[-1][1]
    stats = dict(cap.graph_decoder.last_stats)
    # bf16 with random weights: nearly tied logits, so run-to-run rounding can flip a greedy token
    replay_match = match_stats(calls[0][1], calls[1][1])
    assert all(g.decode == "static_graph" for g in g_fast), "fast path fell back to generate"
    bs = len(frames)
    row[label] = {
        "s": round(t_fast, 3), "calls_s": [round(c[0], 3) for c in calls], "replays_token_match":
            replay_match["token_match"], "tokens_per_s": round(tokens / t_fast, 1), "clips_per_s": round(bs / t_fast, 2),
        "peak_gib": _peak_gib(device), "first_call_s": round(t_first, 3),
        "capture_s": round(first_stats.get("capture_s", 0.0), 3), "prefill_s": round(stats["prefill_s"], 3),
        "decode_s": round(stats["decode_s"], 3), "graph": stats.get("graph"),
        "ms_per_graph_step": round(1000 * stats["decode_s"] / max(1, stats["steps"] - 1), 2),
    }
    suffix = "" if label == "static_graph" else "_" + label
    row["speedup" + suffix] = round(t_def / t_fast, 2)
    row["match" + suffix] = match_stats(g_def, g_fast)
    assert all(len(g.token_ids) == new_tokens for g in g_def + g_fast)


def free_graphs(paths, device) -> None:
    """Drop the static paths' captured graphs and buffers (the default path runs without them)."""
    for _label, cap in paths:
        if cap._graph:
            cap._graph.slots.clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _graphs_compiled() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def measure_stream(paths, frames, n: int, new_tokens: int, device, prefetch_ab: bool = False) -> dict:
    """Steady-state seconds per batch when one captioner call covers many batches (the captioner prepares
    batch k+1's inputs while batch k generates): a call over ``n`` batches minus a call over one,
    divided by n - 1, for each path; speed-ups over the default; graphs compiled meanwhile (0 expected).
    ``prefetch_ab``: the last path once more without the prefetch thread."""

    def steady(cap) -> dict:
        times = {}
        for k in (1, n):
            _sync(device)
            t = time.perf_counter()
            gens = cap.generate(list(frames) * k, "long", new_tokens)
            _sync(device)
            times[k] = time.perf_counter() - t
            assert len(gens) == k * len(frames) and all(len(g.token_ids) == new_tokens for g in gens)
        per_batch = (times[n] - times[1]) / (n - 1)
        return {"s_per_batch": round(per_batch, 3), "one_batch_s": round(times[1], 3),
                f"{n}_batches_s": round(times[n], 3), "tokens_per_s": round(len(frames) * new_tokens / per_batch, 1),
                "clips_per_s": round(len(frames) / per_batch, 2)}

    out: dict = {"batches": n}
    for label, cap in paths:
        cap.batch_size = len(frames)
        if label == "default":
            free_graphs(paths, device)
        else:
            cap.generate(list(frames), "long", new_tokens)  # graphs captured again, before timing
        graphs = _graphs_compiled()
        out[label] = {**steady(cap), "graphs_compiled": _graphs_compiled() - graphs}
        if label != "default":
            out[label]["speedup"] = round(out["default"]["s_per_batch"] / out[label]["s_per_batch"], 2)
    if prefetch_ab:
        label, cap = paths[-1]
        cap.prefetch = False
        out[label + "_no_prefetch"] = {"s_per_batch": steady(cap)["s_per_batch"]}
        cap.prefetch = True
    print(json.dumps({"stream": out}), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="3b", choices=["3b", "tiny"])
    ap.add_argument("--batches", default="1,64,128,256")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--px", type=int, default=224)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--budget-s", type=float, default=420.0, help="start no new batch size after this many seconds")
    ap.add_argument("--out", default=None)
    ap.add_argument("--fp32-check", type=int, default=0, help="also compare both paths' tokens in float32 on this "
                    "many clips of two sizes (left padding): bf16 rounding aside, they must agree")
    ap.add_argument("--breakdown", type=int, default=0, help="time the prefill's parts at this batch size")
    ap.add_argument("--compile-prefill", action="store_true", help="also measure the static path with "
                    "captioning.compile_prefill (regional torch.compile of the prefill), as a third path")
    ap.add_argument("--compiled", action="store_true", help="also measure the static path with "
                    "captioning.compile_prefill and captioning.compile_decode (the GPU default)")
    ap.add_argument("--skip-uncompiled", action="store_true", help="do not measure the uncompiled static path")
    ap.add_argument("--repeat", type=int, default=0, help="after the measurements, time the default and each fast "
                    "path again this many times, alternating (the reference is host-bound and varies)")
    ap.add_argument("--stream", type=int, default=0, help="also time N batches in one captioner call per path "
                    "(the next batch's inputs prepared while one generates, as the caption stage runs)")
    args = ap.parse_args()

    from vidcorpus.captioning.captioner import Captioner
    from vidcorpus.captioning.prompts import get_prompt

    start = time.perf_counter()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, processor, n_params, build_s = build(args.size, device, dtype, args.px)
    import transformers

    info = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "device": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"),
        "torch": torch.__version__, "transformers": transformers.__version__, "python": sys.version.split()[0],
        "model": f"Qwen2.5-VL {args.size} dims, random weights", "params": n_params, "dtype": str(dtype),
        "frames": args.frames, "px": args.px, "new_tokens": args.new_tokens, "build_s": round(build_s, 1),
        "command": " ".join(sys.argv),
    }
    print(json.dumps(info), flush=True)
    common = dict(min_new_tokens=args.new_tokens, prompt_version="p1", compile_prefill=False, compile_decode=False)
    default = Captioner(model, processor, "bench", device, dtype, decode="default", **common)
    fast = Captioner(model, processor, "bench", device, dtype, decode="static_graph", **common)
    fast_paths = [] if args.skip_uncompiled else [("static_graph", fast)]
    if args.compile_prefill:
        fast_paths.append(("static_graph_compiled_prefill", Captioner(
            model, processor, "bench", device, dtype, decode="static_graph", **{**common, "compile_prefill": True})))
    if args.compiled:
        fast_paths.append(("static_graph_compiled", Captioner(
            model, processor, "bench", device, dtype, decode="static_graph",
            **{**common, "compile_prefill": True, "compile_decode": True})))
    rng = np.random.default_rng(0)

    def clips(n: int) -> list[np.ndarray]:
        return [rng.integers(0, 256, (args.frames, args.px, args.px, 3), dtype=np.uint8) for _ in range(n)]

    # warm-up (CUDA context, cuBLAS, kernels) on both paths, not measured
    w = clips(1)
    run_path(default, w, 4)
    run_path(fast, w, 8)
    prompt_tokens = None
    results = []
    last_default, last_bs = 0.0, 0
    for bs in [int(b) for b in args.batches.split(",") if b]:
        for _label, cap in fast_paths:  # one batch size at a time, as in production: drop other sizes' graphs
            if cap._graph:
                cap._graph.slots.clear()
        # the default path's time: per-step overhead at small batches (batch 1 -> 64 costs about 1.5x),
        # then at most linear in the batch
        ratio = bs / last_bs if last_bs else 0.0
        est = last_default * (max(1.0, ratio / 8) if last_bs == 1 else ratio)
        if time.perf_counter() - start + 1.6 * est > args.budget_s:
            results.append({"batch": bs, "skipped": "time budget"})
            print(json.dumps(results[-1]), flush=True)
            break
        frames = clips(bs)
        if prompt_tokens is None:
            prompt_tokens = int(fast._inputs(frames[:1], get_prompt("p1", "long"))["input_ids"].shape[1])
            info["prompt_tokens"] = prompt_tokens
        row: dict = {"batch": bs}
        tokens = bs * args.new_tokens
        _sync(device)
        t = time.perf_counter()
        fast._inputs(frames, get_prompt("p1", "long"))  # the processor alone (part of both paths' time)
        _sync(device)
        row["preprocess_s"] = round(time.perf_counter() - t, 3)
        row["preprocess_on"] = "gpu" if (device.type == "cuda" and fast._gpu_preprocess) else "cpu"
        try:
            _peak_reset(device)
            t_def, g_def = run_path(default, frames, args.new_tokens)
            last_default, last_bs = t_def, bs
            row["default"] = {"s": round(t_def, 3), "tokens_per_s": round(tokens / t_def, 1),
                              "clips_per_s": round(bs / t_def, 2), "peak_gib": _peak_gib(device)}
            for label, cap in fast_paths:
                measure_fast(row, label, cap, model, frames, tokens, args.new_tokens, t_def, g_def, device)
            for rep in range(args.repeat):  # the default again, then each fast path again: the spread
                free_graphs(fast_paths, device)  # one path's buffers at a time, as in production
                t_rep, _ = run_path(default, frames, args.new_tokens)
                row.setdefault("default_repeats_s", []).append(round(t_rep, 3))
                for label, cap in fast_paths:
                    run_path(cap, frames, args.new_tokens)  # capture again (not timed)
                    row.setdefault(label + "_repeats_s", []).append(round(run_path(cap, frames, args.new_tokens)[0], 3))
            if args.stream:
                row["stream"] = measure_stream([("default", default)] + fast_paths, frames, args.stream,
                                               args.new_tokens, device, prefetch_ab=device.type == "cuda")
        except Exception as exc:  # noqa: BLE001
            if not _is_oom(exc):
                raise
            row["oom"] = str(exc).splitlines()[0][:200]
            results.append(row)
            print(json.dumps(row), flush=True)
            break
        results.append(row)
        print(json.dumps(row), flush=True)
        del frames, g_def
    out = {"info": info, "results": results}
    if args.breakdown:
        out["prefill_breakdown"] = breakdown(model, fast, clips(args.breakdown), device, args.compile_prefill)
        print(json.dumps({"prefill_breakdown": out["prefill_breakdown"]}), flush=True)
    if args.fp32_check:
        del default, fast
        model = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
        out["fp32_check"] = fp32_check(args, device)
        print(json.dumps({"fp32_check": out["fp32_check"]}), flush=True)
    out["total_s"] = round(time.perf_counter() - start, 1)
    print("| batch | default tok/s | static_graph tok/s | speed-up | clips/s (default -> static) | peak GiB "
          "(default / static) | token match |")
    for r in results:
        if "static_graph" in r:
            d, f = r["default"], r["static_graph"]
            print(f"| {r['batch']} | {d['tokens_per_s']} | {f['tokens_per_s']} | {r['speedup']}x | "
                  f"{d['clips_per_s']} -> {f['clips_per_s']} | {d['peak_gib']} / {f['peak_gib']} | "
                  f"{r['match']['token_match']} |")
        for label in ("static_graph_compiled_prefill", "static_graph_compiled"):
            if label in r:
                c = r[label]
                print(f"| {r['batch']} ({label}) | {r['default']['tokens_per_s']} | {c['tokens_per_s']} | "
                      f"{r['speedup_' + label]}x | {r['default']['clips_per_s']} -> "
                      f"{c['clips_per_s']} | {r['default']['peak_gib']} / {c['peak_gib']} | "
                      f"{r['match_' + label]['token_match']} |")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
