"""Refiner training step and full cascade sampling: time and peak GPU memory (random weights).

    python bench/bench_refiner.py --size real --out results.json      # on a GPU (H100)
    python bench/bench_refiner.py --size tiny --out /tmp/r.json       # CPU smoke test, tiny models

Part 1, training: the refiner's training step as ``train_loop`` runs it (``refiner_loss`` with bf16
autocast: random crop of a 16-frame 1280x720 clip, degrade, two VAE encodes, text encoding, UNet3D
forward and backward, gradient clipping, fused AdamW, EMA update) for several crop sizes, with and
without activation checkpointing. The UNet3D has cerspense/zeroscope_v2_XL's configuration (1.41 B
parameters), the VAE SD's, the text encoder OpenCLIP ViT-H's (1024 wide, 23 layers), random weights.

Part 2, the cascade (``run_cascade``, what `vidcorpus generate` runs): the base stage with the
I2VGen-XL UNet of diffusers' default (published) configuration plus ViT-H image and text encoders at
448x256, then the refiner at 1280x720, 16 frames. First a full run (all memory measures, 50 base
steps, 50-step DDIM schedule of which the refiner runs the steps <= t_max=600), then ablations with
few steps (peak memory does not depend on the number of steps), each dropping one measure.
Results go to ``--out`` as JSON, rewritten after every item so a cut-off run keeps what it measured.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import sys
import time
import traceback

import torch

from vidcorpus.config import GenerateConfig, RefinerTrainConfig

SD_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
              layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215)
VIT_H_TEXT = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                  num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=1024)
VIT_H_VISION = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                    image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu")


def _gib(x: int) -> float:
    return round(x / 2**30, 2)


class Builder:
    """Random components of real (or tiny) size, created directly on the device in the given dtype."""

    def __init__(self, size: str, device: torch.device):
        self.size, self.device = size, device

    def _make(self, fn, dtype):
        old = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(self.device):
                m = fn()
        finally:
            torch.set_default_dtype(old)
        return m.to(self.device, dtype).eval().requires_grad_(False)

    def scheduler(self):
        from diffusers import DDIMScheduler

        return DDIMScheduler(beta_schedule="squaredcos_cap_v2", rescale_betas_zero_snr=True,
                             prediction_type="v_prediction", timestep_spacing="leading", clip_sample=False)

    def tokenizer(self):
        from vidcorpus.train.i2vgen_components import build_tiny_tokenizer

        return build_tiny_tokenizer()

    def vae(self, dtype):
        from diffusers import AutoencoderKL

        from vidcorpus.train.i2vgen_components import TINY_VAE

        return self._make(lambda: AutoencoderKL(**(SD_VAE if self.size == "real" else TINY_VAE)), dtype)

    def text_encoder(self, dtype):
        from transformers import CLIPTextConfig, CLIPTextModel

        from vidcorpus.train.i2vgen_components import TINY_DIM

        conf = VIT_H_TEXT if self.size == "real" else dict(
            vocab_size=49408, hidden_size=TINY_DIM, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=77, projection_dim=TINY_DIM)
        return self._make(lambda: CLIPTextModel(CLIPTextConfig(**conf)), dtype)

    def image_encoder(self, dtype):
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        from vidcorpus.train.i2vgen_components import TINY_DIM

        conf = VIT_H_VISION if self.size == "real" else dict(
            hidden_size=TINY_DIM, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            patch_size=8, projection_dim=TINY_DIM)
        return self._make(lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**conf)), dtype)

    def refiner_unet(self, dtype):
        from diffusers import UNet3DConditionModel

        from vidcorpus.train.refiner import TINY_REFINER_UNET, ZEROSCOPE_UNET

        conf = ZEROSCOPE_UNET if self.size == "real" else TINY_REFINER_UNET
        return self._make(lambda: UNet3DConditionModel(**conf), dtype)

    def base_unet(self, dtype):
        from diffusers import I2VGenXLUNet

        from vidcorpus.train.i2vgen_components import TINY_UNET

        return self._make(lambda: I2VGenXLUNet(**({} if self.size == "real" else TINY_UNET)), dtype)

    def refiner(self, dtype, unet_dtype=None, text_on_cpu=False):
        from vidcorpus.train.refiner import RefinerComponents

        te = self.text_encoder(dtype)
        if text_on_cpu:
            te.to("cpu")
        return RefinerComponents(unet=self.refiner_unet(unet_dtype or dtype), vae=self.vae(dtype), text_encoder=te,
                                 tokenizer=self.tokenizer(), scheduler=self.scheduler(), name="random")

    def base_pipeline(self, dtype):
        from diffusers import I2VGenXLPipeline
        from transformers import CLIPImageProcessor

        side = 224 if self.size == "real" else 32
        fe = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
        pipe = I2VGenXLPipeline(vae=self.vae(dtype), text_encoder=self.text_encoder(dtype), tokenizer=self.tokenizer(),
                                image_encoder=self.image_encoder(dtype), feature_extractor=fe,
                                unet=self.base_unet(dtype), scheduler=self.scheduler())
        pipe.set_progress_bar_config(disable=True)
        return pipe


def _reset(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device) -> float | None:
    return _gib(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def bench_training(b: Builder, device, crop, ckpt: bool, frames: int, height: int, width: int, steps: int,
                   warmup: int) -> dict:
    from vidcorpus.train.step import ema_update, lr_lambda
    from vidcorpus.train.trainer import apply_activation_checkpointing
    from vidcorpus.train.objective import TextEncoderCache
    from vidcorpus.train.refiner import refiner_loss

    _reset(device)
    cuda = device.type == "cuda"
    low = torch.bfloat16 if cuda else torch.float32
    comps = b.refiner(low, unet_dtype=torch.float32)
    unet = comps.unet.train().requires_grad_(True)
    ema = copy.deepcopy(unet).requires_grad_(False).eval()
    n_params = sum(p.numel() for p in unet.parameters())
    blocks = apply_activation_checkpointing(unet) if ckpt else 0
    params = [p for p in unet.parameters()]
    opt = torch.optim.AdamW(params, lr=3e-5, weight_decay=0.0, **({"fused": True} if cuda else {}))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(2, 1000))
    cfg = RefinerTrainConfig(num_frames=frames, height=height, width=width, crop_height=crop[0], crop_width=crop[1],
                             batch_size=1, drop_text=0.1)
    cache = TextEncoderCache(comps)
    gen = torch.Generator(device=device).manual_seed(0)
    video = torch.rand((1, frames, 3, height, width), device=device) * 2 - 1
    batch = {"video": video, "text": ["a white ball rolling"]}
    weights_gib = _gib(torch.cuda.memory_allocated(device)) if cuda else None
    times = []
    for i in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        loss = refiner_loss(comps, cache, batch, cfg, gen, low if cuda else None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        ema_update(ema, unet, 0.9999)
        if cuda:
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    out = {"crop": f"{crop[1]}x{crop[0]}", "latent": f"{crop[1] // 8}x{crop[0] // 8}", "frames": frames,
           "activation_checkpointing_blocks": blocks, "unet_params": n_params, "step_s": sum(times) / len(times),
           "step_s_all": [round(t, 4) for t in times], "peak_gib": _peak(device),
           "weights_opt_ema_before_step_gib": weights_gib, "loss": float(loss)}
    del comps, unet, ema, opt, params, loss
    _reset(device)
    return out


def bench_cascade(b: Builder, device, gcfg: GenerateConfig, t_max: int, image) -> dict:
    from vidcorpus.train.cascade import run_cascade

    _reset(device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if (cuda and gcfg.precision == "bf16") else torch.float32
    loads = {}

    def load_base(dev):
        t0 = time.perf_counter()
        pipe = b.base_pipeline(dtype)
        loads["base"] = time.perf_counter() - t0
        return pipe

    def load_refiner(dev):
        t0 = time.perf_counter()
        comps = b.refiner(dtype, text_on_cpu=gcfg.offload)
        loads["refine"] = time.perf_counter() - t0
        return comps

    held = []
    if not gcfg.offload:  # keep the base stage resident: what loading the stages in turn avoids
        def load_base_kept(dev):
            pipe = load_base(dev)
            held.append(pipe)
            return pipe
        base_loader = load_base_kept
    else:
        base_loader = load_base
    res = run_cascade(image, "a white ball rolling across a textured surface", "a white ball rolling",
                      base_loader, load_refiner, gcfg, t_max, device, progress=False)
    held.clear()
    out = {"settings": gcfg.model_dump(), "t_max": t_max, "t_start": res.t_start,
           "seconds_with_model_build": {k: round(v, 3) for k, v in res.seconds.items()},
           "model_build_s": {k: round(v, 3) for k, v in loads.items()},
           "sampling_s": {k: round(res.seconds[k] - loads.get(k, 0.0), 3) for k in res.seconds},
           "peak_gib": {k: round(v, 2) for k, v in res.peak_gib.items()},
           "output": list(res.frames.shape), "base_output": list(res.base_frames.shape)}
    out["sampling_s_total"] = round(sum(out["sampling_s"].values()), 3)
    out["peak_gib_max"] = max(res.peak_gib.values()) if res.peak_gib else None
    return out, res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=["real", "tiny"], default="real")
    ap.add_argument("--out", required=True)
    ap.add_argument("--mp4", default=None, help="Also write the full cascade's video here.")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--crops", default="320x512,480x832,480x832+ckpt,720x1280+ckpt",
                    help="Training crops HxW; +ckpt: with activation checkpointing.")
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--base-size", default="256x448")
    ap.add_argument("--base-steps", type=int, default=50)
    ap.add_argument("--refiner-steps", type=int, default=50)
    ap.add_argument("--t-max", type=int, default=600)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-cascade", action="store_true")
    ap.add_argument("--skip-ablations", action="store_true")
    ap.add_argument("--budget-s", type=float, default=1e9, help="Skip what remains once this much time has passed.")
    args = ap.parse_args()

    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    b = Builder(args.size, device)
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "argv": sys.argv, "torch": torch.__version__,
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "size": args.size, "training": [], "cascade": None, "ablations": []}
    try:
        import diffusers

        results["diffusers"] = diffusers.__version__
    except ImportError:
        pass

    def save():
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)

    def over() -> bool:
        return time.perf_counter() - started > args.budget_s

    def attempt(fn, label):
        try:
            r = fn()
        except torch.OutOfMemoryError as e:
            r = {"label": label, "error": "out of memory", "detail": str(e).splitlines()[0][:300],
                 "peak_gib": _peak(device)}
        except Exception as e:  # noqa: BLE001 - record and go on with the next item
            r = {"label": label, "error": f"{type(e).__name__}: {e}"[:500], "trace": traceback.format_exc()[-1500:]}
        _reset(device)
        print(json.dumps(r)[:600], flush=True)
        return r

    if not args.skip_train:
        for spec in args.crops.split(","):
            if over():
                results["training"].append({"label": spec, "skipped": "time budget"})
                continue
            ckpt = spec.endswith("+ckpt")
            h, w = (int(x) for x in spec.removesuffix("+ckpt").split("x"))
            r = attempt(lambda: bench_training(b, device, (h, w), ckpt, args.frames, args.height, args.width,
                                               args.steps, args.warmup), spec)
            r.setdefault("label", spec)
            results["training"].append(r)
            save()

    import numpy as np

    rng = np.random.default_rng(0)
    bh, bw = (int(x) for x in args.base_size.split("x"))
    image = (rng.random((bh, bw, 3)) * 255).astype(np.uint8)
    full = GenerateConfig(height=args.height, width=args.width, num_frames=args.frames, base_height=bh, base_width=bw,
                          base_steps=args.base_steps, refiner_steps=args.refiner_steps)
    if not args.skip_cascade and not over():
        def run_full():
            out, res = bench_cascade(b, device, full, args.t_max, image)
            if args.mp4:
                from vidcorpus.train.export import write_mp4

                write_mp4(res.frames, full.fps, args.mp4)
                out["mp4_bytes"] = os.path.getsize(args.mp4)
            return out
        results["cascade"] = attempt(run_full, "full")
        save()

    if not args.skip_ablations:
        # Few steps: t_max=40 of a 50-step schedule runs 3 refiner steps; 2 base steps.
        short = dict(base_steps=2)
        variants = [
            ("all measures", {}),
            ("guidance passes batched (cfg_batched)", {"cfg_batched": True}),
            ("VAE decode/encode 4 frames at a time", {"vae_chunk": 4}),
            ("VAE decode/encode all frames at once", {"vae_chunk": args.frames}),
            ("stages kept resident, text encoder on GPU (offload off)", {"offload": False}),
            ("fp32 weights and activations", {"precision": "fp32"}),
        ]
        for label, change in variants:
            if over():
                results["ablations"].append({"label": label, "skipped": "time budget"})
                continue
            g = full.model_copy(update={**short, **change})
            r = attempt(lambda: bench_cascade(b, device, g, 40, image)[0], label)
            r["label"] = label
            results["ablations"].append(r)
            save()
    results["total_s"] = round(time.perf_counter() - started, 1)
    save()
    print(f"done in {results['total_s']} s -> {args.out}")


if __name__ == "__main__":
    main()
