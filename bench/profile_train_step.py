"""Where the full I2VGenXLUNet training step spends its GPU time, and what torch.compile does to it.

A diagnostic for issue 8's step target, not a result: one configuration per process (clean peak
memory), the plain step of ``bench_unet_step.py`` (forward under bf16 autocast, backward, gradient
clipping, fused AdamW) plus our EMA, with the options the loop has (``--compile`` is
``train.compile``: ``unet.compile()``; ``--ckpt`` is ``train.gradient_checkpointing``). Prints one
JSON line: compile seconds (the first step), steady step time, samples/s, peak memory, dynamo's
counters (frames, graphs, graph breaks) and, with ``--profile``, the CUDA time by kernel family.

    python bench/profile_train_step.py --batch 2 --profile
    TORCH_LOGS=graph_breaks,recompiles python bench/profile_train_step.py --batch 2 --compile
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter

import torch

FAMILIES = [  # first match wins; matched against the lower-cased kernel name
    ("attention", r"flash|fmha|attention|sdpa"),
    ("cudnn layout transposes", r"nchwtonhwc|nhwctonchw"),
    ("conv", r"implicit_gemm|conv|winograd|fprop|dgrad|wgrad"),
    ("gemm", r"gemm|sm90_xmma|cutlass.*(gemm|tensorop)|nvjet|ampere_bf16|s16816|wgmma|cudnn"),
    ("norm", r"norm|welford"),
    ("optimizer", r"adam|foreach|multi_tensor|lerp"),
    ("triton (fused)", r"^triton"),
    ("copy/cast/layout", r"copy|cast|convert|transpose|permute|nchw|nhwc|cat|contig"),
    ("elementwise/reduce", r"elementwise|vectorized|reduce|unrolled"),
]


def family(name: str) -> str:
    low = name.lower()
    for fam, pat in FAMILIES:
        if re.search(pat, low):
            return fam
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--latent", type=int, nargs=2, default=[32, 56])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--compile-mode", default=None)
    ap.add_argument("--ckpt", action="store_true", help="activation checkpointing of the loop")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--temporal-conv2d", action="store_true", help="run the (3,1,1) Conv3d as a (3,1) Conv2d")
    ap.add_argument("--no-ema", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()

    from diffusers import I2VGenXLUNet

    from bench_unet_step import train_step

    from vidcorpus.train.trainer import apply_activation_checkpointing

    dev = torch.device("cuda")
    torch.manual_seed(0)
    with torch.device(dev):
        unet = I2VGenXLUNet()
    unet.train()
    ema = None if args.no_ema else I2VGenXLUNet().to(dev).requires_grad_(False)
    if ema is not None:
        ema.load_state_dict(unet.state_dict())
    if args.channels_last:  # the 4-D (Conv2d) weights only: the temporal Conv3d weights are 5-D
        for m in unet.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
    if args.temporal_conv2d:
        from diffusers.models.resnet import TemporalConvLayer

        def as_conv2d(conv):
            def forward(x):  # (B, C, F, H, W): a (3, 1, 1) kernel is a (3, 1) kernel over (F, H*W)
                b, _c, f, h, w = x.shape
                y = torch.nn.functional.conv2d(x.reshape(b, -1, f, h * w), conv.weight.squeeze(-1), conv.bias,
                                               padding=(conv.padding[0], 0))
                return y.view(b, -1, f, h, w)
            return forward

        for m in unet.modules():
            if isinstance(m, TemporalConvLayer):
                for seq in (m.conv1, m.conv2, m.conv3, m.conv4):
                    seq[-1].forward = as_conv2d(seq[-1])
    if args.ckpt:
        apply_activation_checkpointing(unet)
    step_unet = unet
    if args.compile:
        step_unet = torch.compile(unet, mode=args.compile_mode)
    opt = torch.optim.AdamW(unet.parameters(), lr=3e-5, weight_decay=0.0, fused=True)
    b, f, (h, w) = args.batch, args.frames, args.latent
    cross = unet.config.cross_attention_dim
    sample = torch.randn(b, 4, f, h, w, device=dev)
    image_latents = torch.randn(b, 4, f, h, w, device=dev)
    image_emb = torch.randn(b, 1, cross, device=dev)
    text = torch.randn(b, 77, cross, device=dev)
    fps = torch.full((b,), 8, device=dev)
    target = torch.randn_like(sample)

    def step():
        t = torch.randint(0, 1000, (b,), device=dev)
        return train_step(step_unet, unet, opt, ema, dict(sample=sample, timestep=t, fps=fps, image_latents=image_latents,
                                                          image_embeddings=image_emb, encoder_hidden_states=text), target)

    torch.cuda.reset_peak_memory_stats()
    times = []
    result: dict = {"args": vars(args), "device": torch.cuda.get_device_name(), "torch": torch.__version__}
    try:
        for _ in range(args.steps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    except torch.OutOfMemoryError as exc:
        result["error"] = f"out of memory: {str(exc)[:200]}"
        print(json.dumps(result), flush=True)
        return
    warm = times[3:] or times
    step_s = sum(warm) / len(warm)
    result.update(first_step_s=round(times[0], 2), step_s=round(step_s, 4), samples_per_s=round(b / step_s, 3),
                  peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 1),
                  times=[round(x, 3) for x in times])
    if args.compile:
        from torch._dynamo.utils import counters

        result["dynamo"] = {k: dict(counters[k]) for k in ("frames", "stats", "graph_break", "recompiles")
                            if counters[k]}
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(2):
                step()
            torch.cuda.synchronize()
        by_name: Counter = Counter()
        for ev in prof.key_averages():
            if ev.device_type.name == "CUDA" or getattr(ev, "self_device_time_total", 0) > 0:
                by_name[ev.key] += getattr(ev, "self_device_time_total", 0)
        total = sum(by_name.values()) or 1
        fams: Counter = Counter()
        for name, us in by_name.items():
            fams[family(name)] += us
        result["cuda_ms_per_step"] = round(total / 2 / 1000, 1)
        result["families"] = {k: round(v / total, 3) for k, v in fams.most_common()}
        result["top"] = [[n[:110], round(us / total, 3)] for n, us in by_name.most_common(args.top)]
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
