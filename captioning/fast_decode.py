"""Fast greedy decoding for chat VLMs: static KV cache and a CUDA-graph-captured one-token step.

transformers' default ``generate`` spends each decoding step launching a few thousand small kernels
from Python (for a 3B model about 100 ms a step where reading the weights takes under 3 ms: the GPU
mostly waits). This decoder keeps the model and its numbers and removes that overhead:

1. Prefill: the model's own ``generate`` for the first two tokens (``max_new_tokens=2``), so the
   vision tower, the processor's inputs and the model family's position rules (Qwen-VL's 3-D mrope
   positions and ``rope_deltas``, LLaVA's left-padding positions) are exactly transformers'.
   A forward pre-hook on the language model records the position ids of the one decoding step that
   run makes; positions of later steps are those plus the step count, for every family.
2. The prompt's keys and values are copied into static buffers (``[B, kv_heads, M, head_dim]`` per
   layer, ``M`` rounded up to a multiple of 64 so few shapes exist).
3. One decoding step (language model on one token, a hand-made attention mask over the static
   buffer, the LM head, min-new-tokens and repetition-penalty rules, greedy argmax, writing the
   token and advancing the position) is pure tensor work on device state, so on CUDA it is
   captured once as a CUDA graph and replayed; nothing goes back to the host between steps except
   an "all rows finished?" check every ``check_every`` steps. On the CPU the same step runs eagerly
   (tests compare its tokens with ``generate``'s). With ``compile_decode`` the step is a
   ``torch.compile``d function, compiled in the warm-up before the capture: the graph then replays
   fused kernels (at batch 512 on an H100, 659 instead of 1,805 kernels a step, 11 instead of 15.7 ms).

The two attention kernels it switches on are in ``decode_attention.py``.

Graphs are cached per (batch, buffer length, position layout); the least recently used is dropped.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import torch

from vidcorpus.captioning.decode_attention import (DECODE_ATTENTION, VARLEN_ATTENTION, AttnSwitch, cache_kwarg,
                                                  padding_lengths, penalty_skips_padding, probe_bmm_fp32,
                                                  register_attention)
from vidcorpus.captioning.fast_prefill import FastPrefill, recompile_limit_raised
from vidcorpus.captioning.oom import is_oom

try:  # subclass transformers' Cache so type checks in model code accept ours
    from transformers.cache_utils import Cache as _CacheBase
except ImportError:  # pragma: no cover
    _CacheBase = object


class StaticKV(_CacheBase):
    """Per-layer static key/value buffers written at one device-side index (graph friendly)."""

    is_compileable = True

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], index: torch.Tensor):
        # Deliberately not calling Cache.__init__: its signature differs between transformers
        # versions, and the model code only calls update() on a cache it is handed.
        self.keys, self.values, self.index = keys, values, index
        self.layers = []

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        self.keys[layer_idx].index_copy_(2, self.index, key_states)
        self.values[layer_idx].index_copy_(2, self.index, value_states)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:  # only used if position ids are missing
        raise RuntimeError("StaticKV needs explicit position ids")

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class _Slot:
    """Device state of one captured step (all tensors keep their addresses between calls)."""

    cache: StaticKV
    tok: torch.Tensor  # (B, 1) the token fed at the current step
    pos_now: torch.Tensor  # (1,) cache index of the fed token
    prompt_len: torch.Tensor  # (1,)
    min_new: torch.Tensor  # (1,)
    offset: torch.Tensor  # position ids minus cache index, e.g. (3, B, 1) for mrope or (B, 1)
    valid: torch.Tensor  # (B, M) bool: prompt mask, True for generated positions
    out: torch.Tensor  # (B, max_new) generated tokens
    seen: torch.Tensor | None  # (B, V) bool, for the repetition penalty
    eos: torch.Tensor  # (E,) the stop token ids, owned by the slot (a captured graph reads its memory)
    graph: object = None


def _language_model(model):
    inner = getattr(model, "model", None)
    lm = getattr(inner, "language_model", None)
    if lm is None and hasattr(model, "get_decoder"):
        lm = model.get_decoder()
    if lm is None:
        raise TypeError(f"{type(model).__name__}: no language model found for graph decoding")
    return lm


def supports_graph_decode(model) -> bool:
    """Decoder-only VLMs (chat templates) whose language model and LM head we can call directly."""
    if getattr(model.config, "is_encoder_decoder", False):
        return False
    try:
        lm = _language_model(model)
    except TypeError:
        return False
    types = getattr(getattr(lm, "config", None), "layer_types", None) or ["full_attention"]
    if any(t != "full_attention" for t in types):  # sliding windows would need their own masks
        return False
    return model.get_output_embeddings() is not None and hasattr(lm, "layers")


def _cache_layers(res) -> list:
    """The per-layer key/value tensors of ``generate``'s cache."""
    cache = res["cache"] if "cache" in res else res.past_key_values  # renamed in transformers 5.25
    layers = cache.layers if hasattr(cache, "layers") else None
    if layers is None:
        raise RuntimeError("graph decoding needs transformers >= 4.56 caches (past_key_values.layers)")
    return layers


