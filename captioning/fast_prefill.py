"""A faster prefill for the static-graph path (Qwen-VL families), with the same maths.

At large batches the prefill, not decoding, bounds captioning (issue 6's benchmark: at batch 512 on
an H100 the static path spent 7.1 s prefilling and 1.0 s decoding 62 tokens). Inside
``FastPrefill`` (entered by ``GraphDecoder`` around its prefill ``generate``):

- the vision attention goes through ``varlen_sdpa`` (fast_decode.py): one batched SDPA call over
  the windows instead of transformers' per-window loop;
- the vision patch embedding, a Conv3d whose kernel equals its stride (every output sees exactly one
  patch), runs as the matrix product it is: the flattened (C, T, P, P) patches times the flattened
  weight;
- the model's 3-D rope index (``get_rope_index``: a Python loop over the batch with a few dozen
  small tensor operations and host syncs per row) runs on CPU copies of its integer inputs and the
  result is moved back: the same function and numbers without a GPU launch or sync per operation;
- with ``compile=True`` (``captioning.compile_prefill``), regional ``torch.compile``: every vision
  block, and each language-model layer's RMSNorms and MLP, run compiled (the blocks of one kind share
  one compiled graph, so the cost is a few small compiles per batch shape). That fuses the float32
  rotary embedding, the norms' upcasts, the gated activations and residual adds, each otherwise one
  memory pass. The language model's attention stays eager (its cache update is per layer).

Outside the context the model is untouched, so transformers' ``generate`` on the same model object
(the default path, the benchmark's reference) runs the original code, and the captured decoding
step stays eager inside its CUDA graph.
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


def _on_cpu(fn, device: torch.device):
    """``fn`` run on CPU copies of its integer tensor arguments, its tensor results moved to ``device``.

    Floating-point arguments pass through where they are: generate hands the rope index all its
    model inputs, pixel values included (1.2 GB at batch 512), which it never reads."""

    def cpu(x):
        return x.cpu() if isinstance(x, torch.Tensor) and not torch.is_floating_point(x) else x

    def back(x):
        return x.to(device) if isinstance(x, torch.Tensor) else x

    def wrapped(*args, **kwargs):
        out = fn(*[cpu(a) for a in args], **{k: cpu(v) for k, v in kwargs.items()})
        return tuple(back(o) for o in out) if isinstance(out, tuple) else back(out)

    return wrapped


def _qwen_parts(model):
    """(vision tower, inner model, language-model layers) of a Qwen2-VL / Qwen2.5-VL model, else Nones."""
    if getattr(model.config, "model_type", "") not in ("qwen2_vl", "qwen2_5_vl"):
        return None, None, []
    inner = getattr(model, "model", model)
    lm = getattr(inner, "language_model", None)
    return getattr(inner, "visual", None), inner, list(getattr(lm, "layers", []) or [])


class FastPrefill:
    """Context manager: the prefill's fast forms while inside, the original model outside."""

    def __init__(self, model, attention: str | None, compile: bool = False, compile_backend: str = "inductor",
                 cpu_rope: bool | None = None):
        self.vision, self.inner, layers = _qwen_parts(model)
        self.config = getattr(model.config, "vision_config", None)  # what the vision attention reads
        self.attention = attention if (self.config is not None and self.vision is not None) else None
        self.device = next(model.parameters()).device
        self.compile_backend = compile_backend
        self.cpu_rope = self.device.type == "cuda" if cpu_rope is None else cpu_rope
        # the modules compiled for the prefill: vision blocks; LM layers' norms and MLPs
        self.targets: list[torch.nn.Module] = []
        if compile and self.vision is not None:
            self.targets += list(self.vision.blocks)
            for layer in layers:
                self.targets += [m for m in (getattr(layer, "input_layernorm", None),
                                             getattr(layer, "post_attention_layernorm", None),
                                             getattr(layer, "mlp", None)) if m is not None]
        self._compiled: list | None = None
        self._saved: list = []

    def _compiled_calls(self) -> list:
        if self._compiled is None:
            # nn.Module.compile's own mechanism (module._compiled_call_impl), kept aside and switched
            # on only inside the context. Every target compiles the same code object
            # (Module._call_impl): vision blocks, norms and MLPs at a few shapes each exceed dynamo's
            # default of 8 entries per code object, after which it would silently run eagerly
            cfg = torch._dynamo.config
            for name in ("recompile_limit", "cache_size_limit"):
                if hasattr(cfg, name):
                    setattr(cfg, name, max(getattr(cfg, name), 64))
                    break
            self._compiled = [torch.compile(m._call_impl, backend=self.compile_backend) for m in self.targets]
        return self._compiled

    def __enter__(self):
        if self.vision is None:
            return self
        if self.attention:
            self._saved.append(("attn", self.config, self.config._attn_implementation))
            self.config._attn_implementation = self.attention
        embed = self.vision.patch_embed
        proj = getattr(embed, "proj", None)
        if isinstance(proj, torch.nn.Conv3d) and tuple(proj.kernel_size) == tuple(proj.stride) and not any(
                proj.padding if isinstance(proj.padding, tuple) else (1,)):
            self._saved.append(("attr", embed, ("forward", embed.__dict__.get("forward"))))
            embed.forward = _linear_patch_embed(embed)
        rope = getattr(self.inner, "get_rope_index", None)
        if rope is not None and self.cpu_rope:
            self._saved.append(("attr", self.inner, ("get_rope_index", self.inner.__dict__.get("get_rope_index"))))
            self.inner.get_rope_index = _on_cpu(rope, self.device)
        for module, fn in zip(self.targets, self._compiled_calls()):
            self._saved.append(("compiled", module, module._compiled_call_impl))
            module._compiled_call_impl = fn
        return self

    def __exit__(self, *exc):
        for kind, obj, old in reversed(self._saved):
            if kind == "attn":
                obj._attn_implementation = old
            elif kind == "attr":
                name, value = old
                if value is None:
                    delattr(obj, name)
                else:
                    setattr(obj, name, value)
            else:
                obj._compiled_call_impl = old
        self._saved = []
        return False
