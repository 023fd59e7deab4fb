"""The prefill's fused, compiled forms of Qwen-VL vision blocks and language-model layers.

``FastPrefill`` (``fast_prefill.py``) compiles these functions once and gives each block or layer
a forward that calls them: a vision block whose attention windows are equal runs as one graph
(windows batched into one SDPA call, the gated MLP as one aligned product), and a language-model
layer as graphs before and after its attention, transformers' own cache update and attention
between. Apart from the context manager because these are the maths (checked against the
modules they replace), and it is the switching on and off.
"""

from __future__ import annotations

import inspect
import sys

import torch

from vidcorpus.captioning.decode_attention import cache_kwarg, pop_cache, uniform_segments


def _transformers_fn(module: torch.nn.Module, name: str):
    """A function of the transformers modeling file that defines ``module``'s class (the model's own
    rotary maths, say), or None."""
    return getattr(sys.modules.get(type(module).__module__), name, None)


def gated_mlp_aligned(mlp, x: torch.Tensor) -> torch.Tensor:
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


ALIGNED_VISION_MLP = True  # the vision MLP through gated_mlp_aligned inside fused blocks


def vision_block_segments(block, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n: int,
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
        return hidden + gated_mlp_aligned(block.mlp, block.norm2(hidden))
    return hidden + block.mlp(block.norm2(hidden))


def lm_before_attention(layer, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """A Qwen-VL decoder layer up to its attention: input norm, q/k/v projections, rotary (the model's
    own function). Nothing here depends on the layer's index, so one compiled graph serves all layers."""
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    b, s, _ = x.shape

    def heads(t):
        return t.view(b, s, -1, attn.head_dim).transpose(1, 2)

    q, k = _transformers_fn(attn, "apply_rotary_pos_emb")(heads(attn.q_proj(x)), heads(attn.k_proj(x)), cos, sin)
    return q, k, heads(attn.v_proj(x))


def lm_after_attention(layer, residual: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    """The rest of the decoder layer: output projection, residual, norm, MLP, residual."""
    b, s, _ = residual.shape
    hidden = residual + layer.self_attn.o_proj(attn_out.reshape(b, s, -1))
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))


def _has(obj, *names: str) -> bool:
    return all(hasattr(obj, n) for n in names)


def fusable_vision_block(block) -> bool:
    return (_has(block, "norm1", "norm2", "attn", "mlp") and _has(block.attn, "qkv", "proj", "num_heads", "scaling")
            and _transformers_fn(block.attn, "apply_rotary_pos_emb_vision") is not None)


def fusable_lm_layer(layer) -> bool:
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
    try:
        return text in inspect.getsource(fn)
    except (OSError, TypeError):
        return False


class Segments:
    """(n, length) of a ``cu_seqlens`` tensor cut into equal back-to-back segments, or None; answered
    once per tensor object (the vision tower passes the same two tensors to all its blocks), since
    reading a GPU tensor waits for the GPU."""

    def __init__(self):
        self.seen: list[tuple[torch.Tensor, tuple[int, int] | None]] = []

    def __call__(self, cu: torch.Tensor, total: int) -> tuple[int, int] | None:
        for tensor, answer in self.seen:
            if tensor is cu:
                return answer
        answer = uniform_segments(cu, total)
        self.seen = (self.seen + [(cu, answer)])[-4:]
        return answer


def vision_block_forward(block, fused, fallback, segments: Segments):
    """The forward a vision block gets inside the context: the fused, compiled block when its attention
    windows are equal (every 224 px frame's), else the block's own forward through ``fallback``."""

    def forward(hidden_states, *args, **kwargs):
        cu, pe = kwargs.get("cu_seqlens"), kwargs.get("position_embeddings")
        seg = segments(cu, hidden_states.shape[0]) if (cu is not None and pe is not None and not args) else None
        if seg is None:
            return fallback(block, hidden_states, *args, **kwargs)
        return fused(block, hidden_states, *pe, *seg)

    return forward


def lm_layer_forward(layer, before, after):
    """The forward a language-model layer gets inside the context: compiled graphs before and after
    the attention, and between them transformers' own cache update and attention function (eager: the
    cache update is where the layer's index matters). The cache arrives as ``cache`` (transformers >=
    5.25) or ``past_key_values`` (earlier): read under either, passed on under the layer's own name."""
    # inside: transformers (seconds) loads after load_captioner has checked the weights (it fails fast first)
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

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
