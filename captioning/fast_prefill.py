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
  moved back (the pixel values it is also handed, 1.2 GB at batch 512, stay where they are: it never
  reads them); when all rows are alike (clips of one size) it runs for one row, copied to the rest;
- with ``compile=True`` (``captioning.compile_prefill``), compiled graphs: a vision block whose
  attention windows are all of one length is one graph, attention included (``_vision_block_segments``;
  its MLP's gate and up as one product of a 16-byte aligned width), and each language-model layer runs
  as a graph before its attention and one after it, transformers' cache update and attention between
  them (``_lm_before_attention``/``_lm_after_attention``: no layer index inside, so one graph serves
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


def _transformers_fn(module: torch.nn.Module, name: str):
    """A function of the transformers modeling file that defines ``module``'s class (the model's own
    rotary maths, say), or None."""
    import sys

    return getattr(sys.modules.get(type(module).__module__), name, None)


def _gated_mlp_aligned(mlp, x: torch.Tensor) -> torch.Tensor:
    """``down(act(gate(x)) * up(x))`` with gate and up as one matrix product and the intermediate width
    zero-padded to a multiple of 8 (16 bytes in bf16). Qwen2.5-VL's vision MLP is 3420 wide: its rows
    are not 16-byte aligned, which costs each of its GEMMs a copy at batch 512 (the padded columns
    are silu(0) * 0 = 0 and meet zero weights: the same sums)."""
    gate, up, down = mlp.gate_proj, mlp.up_proj, mlp.down_proj
    width = gate.weight.shape[0]
    pad = -width % 8
    f = torch.nn.functional

    def rows(t):  # pad a weight's rows (or a bias) to the aligned width
        return f.pad(t, (0, 0, 0, pad)) if t.dim() == 2 else f.pad(t, (0, pad))

    weight = torch.cat([rows(gate.weight), rows(up.weight)])
    bias = torch.cat([rows(gate.bias), rows(up.bias)]) if gate.bias is not None and up.bias is not None else None
    g, u = f.linear(x, weight, bias).split(width + pad, dim=-1)
    return f.linear(mlp.act_fn(g) * u, f.pad(down.weight, (0, pad)), down.bias)


def _fusable_mlp(mlp) -> bool:
    return (_has(mlp, "gate_proj", "up_proj", "down_proj", "act_fn")
            and (mlp.gate_proj.bias is None) == (mlp.up_proj.bias is None))


ALIGNED_VISION_MLP = True  # the vision MLP through _gated_mlp_aligned inside fused blocks


def _vision_block_segments(block, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n: int,
                           length: int) -> torch.Tensor:
    """A Qwen-VL vision block (norm, attention, residual; norm, MLP, residual: the block's own modules
    and rotary function) whose attention segments are ``n`` back-to-back windows of ``length`` tokens.
    The segmentation is a Python constant, so the whole block, attention included, is one compiled
    graph: the rotary output is written in the layout SDPA reads (under transformers' varlen path the
    block broke in two around the attention, and four copies of q, k, v and the output per block took
    14% of the vision tower's GPU time at batch 512)."""
    attn = block.attn
    x = block.norm1(hidden)
    seq = x.shape[0]
    q, k, v = attn.qkv(x).reshape(seq, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)  # (S, H, D)
    q, k = _transformers_fn(attn, "apply_rotary_pos_emb_vision")(q, k, cos, sin)

    def windows(t):  # (S, H, D) -> (n, H, length, D)
        return t.reshape(n, length, t.shape[1], t.shape[2]).transpose(1, 2)

    o = torch.nn.functional.scaled_dot_product_attention(windows(q), windows(k), windows(v), scale=attn.scaling)
    hidden = hidden + attn.proj(o.transpose(1, 2).reshape(seq, -1))
    if ALIGNED_VISION_MLP and _fusable_mlp(block.mlp):
        return hidden + _gated_mlp_aligned(block.mlp, block.norm2(hidden))
    return hidden + block.mlp(block.norm2(hidden))


def _lm_before_attention(layer, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """A Qwen-VL decoder layer up to its attention: input norm, q/k/v projections, rotary (the model's
    own function). Nothing here depends on the layer's index, so one compiled graph serves all layers."""
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    b, s, _ = x.shape

    def heads(t):
        return t.view(b, s, -1, attn.head_dim).transpose(1, 2)

    q, k = _transformers_fn(attn, "apply_rotary_pos_emb")(heads(attn.q_proj(x)), heads(attn.k_proj(x)), cos, sin)
    return q, k, heads(attn.v_proj(x))


def _lm_after_attention(layer, residual: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    """The rest of the decoder layer: output projection, residual, norm, MLP, residual."""
    b, s, _ = residual.shape
    hidden = residual + layer.self_attn.o_proj(attn_out.reshape(b, s, -1))
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))


def _has(obj, *names: str) -> bool:
    return all(hasattr(obj, n) for n in names)


def _fusable_vision_block(block) -> bool:
    return (_has(block, "norm1", "norm2", "attn", "mlp") and _has(block.attn, "qkv", "proj", "num_heads", "scaling")
            and _transformers_fn(block.attn, "apply_rotary_pos_emb_vision") is not None)


def _fusable_lm_layer(layer) -> bool:
    attn = getattr(layer, "self_attn", None)
    return (attn is not None and _has(layer, "input_layernorm", "post_attention_layernorm", "mlp")
            and _has(attn, "q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling", "layer_idx", "config")
            and getattr(attn, "sliding_window", None) is None
            and _transformers_fn(attn, "apply_rotary_pos_emb") is not None
            and _calls(type(attn).forward, "apply_rotary_pos_emb(query_states, key_states, cos, sin)")
            and _calls(type(attn).forward, ".update(key_states, value_states, self.layer_idx"))


def _calls(fn, text: str) -> bool:
    """Whether ``fn``'s source contains ``text``: the fused layer repeats what transformers' attention
    does, so it is used only while that code still does it this way."""
    import inspect

    try:
        return text in inspect.getsource(fn)
    except (OSError, TypeError):
        return False


class _Segments:
    """(n, length) of a ``cu_seqlens`` tensor cut into equal back-to-back segments, or None; answered
    once per tensor object (the vision tower passes the same two tensors to all its blocks), since
    reading a GPU tensor waits for the GPU."""

    def __init__(self):
        self.seen: list[tuple[torch.Tensor, tuple[int, int] | None]] = []

    def __call__(self, cu: torch.Tensor, total: int) -> tuple[int, int] | None:
        from vidcorpus.captioning.fast_decode import _uniform_segments

        for tensor, answer in self.seen:
            if tensor is cu:
                return answer
        answer = _uniform_segments(cu, total)
        self.seen = (self.seen + [(cu, answer)])[-4:]
        return answer


def _vision_block_forward(block, fused, fallback, segments: _Segments):
    """The forward a vision block gets inside the context: the fused, compiled block when its attention
    windows are equal (every 224 px frame's), else the block's own forward through ``fallback``."""

    def forward(hidden_states, *args, **kwargs):
        cu, pe = kwargs.get("cu_seqlens"), kwargs.get("position_embeddings")
        seg = segments(cu, hidden_states.shape[0]) if (cu is not None and pe is not None and not args) else None
        if seg is None:
            return fallback(block, hidden_states, *args, **kwargs)
        return fused(block, hidden_states, *pe, *seg)

    return forward


def _lm_layer_forward(layer, before, after):
    """The forward a language-model layer gets inside the context: compiled graphs before and after
    the attention, and between them transformers' own cache update and attention function (eager: the
    cache update is where the layer's index matters). The cache arrives as ``cache`` (transformers >=
    5.25) or ``past_key_values`` (earlier): read under either, passed on under the layer's own name."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from vidcorpus.captioning.fast_decode import cache_kwarg, pop_cache

    attn = layer.self_attn
    original = type(layer).forward
    cache_name = cache_kwarg(original)

    def forward(hidden_states, attention_mask=None, position_ids=None, use_cache=False,
                position_embeddings=None, **kwargs):
        cache = pop_cache(kwargs)
        if position_embeddings is None or hidden_states.shape[1] == 1:  # a decoding step: nothing to fuse
            return original(layer, hidden_states, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=use_cache, position_embeddings=position_embeddings,
                            **{cache_name: cache}, **kwargs)
        q, k, v = before(layer, hidden_states, *position_embeddings)
        if cache is not None:
            k, v = cache.update(k, v, attn.layer_idx)
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation,
                                                          _transformers_fn(attn, "eager_attention_forward"))
        out, _ = interface(attn, q, k, v, attention_mask, dropout=0.0, scaling=attn.scaling,
                           sliding_window=None, position_ids=position_ids, **kwargs)
        return after(layer, hidden_states, out)

    return forward


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
        # compiled for the prefill: vision blocks (whole, when their windows are equal) and LM layers
        # (before and after the attention) get a forward of fused, compiled graphs; modules of models
        # laid out otherwise are compiled as they are (blocks; norms and MLPs)
        self.fused_blocks: list[torch.nn.Module] = []
        self.fused_layers: list[torch.nn.Module] = []
        self.targets: list[torch.nn.Module] = []
        if compile and self.vision is not None:
            blocks = list(self.vision.blocks)
            # fused blocks attend with SDPA: only where the vision tower runs on SDPA anyway
            if blocks and self.attention is not None and all(_fusable_vision_block(b) for b in blocks):
                self.fused_blocks = blocks
            else:
                self.targets += blocks
            if layers and all(_fusable_lm_layer(layer) for layer in layers):
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
            self._fused = {"block": compile_(_vision_block_segments),
                           "block_fallback": compile_(type(self.fused_blocks[0]).forward) if self.fused_blocks else None,
                           "before": compile_(_lm_before_attention), "after": compile_(_lm_after_attention)}
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
        from vidcorpus.captioning.fast_decode import _AttnSwitch

        compiled = self._compiled_calls()  # first: a failure here has changed nothing yet
        fused = self._fused_calls() if (self.fused_blocks or self.fused_layers) else {}
        undo.enter_context(_AttnSwitch(self.config, self.attention))
        embed = self.vision.patch_embed
        if _is_patch_conv(getattr(embed, "proj", None)):
            _set(undo, embed, "forward", _linear_patch_embed(embed))
        rope = getattr(self.inner, "get_rope_index", None)
        if rope is not None and self.cpu_rope:
            _set(undo, self.inner, "get_rope_index", _on_cpu(_alike_rows_once(rope)))
        if compiled or fused:
            # one code object serves many modules (Module._call_impl for every target; the fused
            # functions for every block or layer) at a few shapes each: more than dynamo's default of
            # 8 entries per code object, after which it would silently run eagerly. Raised while the
            # context is open only.
            limit = _recompile_limit_patch(64)
            if limit is not None:
                undo.enter_context(limit)
        for module, fn in zip(self.targets, compiled):
            _set(undo, module, "_compiled_call_impl", fn)
        segments = _Segments()
        for block in self.fused_blocks:
            _set(undo, block, "forward", _vision_block_forward(block, fused["block"], fused["block_fallback"], segments))
        for layer in self.fused_layers:
            _set(undo, layer, "forward", _lm_layer_forward(layer, fused["before"], fused["after"]))

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
