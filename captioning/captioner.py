"""Captioning models: one loader for any image-text-to-text captioner, and batched generation.

Production names a chat-template VLM (Qwen2.5-VL) that sees the clip's frames as a video; the tiny
preset's captioners (captioning/tiny_models.py) are saved with ``save_pretrained``. All load through
``load_captioner`` (Auto classes), so tests and the demo exercise the production code path. Prompts
are in captioning/prompts.py.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vidcorpus.captioning.caption_inputs import CaptionInputs
from vidcorpus.captioning.oom import is_oom
from vidcorpus.captioning.fast_decode_check import check_tokens
from vidcorpus.captioning.prompts import Prompt, PromptKind, get_prompt
from vidcorpus.captioning.shared_vision import SharedVision
from vidcorpus.fast_paths import switch_off, usable
from vidcorpus.model_files import require_hf_model


@dataclass
class Generation:
    text: str
    n_tokens: int  # new tokens generated (before decoding); == max_new_tokens means it was cut off
    decode: str = "default"  # the decoding path that produced it (see Captioner.decode)
    token_ids: tuple[int, ...] = ()  # the generated ids as returned (padding after the end included)


# Batches from this size up prepare the next batch's inputs in a thread. Measured on an H100 (3B VLM,
# 8 frames of 224 px): 6-7% more clips/s at batch 256 to 1024, where a batch's inputs take 0.2-1 s;
# at batch 1 to 64 the thread costs more than it hides (the main thread is busy launching kernels).
PREFETCH_MIN_BATCH = 128


class Captioner(CaptionInputs):
    """A loaded captioning model with batched, greedy (deterministic) generation."""

    def __init__(self, model, processor, name: str, device: torch.device, dtype: torch.dtype,
                 batch_size: int = 8, min_new_tokens: int = 4, prompt_version: str = "p1",
                 decode: str = "static_graph", repetition_penalty: float = 1.0, max_pixels: int | None = None,
                 compile_prefill: bool | None = None, compile_decode: bool | None = None, probe_rows: int = 4,
                 prefetch_min_batch: int = PREFETCH_MIN_BATCH, pad_batches: bool = False, pad_shapes: int = 1):
        """``pad_batches``: a short batch of videos is filled with copies of its last clip (their
        captions dropped) up to the smallest of ``pad_shapes`` batch shapes that holds it: the batch size
        and its halvings (``padded_size``). So a job sees a few shapes, all compiled at its warm-up, and
        never stops for a compile of a new one (25 to 99 s each on an H100); with one shape, a short
        batch costs a whole one (44 s for a batch of 512 of the job's 3B captioner, however few of its
        clips are real). Off by default: the caption stage turns it on where shapes compile
        (``captioning.pad_batches``, ``captioning.pad_shapes``).
        ``decode``: "default" (transformers' ``generate``) or "static_graph" (static KV cache and a
        CUDA-graph decoding step, captioning/fast_decode.py; same greedy tokens, several times the
        throughput on GPUs). Models it does not support (BLIP) use ``generate`` either way.
        ``max_pixels``: frames larger than this are downscaled (aspect kept) before the processor,
        which then resizes to the model's own grid (patch multiples, its pixel limits).
        ``compile_prefill``: on the static_graph path, ``torch.compile`` the Qwen-VL vision blocks and
        the language model's layers for the prefill (captioning/fast_prefill.py; compiles per batch shape,
        then a faster prefill); None: on GPUs only. ``compile_decode``: likewise, ``torch.compile`` the
        decoding step before it is captured as a CUDA graph (fast_decode.py; about a minute of compile
        for a 3B model at the first batch shape and once more, shape-generic, at the first other one;
        then about 30% faster steps); None: on GPUs only. ``probe_rows``: the first static-graph batch
        is checked on this many rows against the model's own choices (captioning/fast_decode_check.py); a
        disagreement switches the static path off for this captioner (0: no check)."""
        if decode not in ("default", "static_graph"):
            raise ValueError(f"captioning decode must be 'default' or 'static_graph', not {decode!r}")
        self.decode = decode
        self.repetition_penalty = repetition_penalty
        self.max_pixels = max_pixels
        self.compile_prefill = device.type == "cuda" if compile_prefill is None else compile_prefill
        self.compile_decode = device.type == "cuda" if compile_decode is None else compile_decode
        self.pad_batches = bool(pad_batches)
        self.pad_shapes = max(1, int(pad_shapes))
        self._share_vision: bool | None = None  # decided on first use (fast_paths.usable)
        self.shared_vision = {"hits": 0, "runs": 0}  # vision-tower passes shared between kinds (generate_kinds)
        self._graph = None
        self.probe_rows = probe_rows
        self._probed = probe_rows <= 0  # the static path's first batch is checked once
        self._gpu_preprocess = True
        self._processor_lock = threading.Lock()
        self._prefetch_stream = None  # the prefetch thread's CUDA stream (made on first use)
        # prepare the next batch's inputs in a thread while one generates (_generate_group): on GPUs,
        # where generating leaves the CPU waiting; on CPUs both would fight over the same cores
        self.prefetch = device.type == "cuda"
        self.prefetch_min_batch = prefetch_min_batch
        self.model = model
        self.processor = processor
        self.name = name
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.min_new_tokens = min_new_tokens
        self.prompt_version = prompt_version
        self.chat = getattr(processor, "chat_template", None) is not None
        self.tokenizer = getattr(processor, "tokenizer", processor)
        if self.chat:
            self.tokenizer.padding_side = "left"  # decoder-only batches must end at the prompt

    @property
    def input_mode(self) -> str:
        """How frames reach the model: 'video' (chat VLMs with a video processor), 'multi_image'
        (chat VLMs without one, LLaVA-style: one image entry per frame) or 'middle_frame' (image
        captioners such as BLIP)."""
        if not self.chat:
            return "middle_frame"
        return "video" if getattr(self.processor, "video_processor", None) is not None else "multi_image"

    def caption(self, frames_per_clip: list[np.ndarray], prompt_kind: PromptKind, max_new_tokens: int,
                prompt_version: str | None = None) -> list[str]:
        return [g.text for g in self.generate(frames_per_clip, prompt_kind, max_new_tokens, prompt_version)]

    def generate(self, frames_per_clip: list[np.ndarray], prompt_kind: PromptKind, max_new_tokens: int,
                 prompt_version: str | None = None, pad: bool | None = None) -> list[Generation]:
        """Caption clips in batches of ``batch_size``; on CUDA OOM halve the batch and retry.

        A one-frame input is an image: chat VLMs get it as an image (with the prompt's image wording)
        in batches of images; videos go in batches of videos; results come back in input order.
        ``pad``: fill a short batch of videos up to its padding shape (default: ``pad_batches``).
        """
        prompt = get_prompt(prompt_version or self.prompt_version, prompt_kind)
        pad = self.pad_batches if pad is None else pad
        if not self.chat:
            return self._generate_group(frames_per_clip, prompt, max_new_tokens, False, pad)
        out: list[Generation | None] = [None] * len(frames_per_clip)
        for idx, as_image in self._media_groups(frames_per_clip):
            gens = self._generate_group([frames_per_clip[i] for i in idx], prompt, max_new_tokens, as_image, pad)
            for i, g in zip(idx, gens):
                out[i] = g
        return out  # type: ignore[return-value]

    def generate_kinds(self, frames_per_clip: list[np.ndarray], limits: dict[PromptKind, int],
                       prompt_version: str | None = None) -> dict[PromptKind, list[Generation]]:
        """Every kind's captions of the same clips (``limits``: kind -> max new tokens), a batch at a
        time: the kinds of one batch share its vision-tower pass (captioning/shared_vision.py)."""
        n = len(frames_per_clip)
        out: dict = {kind: [None] * n for kind in limits}
        # chat VLMs caption images and videos in batches of their own (generate): group first, so that
        # every batch generate makes is one whose kinds share a pass
        groups = [idx for idx, _as_image in self._media_groups(frames_per_clip)] if self.chat else [list(range(n))]
        if self._share_vision is None:
            self._share_vision = self.chat and usable("shared_vision")
        for idx in groups:
            start = 0
            while start < len(idx):
                part = idx[start:start + max(1, self.batch_size)]  # (a batch halved on OOM stays halved)
                chunk = [frames_per_clip[i] for i in part]
                with SharedVision(self.model) if self._share_vision else contextlib.nullcontext() as shared:
                    for kind, limit in limits.items():
                        for i, gen in zip(part, self.generate(chunk, kind, limit, prompt_version)):
                            out[kind][i] = gen
                if shared is not None:
                    self.shared_vision["hits"] += shared.hits
                    self.shared_vision["runs"] += shared.runs
                start += len(part)
        return out

    @staticmethod
    def _media_groups(frames_per_clip: list[np.ndarray]) -> list[tuple[list[int], bool]]:
        """(indices, as_image): the videos, then the images (one-frame inputs), each in input order."""
        images = [i for i, f in enumerate(frames_per_clip) if len(f) == 1]
        videos = [i for i, f in enumerate(frames_per_clip) if len(f) != 1]
        return [(videos, False), (images, True)]

    def pad_sizes(self, batch_size: int | None = None) -> list[int]:
        """The batch shapes a padded batch takes, largest first: the batch size and its halvings."""
        sizes = [max(1, batch_size or self.batch_size)]
        # not down to 1: torch.compile specialises a dimension of size 1, so a warm-up at 1 would not
        # compile the shape-generic graph that serves the shapes between
        while len(sizes) < self.pad_shapes and sizes[-1] // 2 >= 2:
            sizes.append(sizes[-1] // 2)
        return sizes

    def padded_size(self, n: int, batch_size: int) -> int:
        """The smallest padding shape that holds ``n`` clips (``batch_size`` itself for n above it)."""
        return min((s for s in self.pad_sizes(batch_size) if s >= n), default=batch_size)

    def _padded(self, chunk: list[np.ndarray], size: int, pad: bool) -> list[np.ndarray]:
        """``chunk`` filled up to its padding shape (at most ``size``) with its last clip when ``pad``,
        else as it is."""
        if not pad or not chunk or len(chunk) >= size:
            return chunk
        return chunk + [chunk[-1]] * (self.padded_size(len(chunk), size) - len(chunk))

    def _generate_group(self, frames_per_clip: list[np.ndarray], prompt: Prompt, max_new_tokens: int,
                        as_image: bool, pad: bool = False) -> list[Generation]:
        """Batches of ``batch_size``; while one generates, a thread prepares the next one's inputs (chat
        templates, tokens, frames to the device: 0.4 to 0.7 s at batch 512, otherwise spent with the
        GPU idle)."""
        out: list[Generation] = []
        pad = pad and not as_image  # a job's images are few: padding each of their batches would cost a batch
        i, bs, n = 0, max(1, self.batch_size), len(frames_per_clip)
        pending = None  # future of the next batch's inputs: always the chunk after this one, at this size
        pool = (ThreadPoolExecutor(1, thread_name_prefix="caption-inputs")
                if self.prefetch and n > bs and bs >= self.prefetch_min_batch else None)
        try:
            while i < n:
                chunk = frames_per_clip[i:i + bs]
                real = len(chunk)
                chunk = self._padded(chunk, bs, pad)
                try:
                    inputs = self._take_prepared(pending) if pending is not None else None
                    pending = None
                    if inputs is None:
                        inputs = self._device_inputs(chunk, prompt, as_image)
                    nxt = i + real
                    if pool is not None and nxt < n and bs >= self.prefetch_min_batch:
                        pending = pool.submit(self._prepare, self._padded(frames_per_clip[nxt:nxt + bs], bs, pad), prompt,
                                              as_image)
                    out.extend(self._generate_batch(chunk, prompt, max_new_tokens, as_image, inputs=inputs)[:real])
                except Exception as exc:  # noqa: BLE001 - only OOM is retried, anything else re-raised
                    if not is_oom(exc) or bs == 1:
                        raise
                    if pending is not None:  # prepared for the old size: wait, drop, free
                        pending.cancel()
                        with contextlib.suppress(Exception):
                            pending.result()
                        pending = None
                    if self._graph:  # captured graphs and their static buffers hold memory: drop them
                        self._graph.slots.clear()
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    # halve until the next attempt is smaller than the one that failed (a padded batch
                    # keeps its pad shape while that still holds the clips)
                    failed, bs = len(chunk), max(1, bs // 2)
                    while bs > 1 and len(self._padded(frames_per_clip[i:i + bs], bs, pad)) >= failed:
                        bs = max(1, bs // 2)
                    self.batch_size = bs  # remember: the next call starts at the size that fits
                    continue
                i += real
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        return out

    def generation_settings(self, max_new_tokens: int) -> dict:
        return {"do_sample": False, "num_beams": 1, "max_new_tokens": max_new_tokens,
                "min_new_tokens": min(self.min_new_tokens, max_new_tokens),
                "repetition_penalty": self.repetition_penalty}

    @property
    def graph_decoder(self):
        """The static-graph decoder, when ``decode`` asks for it and the model supports it."""
        if self.decode != "static_graph" or not self.chat:
            return None
        if self._graph is None:
            # inside: fast_decode imports transformers (load_captioner checks the weights before that slow import)
            from vidcorpus.captioning.fast_decode import GraphDecoder, supports_graph_decode

            self._graph = False
            # each fast form only with the library versions it was tested with (vidcorpus/fast_paths.py)
            if supports_graph_decode(self.model) and usable("static_graph"):
                prefill = usable("fast_prefill")
                self._graph = GraphDecoder(self.model, fast_prefill=prefill, compile_prefill=self.compile_prefill and prefill,
                                           compile_decode=self.compile_decode and usable("compile_decode"))
        return self._graph or None

    @torch.inference_mode()
    def _generate_batch(self, chunk: list[np.ndarray], prompt: Prompt, max_new_tokens: int,
                        as_image: bool = False, inputs: dict | None = None) -> list[Generation]:
        if inputs is None:
            inputs = self._device_inputs(chunk, prompt, as_image)
        settings = self.generation_settings(max_new_tokens)
        kwargs: dict = dict(settings)
        if not self.chat:
            # BLIP drops the prompt's last token ([SEP]) and returns the rest of the prompt first.
            prompt_len = inputs["input_ids"].shape[1] - 1
            eos = self.model.config.text_config.sep_token_id
            kwargs["suppress_tokens"] = [t for t in self.tokenizer.all_special_ids if t != eos]
        else:
            prompt_len = inputs["input_ids"].shape[1]
        decoder, decode, new = self.graph_decoder, "default", None
        if decoder is not None:
            stop_ids = sorted(self._eos_ids())
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else stop_ids[0]
            try:
                new = decoder.generate(inputs, max_new_tokens, settings["min_new_tokens"], stop_ids, pad,
                                       repetition_penalty=self.repetition_penalty)
                decode = "static_graph"
                if not self._probed:
                    agrees = self._probe_agrees(chunk, prompt, as_image, new, stop_ids, settings["min_new_tokens"])
                    self._probed = True  # (after the probe ran: an OOM in it retries at the smaller batch)
                    if not agrees:
                        new, decode = None, "default"  # this batch too comes from the reference path
            except Exception as exc:  # noqa: BLE001 - OOM goes to the batch back-off; else fall back
                if is_oom(exc):
                    raise

                warnings.warn(f"static_graph decoding failed ({exc!r}); using transformers' generate from now on",
                              RuntimeWarning, stacklevel=2)
                self._graph = False
        if new is None:
            ids = self.model.generate(**inputs, **kwargs)
            new = ids[:, prompt_len:]
        stop = self._stop_ids()
        counts = [int(_count_until_stop(row.tolist(), stop)) for row in new]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [Generation(text=t.strip(), n_tokens=n, decode=decode, token_ids=tuple(row.tolist()))
                for t, n, row in zip(texts, counts, new)]

    def _probe_agrees(self, chunk: list[np.ndarray], prompt: Prompt, as_image: bool, new: torch.Tensor,
                      eos_ids: list[int], min_new_tokens: int) -> bool:
        """Check the static path's tokens for the batch's first rows against the model's own choices
        (captioning/fast_decode_check.py); on a disagreement (or a probe that cannot run) switch the path off."""
        rows = min(self.probe_rows, len(chunk))
        try:
            inputs = self._device_inputs(chunk[:rows], prompt, as_image)
            result = check_tokens(self.model, inputs, new[:rows], eos_ids, self._stop_ids(), min_new_tokens,
                                  self.repetition_penalty)
        except Exception as exc:  # noqa: BLE001 - an unverifiable fast path is not trusted
            if is_oom(exc):
                raise
            switch_off("static_graph", f"its probe could not run ({type(exc).__name__}: {exc})")
            self._graph = False
            return False
        if result.agrees():
            return True
        switch_off("static_graph", f"on the job's first batch {result.describe()}")
        self._graph = False
        return False

    def _eos_ids(self) -> set[int]:
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return {int(eos)} if isinstance(eos, int) else {int(e) for e in eos}

    def _stop_ids(self) -> set[int]:
        stop: set[int] = set()
        gen = getattr(self.model, "generation_config", None)
        for source in (getattr(gen, "eos_token_id", None), getattr(gen, "pad_token_id", None)):
            if isinstance(source, int):
                stop.add(source)
            elif isinstance(source, (list, tuple)):
                stop.update(int(s) for s in source)
        if not self.chat:
            text_cfg = self.model.config.text_config
            stop.update({text_cfg.sep_token_id, text_cfg.pad_token_id})
        if self.tokenizer.pad_token_id is not None:
            stop.add(self.tokenizer.pad_token_id)
        return stop


def _count_until_stop(ids: list[int], stop: set[int]) -> int:
    for n, t in enumerate(ids):
        if t in stop:
            return n
    return len(ids)


def _auto_model_class():
    # inside: transformers (seconds) loads after load_captioner has checked the weights (it fails fast first)
    import transformers

    cls = getattr(transformers, "AutoModelForImageTextToText", None)  # transformers >= 4.50, 5.x
    return cls if cls is not None else transformers.AutoModelForVision2Seq


def load_captioner(name_or_dir: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                   batch_size: int = 8, min_new_tokens: int = 4, prompt_version: str = "p1",
                   decode: str = "static_graph", repetition_penalty: float = 1.0,
                   max_pixels: int | None = None, compile_prefill: bool | None = None,
                   compile_decode: bool | None = None, probe_rows: int = 4,
                   prefetch_min_batch: int = PREFETCH_MIN_BATCH, pad_batches: bool = False,
                   pad_shapes: int = 1) -> Captioner:
    """Load any image-text-to-text captioner (hub id or local dir) the same way; fail fast if missing."""
    path = require_hf_model(name_or_dir, "captioner")  # before transformers' slow imports: fail fast
    # inside: transformers (seconds) loads after load_captioner has checked the weights (it fails fast first)
    from transformers import AutoProcessor

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    processor = AutoProcessor.from_pretrained(path)
    cls = _auto_model_class()
    try:
        model = cls.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    except (ValueError, ImportError):  # architectures without SDPA support (BLIP): their default
        model = cls.from_pretrained(path, dtype=dtype)
    model.to(device).eval()
    name = Path(name_or_dir).name if Path(name_or_dir).is_dir() else name_or_dir
    return Captioner(model, processor, name, device, dtype, batch_size=batch_size,
                     min_new_tokens=min_new_tokens, prompt_version=prompt_version, decode=decode,
                     repetition_penalty=repetition_penalty, max_pixels=max_pixels,
                     compile_prefill=compile_prefill, compile_decode=compile_decode, probe_rows=probe_rows,
                     prefetch_min_batch=prefetch_min_batch, pad_batches=pad_batches, pad_shapes=pad_shapes)
