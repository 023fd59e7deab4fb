"""A faster Qwen-VL vision tower for the static-graph path's prefill, with the same maths.

At large batches the prefill, not decoding, bounds captioning, and most of the prefill is the vision
tower (issue 6's benchmark: 8.9 ms per clip of 8 frames at 224 px on an H100, about 145 TFLOP/s for
a 670 M-parameter ViT). Inside ``FastVision`` (entered by ``GraphDecoder`` around its prefill):

- attention goes through ``varlen_sdpa`` (fast_decode.py): one batched SDPA call over the windows;
- the patch embedding, a Conv3d whose kernel equals its stride (every output sees exactly one
  patch), runs as the matrix product it is: the flattened (C, T, P, P) patches times the flattened
  weight. cuDNN runs that convolution as many tiny ones;
- with ``compile=True``, each vision block runs through ``torch.compile`` (regional compilation:
  the blocks share one compiled graph, so the cost is one block's compile per batch shape), which
  fuses the float32 rotary embedding, the RMSNorms, the gated MLP's activation and the residual adds
  that otherwise make one memory pass each.

Outside the context the model is untouched (transformers' ``generate`` on the same model object
runs the original code), so the default path stays the reference.
"""

from __future__ import annotations

import torch


def _linear_patch_embed(embed):
    """The forward of a Qwen-VL ``PatchEmbed`` as one matrix product (same numbers as its Conv3d)."""
    conv = embed.proj
    weight = conv.weight.reshape(conv.weight.shape[0], -1)  # (E, C*T*P*P), the input's flattening order
    bias = conv.bias

    def forward(hidden_states: torch.Tensor) -> torch.Tensor:
        x = hidden_states.reshape(-1, weight.shape[1]).to(weight.dtype)
        return torch.nn.functional.linear(x, weight, bias)

    return forward


def qwen_vision_tower(model):
    """The vision tower of a Qwen2-VL / Qwen2.5-VL model, or None."""
    if getattr(model.config, "model_type", "") not in ("qwen2_vl", "qwen2_5_vl"):
        return None
    inner = getattr(model, "model", model)
    return getattr(inner, "visual", None)


class FastVision:
    """Context manager: the vision tower's fast forms while inside, the original outside."""

    def __init__(self, model, attention: str | None, compile: bool = False, compile_backend: str = "inductor"):
        self.vision = qwen_vision_tower(model)
        self.config = getattr(model.config, "vision_config", None)  # what the vision attention reads
        self.attention = attention if self.config is not None else None
        self.compile = compile and self.vision is not None
        self.compile_backend = compile_backend
        self._compiled: list | None = None
        self._saved: list = []

    def _compiled_blocks(self) -> list:
        if self._compiled is None:
            # nn.Module.compile's own mechanism (module._compiled_call_impl), kept aside and switched
            # on only inside the context
            self._compiled = [torch.compile(block._call_impl, backend=self.compile_backend) for block in self.vision.blocks]
        return self._compiled

    def __enter__(self):
        if self.vision is None:
            return self
        cfg = self.config
        embed = self.vision.patch_embed
        self._saved = [("attn", cfg, cfg._attn_implementation)] if self.attention else []
        if self.attention:
            cfg._attn_implementation = self.attention
        if isinstance(getattr(embed, "proj", None), torch.nn.Conv3d) and tuple(embed.proj.kernel_size) == tuple(
                embed.proj.stride) and embed.proj.padding == (0, 0, 0):
            self._saved.append(("embed", embed, embed.__dict__.get("forward")))
            embed.forward = _linear_patch_embed(embed)
        if self.compile:
            for block, fn in zip(self.vision.blocks, self._compiled_blocks()):
                self._saved.append(("block", block, block._compiled_call_impl))
                block._compiled_call_impl = fn
        return self

    def __exit__(self, *exc):
        for kind, obj, old in reversed(self._saved):
            if kind == "attn":
                obj._attn_implementation = old
            elif kind == "embed":
                if old is None:
                    del obj.forward
                else:
                    obj.forward = old
            else:
                obj._compiled_call_impl = old
        self._saved = []
        return False
