"""The attention kernels of the fast captioning path, and the transformers plumbing they need.

Two attention kernels make the captured step and the prefill cheap without changing the maths:

- ``gqa_decode_attention`` (decoding steps): grouped-query attention as one batched matmul per KV
  head group, so each step reads the KV cache once; transformers' SDPA path with a padding mask
  first copies K and V once per query head (``repeat_kv``: 8x the bytes for Qwen2.5-VL-3B).
- ``varlen_sdpa`` (the vision tower, during this path's prefill only): Qwen-VL vision attention
  without flash-attn runs one SDPA call per window and frame from a Python loop (about 450 calls
  per clip and forward for 8 frames at 224 px); this gathers the windows of equal length into one
  batched SDPA call. It is registered under a name containing "flash" because that is what makes
  the vision code pass ``cu_seqlens`` instead of looping.

Apart from ``fast_decode.py`` (the decoder) and ``fast_prefill.py`` (the prefill forms) because
both register and switch these kernels, and the probes (``captioning/fast_decode_check.py``) read the helpers.
"""

from __future__ import annotations

import functools
import inspect

import torch


DECODE_ATTENTION = "vidcorpus_gqa_decode"
VARLEN_ATTENTION = "vidcorpus_flash_varlen_sdpa"  # "flash" in the name: see the module docstring


def _sdpa(*args, **kwargs):
    # inside: transformers (seconds) loads after load_captioner has checked the weights (it fails fast first)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(*args, **kwargs)


