"""A faster prefill for the static-graph path (Qwen-VL families), with the same maths.

At large batches the prefill, not decoding, bounds captioning (issue 6's benchmark: at batch 512 on
an H100 the static path spent 7.1 s prefilling and 1.0 s decoding 62 tokens). Inside
``FastPrefill`` (entered by ``GraphDecoder`` around its prefill ``generate``):

- the vision attention goes through ``varlen_sdpa`` (decode_attention.py): one batched SDPA call over
  the windows instead of transformers' per-window loop;
- the vision patch embedding, a Conv3d whose kernel equals its stride (every output sees exactly one
  patch), runs as the matrix product it is: the flattened (C, T, P, P) patches times the flattened
  weight;
- the model's 3-D rope index (``get_rope_index``: a Python loop over the batch with a few dozen
  small tensor operations and host syncs per row) runs on CPU copies of its inputs and the result is
  moved back (the pixel values it is also handed, 1.2 GB at batch 512, stay where they are: it never
  reads them); when all rows are alike (clips of one size) it runs for one row, copied to the rest;
- with ``compile=True`` (``captioning.compile_prefill``), compiled graphs: a vision block whose
  attention windows are all of one length is one graph, attention included (``vision_block_segments``;
  its MLP's gate and up as one product of a 16-byte aligned width), and each language-model layer runs
  as a graph before its attention and one after it, transformers' cache update and attention between
  them (``lm_before_attention``/``lm_after_attention``: no layer index inside, so one graph serves
  every layer). Other modules are compiled as they are. That fuses the float32 rotary embedding, the
  norms' upcasts, the gated activations and residual adds, each otherwise one memory pass. Cost on an
  H100: seconds of compile per batch shape; it pays from batch 64 up, not at batch 1. If compiling
  fails, ``GraphDecoder`` goes on uncompiled.

Outside the context the model is untouched, so transformers' ``generate`` on the same model object
(the default path, the benchmark's reference) runs the original code. The context changes shared
model state while it is open: one prefill per model at a time (not thread-safe), as the captioner
runs it.
"""

from __future__ import annotations

import contextlib

import torch

from vidcorpus.captioning.decode_attention import AttnSwitch
from vidcorpus.captioning.fused_blocks import (Segments, fusable_lm_layer, fusable_vision_block, lm_after_attention,
                                               lm_before_attention, lm_layer_forward, vision_block_forward,
                                               vision_block_segments)


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


_PER_ROW = ("input_ids", "attention_mask", "mm_token_type_ids")  # (batch, length) inputs of the rope index
_PER_ITEM = ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")  # one entry per image or video


