"""Reference training-step throughput of diffusers' I2VGenXLUNet (default 1.42 B config) on one GPU.

The reference of issue 8: eager forward + backward + fused AdamW under bf16 autocast, synthetic
latents of 16 frames at 256x448 (32x56 latents), at each batch size until out of memory. Our own
step adds the EMA update (vidcorpus.train.step.ema_update) on top of the same work; both are timed
in the same run. Prints one JSON line per configuration.

    python bench/bench_unet_step.py --batches 1 2 4 --steps 6
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def train_step(step_unet, unet, opt, ema, inputs: dict, target: torch.Tensor) -> torch.Tensor:
    """The reference step: forward of ``step_unet`` (the UNet or a compiled wrapper of it) under bf16
    autocast, backward, gradient clipping, the optimizer, and our EMA update when ``ema`` is given."""
    from vidcorpus.train.step import ema_update

    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = step_unet(**inputs, return_dict=False)[0]
    loss = torch.nn.functional.mse_loss(out.float(), target)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if ema is not None:
        ema_update(ema, unet, 0.9999)
    return loss


def run(batch: int, steps: int, frames: int, h: int, w: int, with_ema: bool) -> dict:
    from diffusers import I2VGenXLUNet

    torch.manual_seed(0)
    dev = torch.device("cuda")
    unet = I2VGenXLUNet().to(dev)
    unet.train()
    ema = None
    if with_ema:
        ema = I2VGenXLUNet().to(dev)
        ema.load_state_dict(unet.state_dict())
        ema.requires_grad_(False)
    params = sum(p.numel() for p in unet.parameters())
    opt = torch.optim.AdamW(unet.parameters(), lr=3e-5, weight_decay=0.0, fused=True)
    cross = unet.config.cross_attention_dim
    sample = torch.randn(batch, 4, frames, h, w, device=dev)
    image_latents = torch.randn(batch, 4, frames, h, w, device=dev)
    image_emb = torch.randn(batch, cross, device=dev)
    text = torch.randn(batch, 77, cross, device=dev)
    fps = torch.full((batch,), 8, device=dev)
    t = torch.randint(0, 1000, (batch,), device=dev)
    target = torch.randn_like(sample)
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_step(unet, unet, opt, ema, dict(sample=sample, timestep=t, fps=fps, image_latents=image_latents,
                                              image_embeddings=image_emb, encoder_hidden_states=text), target)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    warm = times[2:] or times
    step = sum(warm) / len(warm)
    return {"batch": batch, "frames": frames, "latent_hw": [h, w], "ema": with_ema, "params_b": round(params / 1e9, 3),
            "step_s": round(step, 4), "samples_per_s": round(batch / step, 2),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1), "device": torch.cuda.get_device_name(),
            "step_times_s": [round(x, 4) for x in times]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--latent", type=int, nargs=2, default=[32, 56])
    ap.add_argument("--ema", choices=["off", "on", "both"], default="both",
                    help="off: the issue's reference alone (no EMA); on: with our EMA update; both: each")
    args = ap.parse_args()
    for with_ema in {"off": (False,), "on": (True,), "both": (False, True)}[args.ema]:
        for b in args.batches:
            try:
                print(json.dumps(run(b, args.steps, args.frames, *args.latent, with_ema)), flush=True)
            except torch.OutOfMemoryError:
                print(json.dumps({"batch": b, "ema": with_ema, "error": "out of memory"}), flush=True)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
