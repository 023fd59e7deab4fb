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
  small tensor operations and host syncs per row) runs on CPU copies of its inputs and the result is
  moved back: the same function and numbers without a GPU launch or sync per operation (the pixel
  values it is also handed, 1.2 GB at batch 512, stay where they are: it never reads them);
- with ``compile=True`` (``captioning.compile_prefill``), regional ``torch.compile``: every vision
  block, and each language-model layer's RMSNorms and MLP, run compiled (modules of one kind share
  compiled graphs). That fuses the float32 rotary embedding, the norms' upcasts, the gated
  activations and residual adds, each otherwise one memory pass. The language model's attention
  stays eager (its cache update is per layer). Cost on an H100: 8 to 18 s of compile at the first
  batch shape, 3 to 12 s at later ones; it pays from batch 64 up (1.5 to 1.9x faster prefills), not
  at batch 1. If compiling fails, ``GraphDecoder`` goes on uncompiled.

Outside the context the model is untouched, so transformers' ``generate`` on the same model object
(the default path, the benchmark's reference) runs the original code, and the captured decoding
step stays eager inside its CUDA graph. The context changes shared model state while it is open:
one prefill per model at a time (not thread-safe), as the captioner runs it.
"""

from __future__ import annotations

import contextlib

import torch


def _linear_patch_embed(embed):
    """The forward of a Qwen-VL ``PatchEmbed`` as one matrix product (the same maths as its Conv3d;
    bf16 rounding may differ in the last bit)."""
    conv = embed.proj
    weight = conv.weight.reshape(conv.weight.shape[0], -1)  # (E, C*T*P*P), the input's flattening order
    bias = conv.bias

    def forward(hidden_states: torch.Tensor) -> torch.Tensor:
        x = hidden_states.reshape(-1, weight.shape[1]).to(weight.dtype)
        return torch.nn.functional.linear(x, weight, bias)

    return forward


_MISSING = object()  # "the instance had no attribute of that name" (not the same as a None value)


def _on_cpu(fn):
    """``fn`` run on CPU copies of its tensor arguments, its tensor results moved back to the device of
    its first tensor argument. Pixel values (``pixel_values*`` keyword arguments) are passed as they are."""

    def cpu(name, x):
        if not isinstance(x, torch.Tensor) or name.startswith("pixel_values"):
            return x
        return x.cpu()

    def wrapped(*args, **kwargs):
        tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
        device = tensors[0].device if tensors else torch.device("cpu")
        out = fn(*[cpu("", a) for a in args], **{k: cpu(k, v) for k, v in kwargs.items()})

        def back(x):
            return x.to(device) if isinstance(x, torch.Tensor) else x

        return tuple(back(o) for o in out) if isinstance(out, tuple) else back(out)

    return wrapped


def _qwen_parts(model):
    """(vision tower, inner model, language-model layers) of a Qwen2-VL / Qwen2.5-VL model, else Nones."""
    if getattr(model.config, "model_type", "") not in ("qwen2_vl", "qwen2_5_vl"):
        return None, None, []
    inner = getattr(model, "model", model)
    lm = getattr(inner, "language_model", None)
    return getattr(inner, "visual", None), inner, list(getattr(lm, "layers", []) or [])


def _is_patch_conv(proj) -> bool:
    """A Conv3d whose every output sees exactly one whole patch (kernel = stride, no padding, dilation
    or groups): then it is a matrix product over flattened patches."""
    return (isinstance(proj, torch.nn.Conv3d) and tuple(proj.kernel_size) == tuple(proj.stride)
            and isinstance(proj.padding, tuple) and not any(proj.padding)
            and tuple(proj.dilation) == (1, 1, 1) and proj.groups == 1)


def _recompile_limit_patch(limit: int):
    """torch._dynamo.config.patch raising the per-code-object recompile limit (its name varies by
    torch version), or None."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            return cfg.patch(**{name: max(getattr(cfg, name), limit)})
    return None


class FastPrefill:
    """Context manager: the prefill's fast forms while inside, the original model outside.

    Re-entering while open is a no-op (the outer exit restores). Not thread-safe: it changes the
    model's shared state while open."""

    def __init__(self, model, attention: str | None, compile: bool = False, compile_backend: str = "inductor",
                 cpu_rope: bool | None = None):
        self.vision, self.inner, layers = _qwen_parts(model)
        self.config = getattr(model.config, "vision_config", None)  # what the vision attention reads
        self.attention = attention if (self.config is not None and self.vision is not None) else None
        device = next(model.parameters()).device
        self.compile_backend = compile_backend
        self.cpu_rope = device.type == "cuda" if cpu_rope is None else cpu_rope
        # the modules compiled for the prefill: vision blocks; LM layers' norms and MLPs
        self.targets: list[torch.nn.Module] = []
        if compile and self.vision is not None:
            self.targets += list(self.vision.blocks)
            for layer in layers:
                self.targets += [m for m in (getattr(layer, "input_layernorm", None),
                                             getattr(layer, "post_attention_layernorm", None),
                                             getattr(layer, "mlp", None)) if m is not None]
        self._compiled: list | None = None
        self._undo: contextlib.ExitStack | None = None
        self._depth = 0

    def disable_compile(self) -> None:
        """Run the prefill uncompiled from now on (after a compile failure, say)."""
        if self._depth:
            raise RuntimeError("disable_compile inside the context")
        self.targets, self._compiled = [], None

    def _compiled_calls(self) -> list:
        if self._compiled is None:
            # nn.Module.compile's own mechanism (module._compiled_call_impl), kept aside and switched
            # on only inside the context
            self._compiled = [torch.compile(m._call_impl, backend=self.compile_backend) for m in self.targets]
        return self._compiled

    def __enter__(self):
        self._depth += 1
        if self._depth > 1 or self.vision is None:
            return self
        self._undo = contextlib.ExitStack()
        try:
            self._switch_on(self._undo)
        except BaseException:
            self._undo.close()  # all or nothing
            self._undo = None
            self._depth -= 1
            raise
        return self

    def _switch_on(self, undo: contextlib.ExitStack) -> None:
        from vidcorpus.captioning.fast_decode import _AttnSwitch

        compiled = self._compiled_calls()  # first: a failure here has changed nothing yet
        undo.enter_context(_AttnSwitch(self.config, self.attention))
        embed = self.vision.patch_embed
        if _is_patch_conv(getattr(embed, "proj", None)):
            _set(undo, embed, "forward", _linear_patch_embed(embed))
        rope = getattr(self.inner, "get_rope_index", None)
        if rope is not None and self.cpu_rope:
            _set(undo, self.inner, "get_rope_index", _on_cpu(rope))
        if compiled:
            # every target compiles the same code object (Module._call_impl): vision blocks, norms
            # and MLPs at a few shapes each exceed dynamo's default of 8 entries per code object,
            # after which it would silently run eagerly. Raised while the context is open only.
            limit = _recompile_limit_patch(64)
            if limit is not None:
                undo.enter_context(limit)
        for module, fn in zip(self.targets, compiled):
            _set(undo, module, "_compiled_call_impl", fn)

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0 and self._undo is not None:
            self._undo.close()
            self._undo = None
        return False


def _set(undo: contextlib.ExitStack, obj, name: str, value) -> None:
    """Set an instance attribute; ``undo`` puts back what the instance had (or removes it)."""
    old = obj.__dict__.get(name, _MISSING)
    setattr(obj, name, value)
    if old is _MISSING:
        undo.callback(delattr, obj, name)
    else:
        undo.callback(setattr, obj, name, old)