def _padded_after_eos(out: torch.Tensor, eos: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Like generate: everything after a row's first EOS is padding (in place)."""
    ended = torch.isin(out, eos).long().cumsum(1)
    after = (ended - torch.isin(out, eos).long()) > 0
    out[after] = pad_id
    return out


class GraphDecoder:
    """Greedy decoding with a static KV cache; the decoding step is a CUDA graph on GPUs."""

    def __init__(self, model, use_graph: bool | None = None, max_graphs: int = 2, check_every: int = 8,
                 bucket: int = 64, fast_attention: bool = True, compile_prefill: bool = False,
                 compile_decode: bool = False, compile_backend: str = "inductor", fast_prefill: bool = True):
        if not supports_graph_decode(model):
            raise TypeError(f"{type(model).__name__} is not supported by the static-graph decoder")
        register_attention()
        self.model = model
        self.lm = _language_model(model)
        self.head = model.get_output_embeddings()
        self.cache_name = cache_kwarg(type(self.lm).forward)  # how the decoding step hands over its cache
        self.device = next(model.parameters()).device
        self.use_graph = (self.device.type == "cuda") if use_graph is None else use_graph
        self.max_graphs = max_graphs
        self.check_every = check_every
        self.bucket = bucket
        self.slots: OrderedDict[tuple, _Slot] = OrderedDict()
        self.last_stats: dict = {}
        # the decoding step through torch.compile (then captured like the eager one): fuses the ~50
        # small kernels per layer (norm upcasts, rotary, residual adds, the attention's mask and
        # softmax) that remain once launches are gone; compiled per slot shape on first use
        self.compile_decode = compile_decode
        self.compile_backend = compile_backend
        self._compiled_step = None
        # the decoding step's attention, and the vision tower's during prefill (Qwen-VL families,
        # whose vision attention takes cu_seqlens) when they run on SDPA
        self.decode_attention = DECODE_ATTENTION if fast_attention else None
        vision = getattr(model.config, "vision_config", None)
        qwen_vision = getattr(model.config, "model_type", "") in ("qwen2_vl", "qwen2_5_vl")
        self.vision_config = vision if (fast_attention and qwen_vision and vision is not None
                                        and vision._attn_implementation == "sdpa") else None
        # the prefill: packed vision attention, the patch embedding as a matmul, the rope index on the
        # CPU, optionally compiled blocks (fast_prefill.py); fast_attention=False turns all of it off,
        # compile_prefill included
        self.fast_prefill = FastPrefill(model, VARLEN_ATTENTION if self.vision_config is not None else None,
                                      compile=compile_prefill, compile_backend=compile_backend) \
            if fast_attention and fast_prefill else None

    # -- public -------------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, inputs: dict, max_new_tokens: int, min_new_tokens: int, eos_ids: list[int],
                 pad_id: int, repetition_penalty: float = 1.0, **generate_kwargs) -> torch.Tensor:
        """Generated token ids (B, n <= max_new_tokens), padded with ``pad_id`` after an EOS."""
        t0 = time.perf_counter()
        prompt_len = inputs["input_ids"].shape[1]
        first = min(2, max_new_tokens)
        res, recorded = self._prefill(inputs, first, min(min_new_tokens, first), eos_ids, pad_id, repetition_penalty,
                                      generate_kwargs)
        new = res.sequences[:, prompt_len:]
        self._sync()
        t1 = time.perf_counter()
        self.last_stats = {"prefill_s": t1 - t0, "decode_s": 0.0, "capture_s": 0.0, "steps": 0}
        eos = torch.tensor(sorted(set(eos_ids)), device=self.device)
        if new.shape[1] < max_new_tokens and (new.shape[1] < first or torch.isin(new, eos).any(1).all()):
            return new  # every row already ended (or nothing more to generate)
        if len(recorded) < 2 or recorded[1]["position_ids"] is None:
            raise RuntimeError("graph decoding: could not record the decoding step's position ids")
        pos2 = recorded[1]["position_ids"].to(self.device)  # positions of the token at cache index L
        layers = _cache_layers(res)
        slot = self._slot_for(layers, new.shape[0], prompt_len + max_new_tokens, pos2, max_new_tokens,
                              repetition_penalty, eos)
        self._load(slot, layers, inputs, res, new, pos2, min_new_tokens, pad_id)
        t2 = time.perf_counter()
        if self.use_graph and slot.graph is None:
            self._capture(slot, repetition_penalty, prompt_len, new)
        t3 = time.perf_counter()
        steps = self._run_steps(slot, max_new_tokens - 2, eos, repetition_penalty)
        out = _padded_after_eos(slot.out[:, :steps + 2].clone(), eos, pad_id)
        self._sync()
        t4 = time.perf_counter()
        self.last_stats.update(decode_s=t4 - t3, capture_s=t3 - t2, steps=steps + 1,
                               graph=slot.graph is not None)
        return out

    # -- the pieces of a call ------------------------------------------------------------------------
    def _prefill(self, inputs: dict, first: int, min_first: int, eos_ids: list[int], pad_id: int, rp: float,
                 generate_kwargs: dict):
        """The model's own ``generate`` for the first ``first`` tokens, recording the position ids of
        the language model's calls (the second is the one decoding step it makes). A compiled prefill
        that fails is switched off and the prefill done again uncompiled (an out-of-memory is raised)."""
        recorded: list[dict] = []

        def hook(_module, args, kwargs):
            recorded.append({"position_ids": kwargs.get("position_ids")})

        def prefill():
            recorded.clear()
            with self.fast_prefill or contextlib.nullcontext():
                return self.model.generate(
                    **inputs, max_new_tokens=first, min_new_tokens=min_first, do_sample=False,
                    num_beams=1, repetition_penalty=rp, return_dict_in_generate=True,
                    eos_token_id=eos_ids, pad_token_id=pad_id, **generate_kwargs)

        handle = self.lm.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            try:
                return prefill(), recorded
            except Exception as exc:  # noqa: BLE001 - a compile failure costs the compile, not this path
                if not (self.fast_prefill and self.fast_prefill.compiles) or is_oom(exc):
                    raise
                warnings.warn(f"compiled prefill failed ({exc!r}); prefilling uncompiled from now on",
                              RuntimeWarning, stacklevel=3)
                self.fast_prefill.disable_compile()
                return prefill(), recorded
        finally:
            handle.remove()

    def _slot_for(self, layers, batch: int, needed: int, pos2: torch.Tensor, max_new_tokens: int, rp: float,
                  eos: torch.Tensor) -> _Slot:
        """The cached slot (and graph) for this call's shape, or a new one; least recently used dropped."""
        length = -(-needed // self.bucket) * self.bucket
        # everything a captured step bakes in is in the key (the penalty's value is a constant of the graph)
        key = (batch, length, tuple(pos2.shape), float(rp), max_new_tokens, tuple(eos.tolist()))
        slot = self.slots.pop(key, None)
        if slot is None:
            while len(self.slots) >= self.max_graphs:
                self.slots.popitem(last=False)
            slot = self._new_slot(layers, batch, length, pos2, max_new_tokens, rp, eos)
        self.slots[key] = slot  # most recently used last
        return slot

    def _load(self, slot: _Slot, layers, inputs: dict, res, new: torch.Tensor, pos2: torch.Tensor,
              min_new_tokens: int, pad_id: int) -> None:
        """Load this call's state into the slot's fixed tensors: the prefill's KV cache, the prompt
        mask, positions, the first two tokens, and the tokens the repetition penalty has seen."""
        prompt_len = inputs["input_ids"].shape[1]
        filled = prompt_len + 1  # the prompt and token 1 are in the prefill cache
        for i, layer in enumerate(layers):
            slot.cache.keys[i][:, :, :filled].copy_(layer.keys[:, :, :filled])
            slot.cache.values[i][:, :, :filled].copy_(layer.values[:, :, :filled])
        mask = inputs.get("attention_mask")
        slot.valid.fill_(True)
        if mask is not None:
            slot.valid[:, :prompt_len].copy_(mask.to(self.device).bool())
        slot.offset.copy_(pos2 - prompt_len)
        slot.prompt_len.fill_(prompt_len)
        slot.min_new.fill_(min_new_tokens)
        slot.out.fill_(pad_id)
        slot.out[:, :2].copy_(new[:, :2])
        if slot.seen is not None:  # the tokens the penalty sees: prompt (padding left out, as generate does) and new
            ids = res.sequences.to(self.device)
            vocab = slot.seen.shape[1]
            if mask is not None and penalty_skips_padding():
                lead = padding_lengths(mask.to(self.device))
                ids = ids.masked_fill(torch.arange(ids.shape[1], device=self.device)[None] < lead[:, None], vocab)
            seen = torch.zeros((ids.shape[0], vocab + 1), dtype=torch.bool, device=self.device)
            slot.seen.copy_(seen.scatter_(1, ids, True)[:, :vocab])
        self._reset(slot, prompt_len, new)

    def _run_steps(self, slot: _Slot, steps: int, eos: torch.Tensor, rp: float) -> int:
        """Replay (or run) the step up to ``steps`` times; stops early once every row has an EOS
        (checked every ``check_every`` steps, the only host sync). Returns the steps run."""
        for s in range(steps):
            if slot.graph is not None:
                slot.graph.replay()
            else:
                self._step(slot, rp)
            if (s + 1) % self.check_every == 0 and s + 1 < steps:
                if torch.isin(slot.out[:, :s + 3], eos).any(1).all():  # one sync every check_every steps
                    return s + 1
        return steps

    # -- internals ----------------------------------------------------------------------------------
    def _sync(self) -> None:
        """Wait for this stream's work only (the captioner may be preparing the next batch on another)."""
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    def _new_slot(self, layers, batch: int, length: int, pos2: torch.Tensor, max_new: int, rp: float,
                  eos: torch.Tensor) -> _Slot:
        keys, values = [], []
        for layer in layers:
            k, v = layer.keys, layer.values
            keys.append(torch.zeros((batch, k.shape[1], length, k.shape[3]), dtype=k.dtype, device=self.device))
            values.append(torch.zeros((batch, v.shape[1], length, v.shape[3]), dtype=v.dtype, device=self.device))
        index = torch.zeros(1, dtype=torch.long, device=self.device)
        vocab = self.head.weight.shape[0]
        return _Slot(
            cache=StaticKV(keys, values, index),
            tok=torch.zeros((batch, 1), dtype=torch.long, device=self.device),
            pos_now=index,  # the cache writes where the fed token sits
            prompt_len=torch.zeros(1, dtype=torch.long, device=self.device),
            min_new=torch.zeros(1, dtype=torch.long, device=self.device),
            offset=torch.zeros_like(pos2, dtype=torch.long),
            valid=torch.ones((batch, length), dtype=torch.bool, device=self.device),
            out=torch.zeros((batch, max_new), dtype=torch.long, device=self.device),
            seen=torch.zeros((batch, vocab), dtype=torch.bool, device=self.device) if rp != 1.0 else None,
            eos=eos.clone(),
        )

    @staticmethod
    def _reset(slot: _Slot, prompt_len: int, new: torch.Tensor) -> None:
        slot.tok.copy_(new[:, 1:2])
        slot.pos_now.fill_(prompt_len + 1)  # token 2 goes to cache index L + 1

    def _step(self, slot: _Slot, rp: float) -> None:
        """One decoding step, device work only: feed slot.tok at slot.pos_now, write the next token.

        A captured graph replays with the memory of every tensor it read at capture: so the step reads
        only the slot's own tensors and the model's weights, never a tensor made per call."""
        with AttnSwitch(self.lm.config, self.decode_attention):
            if not self.compile_decode:
                return self._step_core(slot, rp)
            probe_bmm_fp32(self.device)  # eagerly, before tracing: the compiled step reads the answer
            limit = recompile_limit_raised(64)  # penalties and shapes of a long job; only around this call
            try:
                if self._compiled_step is None:
                    # automatic dynamic shapes: the first slot shape (a job's full batch) compiles as it
                    # is; the first other shape (a last, smaller batch; the short captions' length)
                    # compiles once more with its sizes symbolic, and serves every later shape
                    self._compiled_step = torch.compile(self._step_core, backend=self.compile_backend)
                with limit if limit is not None else contextlib.nullcontext():
                    return self._compiled_step(slot, rp)
            except torch._dynamo.exc.TorchDynamoException as exc:
                # compiling failed (before the step ran; an error while it runs is raised, and the
                # captioner falls back to generate for the batch). Never inside a capture, which the
                # failed attempt has already spoiled.
                if self.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                    raise
                warnings.warn(f"compiled decoding step failed ({exc!r}); decoding uncompiled from now on",
                              RuntimeWarning, stacklevel=2)
                self.compile_decode, self._compiled_step = False, None
                return self._step_core(slot, rp)

    def _step_core(self, slot: _Slot, rp: float) -> None:
        eos = slot.eos
        length = slot.valid.shape[1]
        arange = torch.arange(length, device=self.device)
        mask = (slot.valid & (arange <= slot.pos_now)).view(slot.valid.shape[0], 1, 1, length)
        # a 4-D mask is used as given by transformers' mask preparation (no mask built per step)
        hidden = self.lm(input_ids=slot.tok, attention_mask=mask,
                         position_ids=slot.offset + slot.pos_now, use_cache=True,
                         **{self.cache_name: slot.cache}).last_hidden_state
        logits = self.head(hidden[:, -1, :]).float()
        if slot.seen is not None:  # transformers' RepetitionPenaltyLogitsProcessor, over prompt + output
            penalised = torch.where(logits < 0, logits * rp, logits / rp)
            logits = torch.where(slot.seen, penalised, logits)
        n_done = slot.pos_now - slot.prompt_len + 1  # tokens generated before this one
        suppress = (n_done < slot.min_new).view(1, 1)
        eos_cols = logits[:, eos]
        logits = logits.index_copy(1, eos, torch.where(suppress, torch.full_like(eos_cols, float("-inf")), eos_cols))
        nxt = logits.argmax(-1)
        slot.out.index_copy_(1, n_done, nxt.view(-1, 1))
        if slot.seen is not None:
            slot.seen.scatter_(1, nxt.view(-1, 1), True)
        slot.tok.copy_(nxt.view(-1, 1))
        slot.pos_now.add_(1)

    def _capture(self, slot: _Slot, rp: float, prompt_len: int, new: torch.Tensor) -> None:
        saved_seen = slot.seen.clone() if slot.seen is not None else None
        saved_out = slot.out.clone()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up: lazy kernels, cuBLAS workspaces
                self._step(slot, rp)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # warm-up advanced the state: put it back (the KV written past the prompt is masked until
        # it is overwritten by the real step at that index)
        self._reset(slot, prompt_len, new)
        # thread_local: the captioner prepares the next batch's inputs in another thread meanwhile (its
        # CUDA calls are not part of this capture and must not invalidate it)
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._step(slot, rp)
        # capture records without running; make sure the state is the call's starting state
        self._reset(slot, prompt_len, new)
        slot.out.copy_(saved_out)
        if saved_seen is not None:
            slot.seen.copy_(saved_seen)
        slot.graph = graph