def _alike_rows_once(fn):
    """A Qwen-VL rope index (``get_rope_index(input_ids, ...)``: a Python loop over the batch, 0.1 to
    0.25 s of CPU at batch 512 while the GPU waits) computed once when every row is the same: the same
    tokens and mask, as many images and videos per row, all of one grid. Each row's positions depend
    only on its own tokens and its own grids, so the others are copies of the first. A captioning
    batch of clips of one size is that case (the video tokens are placeholders); otherwise ``fn``."""

    def rows_alike(t: torch.Tensor) -> bool:
        return t.shape[0] < 2 or bool((t == t[:1]).all())

    def wrapped(input_ids=None, *args, **kwargs):
        if args or not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[0] < 2:
            return fn(input_ids, *args, **kwargs)
        batch = input_ids.shape[0]
        per_row = {k: v for k, v in kwargs.items() if k in _PER_ROW and isinstance(v, torch.Tensor)}
        per_item = {k: v for k, v in kwargs.items() if k in _PER_ITEM and isinstance(v, torch.Tensor)}
        known = set(_PER_ROW) | set(_PER_ITEM)
        if (any(isinstance(v, torch.Tensor) and k not in known and not k.startswith("pixel_values")
                for k, v in kwargs.items())
                or any(v is not None and not isinstance(v, torch.Tensor)  # a list of seconds per grid, say
                       for k, v in kwargs.items() if k in known)
                or any(v.shape[0] != batch for v in per_row.values())
                or any(v.shape[0] % batch for v in per_item.values())
                or not all(rows_alike(t) for t in [input_ids, *per_row.values(), *per_item.values()])):
            return fn(input_ids, *args, **kwargs)
        one = {**kwargs, **{k: v[:1] for k, v in per_row.items()},
               **{k: v[:v.shape[0] // batch] for k, v in per_item.items()}}
        out = fn(input_ids[:1], **one)
        if not (isinstance(out, tuple) and len(out) == 2):
            return fn(input_ids, *args, **kwargs)
        wrapped.calls_from_one_row += 1
        positions, deltas = out  # (..., 1, length) and (1, 1)
        return (positions.expand(*positions.shape[:-2], batch, positions.shape[-1]).contiguous(),
                deltas.expand(batch, *deltas.shape[1:]).contiguous())

    wrapped.calls_from_one_row = 0  # (tests, profiles)
    return wrapped


def qwen_parts(model):
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


def recompile_limit_raised(limit: int):
    """A context manager (torch._dynamo.config.patch) raising the per-code-object recompile limit (its
    name varies by torch version) while open, or None; the prefill's and the decoding step's compiles
    share it."""
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
        self.vision, self.inner, layers = qwen_parts(model)
        self.config = getattr(model.config, "vision_config", None)  # what the vision attention reads
        self.attention = attention if (self.config is not None and self.vision is not None) else None
        device = next(model.parameters()).device
        self.compile_backend = compile_backend
        self.cpu_rope = device.type == "cuda" if cpu_rope is None else cpu_rope
        # compiled for the prefill: vision blocks (whole, when their windows are equal) and LM layers
        # (before and after the attention) get a forward of fused, compiled graphs; modules of models
        # laid out otherwise are compiled as they are (blocks; norms and MLPs)
        self.fused_blocks: list[torch.nn.Module] = []
        self.fused_layers: list[torch.nn.Module] = []
        self.targets: list[torch.nn.Module] = []
        if compile and self.vision is not None:
            blocks = list(self.vision.blocks)
            # fused blocks attend with SDPA: only where the vision tower runs on SDPA anyway
            if blocks and self.attention is not None and all(fusable_vision_block(b) for b in blocks):
                self.fused_blocks = blocks
            else:
                self.targets += blocks
            if layers and all(fusable_lm_layer(layer) for layer in layers):
                self.fused_layers = layers
            else:
                for layer in layers:
                    self.targets += [m for m in (getattr(layer, "input_layernorm", None),
                                                 getattr(layer, "post_attention_layernorm", None),
                                                 getattr(layer, "mlp", None)) if m is not None]
        self._compiled: list | None = None
        self._fused: dict | None = None
        self._undo: contextlib.ExitStack | None = None
        self._depth = 0

    def disable_compile(self) -> None:
        """Run the prefill uncompiled from now on (after a compile failure, say)."""
        if self._depth:
            raise RuntimeError("disable_compile inside the context")
        self.targets, self._compiled = [], None
        self.fused_blocks, self.fused_layers, self._fused = [], [], None

    @property
    def compiles(self) -> bool:
        return bool(self.targets or self.fused_blocks or self.fused_layers)

    def _fused_calls(self) -> dict:
        if self._fused is None:
            compile_ = lambda fn: torch.compile(fn, backend=self.compile_backend)  # noqa: E731
            self._fused = {"block": compile_(vision_block_segments),
                           "block_fallback": compile_(type(self.fused_blocks[0]).forward) if self.fused_blocks else None,
                           "before": compile_(lm_before_attention), "after": compile_(lm_after_attention)}
        return self._fused

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
        compiled = self._compiled_calls()  # first: a failure here has changed nothing yet
        fused = self._fused_calls() if (self.fused_blocks or self.fused_layers) else {}
        undo.enter_context(AttnSwitch(self.config, self.attention))
        embed = self.vision.patch_embed
        if _is_patch_conv(getattr(embed, "proj", None)):
            patch_attr(undo, embed, "forward", _linear_patch_embed(embed))
        rope = getattr(self.inner, "get_rope_index", None)
        if rope is not None and self.cpu_rope:
            patch_attr(undo, self.inner, "get_rope_index", _on_cpu(_alike_rows_once(rope)))
        if compiled or fused:
            # one code object serves many modules (Module._call_impl for every target; the fused
            # functions for every block or layer) at a few shapes each: more than dynamo's default of
            # 8 entries per code object, after which it would silently run eagerly. Raised while the
            # context is open only.
            limit = recompile_limit_raised(64)
            if limit is not None:
                undo.enter_context(limit)
        for module, fn in zip(self.targets, compiled):
            patch_attr(undo, module, "_compiled_call_impl", fn)
        segments = Segments()
        for block in self.fused_blocks:
            patch_attr(undo, block, "forward", vision_block_forward(block, fused["block"], fused["block_fallback"], segments))
        for layer in self.fused_layers:
            patch_attr(undo, layer, "forward", lm_layer_forward(layer, fused["before"], fused["after"]))

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0 and self._undo is not None:
            self._undo.close()
            self._undo = None
        return False


def patch_attr(undo: contextlib.ExitStack, obj, name: str, value) -> None:
    """Set an instance attribute; ``undo`` puts back what the instance had (or removes it)."""
    old = obj.__dict__.get(name, _MISSING)
    setattr(obj, name, value)
    if old is _MISSING:
        undo.callback(delattr, obj, name)
    else:
        undo.callback(setattr, obj, name, old)