def gqa_decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                         is_causal=None, **kwargs):
    """One-token attention over a static cache, KV heads read once. query (B, H, 1, D); key/value
    (B, KVH, M, D); attention_mask (B, 1, 1, M) bool (True: attend). Returns (B, 1, H, D)."""
    b, h, q, d = query.shape
    kvh = key.shape[1]
    if q != 1 or attention_mask is None or attention_mask.dtype != torch.bool or h % kvh:
        return _sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                     is_causal=is_causal, **kwargs)
    scale = scaling if scaling is not None else d ** -0.5
    grouped = query.reshape(b, kvh, h // kvh, d)  # query head j uses KV head j // (h // kvh), as repeat_kv
    scores = _scores_fp32(grouped, key) * scale  # (B, KVH, G, M), float32 like SDPA kernels keep them
    scores = scores.masked_fill(~attention_mask[:, :, 0, :].unsqueeze(2), float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.matmul(probs, value)  # (B, KVH, G, D)
    return out.reshape(b, h, 1, d).transpose(1, 2).contiguous(), None


_BMM_FP32_OUT: bool | None = None  # torch.bmm(out_dtype=float32) on this device: probed once


def probe_bmm_fp32(device: torch.device) -> None:
    """Answer "does torch.bmm take out_dtype=float32 for bf16 inputs here?" once, eagerly (a compiled
    step must not trace the try/except of the probe)."""
    if _BMM_FP32_OUT is None and device.type == "cuda":
        x = torch.zeros((1, 1, 8), dtype=torch.bfloat16, device=device)
        _scores_fp32(x.view(1, 1, 1, 8), x.view(1, 1, 1, 8))


def _scores_fp32(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q @ k^T with float32 output from bf16/fp16 inputs without upcasting K (that would double the
    bytes read); the first call (a warm-up step, never inside a graph capture) probes support."""
    global _BMM_FP32_OUT
    b, kvh, g, d = q.shape

    def bmm_fp32():
        return torch.bmm(q.reshape(b * kvh, g, d), k.reshape(b * kvh, -1, d).transpose(1, 2),
                         out_dtype=torch.float32).view(b, kvh, g, -1)

    if q.dtype in (torch.bfloat16, torch.float16) and q.is_cuda:
        if _BMM_FP32_OUT:  # known to work (the only branch a compiled step traces, after probe_bmm_fp32)
            return bmm_fp32()
        if _BMM_FP32_OUT is None:
            try:
                out = bmm_fp32()
                _BMM_FP32_OUT = True
                return out
            except (TypeError, RuntimeError, NotImplementedError):
                _BMM_FP32_OUT = False
    return torch.matmul(q, k.transpose(-1, -2)).float()


def varlen_sdpa(module, query, key, value, attention_mask=None, dropout: float = 0.0, scaling=None,
                is_causal=None, cu_seq_lens_q=None, cu_seq_lens_k=None, **kwargs):
    """Packed variable-length attention (what flash-attn's varlen kernel does) with torch's SDPA:
    segments of equal length go through one batched call. query/key/value (1, H, S, D)."""
    kwargs.pop("max_length_q", None), kwargs.pop("max_length_k", None)
    if cu_seq_lens_q is None or query.shape[0] != 1 or (
            cu_seq_lens_k is not None and not torch.equal(cu_seq_lens_q, cu_seq_lens_k)):
        return _sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                     is_causal=is_causal, **kwargs)
    cu = cu_seq_lens_q.to(query.device)
    starts, lengths = cu[:-1], cu[1:] - cu[:-1]
    q0, k0, v0 = query[0], key[0], value[0]
    uniform = uniform_segments(cu, q0.shape[1])
    if uniform:  # back-to-back segments of one length (every window of a 224 px frame): views, no copies
        n, length = uniform

        def split(t):  # (H, S, D) -> (n, H, length, D), a view
            return t.view(t.shape[0], n, length, t.shape[2]).transpose(0, 1)

        o = torch.nn.functional.scaled_dot_product_attention(
            split(q0), split(k0), split(v0), dropout_p=0.0, is_causal=bool(is_causal), scale=scaling)
        return o.transpose(1, 2).reshape(1, -1, o.shape[1], o.shape[3]), None  # (1, S, H, D)
    out = torch.empty_like(query[0])  # (H, S, D)
    for length in torch.unique(lengths).tolist():
        if length == 0:
            continue
        seg = starts[lengths == length]
        idx = (seg[:, None] + torch.arange(length, device=query.device)).reshape(-1)
        n = seg.numel()

        def gather(t):  # (H, S, D) -> (n, H, length, D)
            return t.index_select(1, idx).view(t.shape[0], n, length, t.shape[2]).transpose(0, 1)

        o = torch.nn.functional.scaled_dot_product_attention(
            gather(q0), gather(k0), gather(v0), dropout_p=0.0, is_causal=bool(is_causal), scale=scaling)
        out.index_copy_(1, idx, o.transpose(0, 1).reshape(out.shape[0], -1, out.shape[2]))
    return out.unsqueeze(0).transpose(1, 2).contiguous(), None


def uniform_segments(cu: torch.Tensor, total: int) -> tuple[int, int] | None:
    """(n, length) when the cumulative lengths ``cu`` cut [0, total) into n segments of one length."""
    n = cu.numel() - 1
    if n < 1 or total % n:
        return None
    length = total // n
    expected = torch.arange(0, total + 1, length, device=cu.device, dtype=cu.dtype)
    return (n, length) if length > 0 and torch.equal(cu, expected) else None


def cache_kwarg(forward) -> str:
    """The name under which ``forward`` (a transformers layer or model forward) takes its KV cache:
    ``cache`` from transformers 5.25 on, ``past_key_values`` before (5.25 still accepts the old name
    with a deprecation warning on every call, and a layer called by the old name inside a model that
    passes the new one would get no cache at all)."""
    try:
        params = inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


@functools.cache
def penalty_skips_padding() -> bool:
    """Whether the installed ``generate`` leaves each row's left padding out of the repetition penalty
    (transformers 5 passes ``prompt_ignore_length`` = the padding lengths); the static path and the
    probe do as it does."""

    # inside: transformers (seconds) loads after load_captioner has checked the weights (it fails fast first)
    from transformers.generation.utils import GenerationMixin

    try:
        return "prompt_ignore_length=padding_lengths" in inspect.getsource(GenerationMixin._get_logits_processor)
    except (OSError, TypeError, AttributeError):
        return False


def padding_lengths(mask: torch.Tensor) -> torch.Tensor:
    """Leading padding of each left-padded row (what generate computes for the penalty)."""
    return (mask != 0).int().argmax(dim=1)


def pop_cache(kwargs: dict):
    """Remove the KV cache from forward keyword arguments under either of its names and return it."""
    cache, legacy = kwargs.pop("cache", None), kwargs.pop("past_key_values", None)
    return cache if cache is not None else legacy


def register_attention() -> None:
    # inside: transformers (seconds) loads after load_captioner has checked the weights (it fails fast first)
    from transformers import AttentionInterface

    AttentionInterface.register(DECODE_ATTENTION, gqa_decode_attention)
    AttentionInterface.register(VARLEN_ATTENTION, varlen_sdpa)


class AttnSwitch:
    """Use another registered attention implementation on one (sub)config for a while."""

    def __init__(self, config, name: str | None):
        self.config, self.name, self.old = config, name, None

    def __enter__(self):
        if self.config is not None and self.name:
            self.old = self.config._attn_implementation
            self.config._attn_implementation = self.name
        return self

    def __exit__(self, *exc):
        if self.config is not None and self.name:
            self.config._attn_implementation = self.old
        return False
