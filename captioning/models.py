"""Captioning models: one loader for hub VLMs and the tiny test captioner, and batched generation.

Production names a chat-template VLM (Qwen2.5-VL) that sees the clip's frames as a video; the tiny
preset is a seeded, randomly initialised BLIP saved with ``save_pretrained``. Both load through
``load_captioner`` (Auto classes), so tests and the demo exercise the production code path.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

PromptKind = Literal["long", "short"]


@dataclass(frozen=True)
class Prompt:
    """One prompt in two forms: an instruction for chat VLMs, a text prefix for image captioners."""

    chat: str
    prefix: str = ""


# Versioned: a caption records the prompt_version it was generated with, so never edit a version in
# place; add "p2" and change captioning.prompt_version instead.
PROMPTS: dict[str, dict[str, Prompt]] = {
    "p1": {
        "long": Prompt(
            chat=(
                "Describe this video in detail in one paragraph: the main subjects and their appearance, "
                "the actions and how they change over time, the setting, lighting and colours, and the "
                "camera motion. Describe only what is visible. Do not start with 'The video shows'."
            ),
            prefix="",
        ),
        "short": Prompt(
            chat="Describe this video in one short sentence of at most fifteen words.",
            prefix="",
        ),
    },
}


def get_prompt(version: str, kind: PromptKind) -> Prompt:
    try:
        return PROMPTS[version][kind]
    except KeyError as e:
        raise KeyError(f"unknown prompt {version}/{kind}; known versions: {sorted(PROMPTS)}") from e


# A small English vocabulary for the tiny captioner's WordPiece tokenizer (built offline, no hub).
_WORDS = """
a an the this that these those it its he she they them his her their we you i one two three four
five some many few all each every other another more most less much very so too also not no only
just still then now here there when while where after before during over under above below on in
at of to from with without into onto out up down off through across along around behind between
near next inside outside toward away against by for about as and or but if than like
is are was were be been being has have had do does did can could will would may might should
man woman men women person people child children boy girl baby family friend group crowd player
dog cat bird horse cow sheep fish animal animals car truck bus bike bicycle train boat plane road
street city town building house room kitchen table chair bed door window wall floor roof sky
cloud clouds sun moon light shadow water sea ocean river lake beach sand snow rain tree trees
grass field forest mountain hill rock stone flower flowers garden park food plate cup bottle ball
book phone screen computer camera hand hands face head hair eye eyes arm arms leg legs body shirt
dress hat shoes jacket bag box sign paper text line lines shape shapes circle square surface
pattern texture background foreground scene view shot image picture video clip frame frames
red orange yellow green blue purple pink brown black white gray grey dark bright colorful
colourful light large small big little long short tall wide narrow round flat smooth rough soft
hard old new young happy busy empty full open closed clear blurry sharp slow fast quick still
moving moves move moving walks walk walking runs run running sits sit sitting stands stand
standing holds hold holding looks look looking plays play playing rides ride riding drives drive
driving flies fly flying swims swim swimming jumps jump jumping rolls roll rolling turns turn
turning falls fall falling drifts drift drifting shows show showing appears appear appearing
talks talk talking eats eat eating smiles smile smiling waves wave waving pans pan panning zooms
zoom zooming camera's close closeup wide-angle static handheld slowly quickly gently steadily
left right top bottom center middle side front back corner edge across along upward downward
day night morning evening sunset sunrise indoor outdoor indoors outdoors warm cold sunny cloudy
first second third last begins ends starts continues then finally while again together
""".split()
_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
_PUNCT = list(".,;:!?'\"-()")


def _tiny_vocab() -> dict[str, int]:
    tokens: list[str] = []
    for t in _SPECIALS + _PUNCT + _WORDS + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + list(
        "abcdefghijklmnopqrstuvwxyz0123456789"
    ):
        if t not in tokens:
            tokens.append(t)
    return {t: i for i, t in enumerate(tokens)}


def build_tiny_captioner(out_dir: str, seed: int = 0) -> None:
    """Build a seeded, randomly initialised tiny BLIP captioner + processor and save_pretrained it.

    Built in a temporary sibling directory and renamed at the end, so a crash never leaves a
    half-written model where ``presets`` looks for ``config.json``.
    """
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    vocab = _tiny_vocab()
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=64)
    if len(tokenizer) != len(vocab):  # transformers 5 can silently build an empty vocab
        raise RuntimeError(f"tiny tokenizer has {len(tokenizer)} tokens, expected {len(vocab)}")
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    image_processor = BlipImageProcessor(size={"height": 64, "width": 64})
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)

    hidden = 32
    config = BlipConfig(
        vision_config=dict(
            hidden_size=hidden, intermediate_size=64, projection_dim=hidden, num_hidden_layers=2,
            num_attention_heads=2, image_size=64, patch_size=16, initializer_range=0.1,
        ),
        text_config=dict(
            vocab_size=len(vocab), hidden_size=hidden, encoder_hidden_size=hidden, intermediate_size=64,
            projection_dim=hidden, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=96,
            bos_token_id=vocab["[DEC]"], eos_token_id=vocab["[SEP]"], sep_token_id=vocab["[SEP]"],
            pad_token_id=vocab["[PAD]"], initializer_range=0.1,
        ),
        projection_dim=hidden,
        image_text_hidden_size=hidden,
        initializer_range=0.1,
    )
    # Init std 0.1 (not BLIP's 0.02 / 1e-10): large enough that captions depend on the image at all.
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a one-off build of a tiny file needs no progress bar
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        if out.exists():  # another worker finished first: keep theirs (same seed, same model)
            shutil.rmtree(tmp)
            return
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bars:
            hf_logging.enable_progress_bar()


@dataclass
class Generation:
    text: str
    n_tokens: int  # new tokens generated (before decoding); == max_new_tokens means it was cut off


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


class Captioner:
    """A loaded captioning model with batched, greedy (deterministic) generation."""

    def __init__(self, model, processor, name: str, device: torch.device, dtype: torch.dtype,
                 batch_size: int = 8, min_new_tokens: int = 4, prompt_version: str = "p1"):
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
        """How frames reach the model: 'video' (chat VLMs) or 'middle_frame' (image captioners)."""
        return "video" if self.chat else "middle_frame"

    def caption(self, frames_per_clip: list[np.ndarray], prompt_kind: PromptKind, max_new_tokens: int,
                prompt_version: str | None = None) -> list[str]:
        return [g.text for g in self.generate(frames_per_clip, prompt_kind, max_new_tokens, prompt_version)]

    def generate(self, frames_per_clip: list[np.ndarray], prompt_kind: PromptKind, max_new_tokens: int,
                 prompt_version: str | None = None) -> list[Generation]:
        """Caption clips in batches of ``batch_size``; on CUDA OOM halve the batch and retry."""
        prompt = get_prompt(prompt_version or self.prompt_version, prompt_kind)
        out: list[Generation] = []
        i, bs = 0, max(1, self.batch_size)
        while i < len(frames_per_clip):
            chunk = frames_per_clip[i:i + bs]
            try:
                out.extend(self._generate_batch(chunk, prompt, max_new_tokens))
            except Exception as exc:  # noqa: BLE001 - only OOM is retried, anything else re-raised
                if not _is_oom(exc) or bs == 1:
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                bs = max(1, bs // 2)
                self.batch_size = bs  # remember: the next call starts at the size that fits
                continue
            i += len(chunk)
        return out

    def generation_settings(self, max_new_tokens: int) -> dict:
        return {"do_sample": False, "num_beams": 1, "max_new_tokens": max_new_tokens,
                "min_new_tokens": min(self.min_new_tokens, max_new_tokens)}

    def _inputs(self, chunk: list[np.ndarray], prompt: Prompt) -> dict:
        if self.chat:
            messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt.chat}]}]
            text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            videos = [np.asarray(frames) for frames in chunk]
            return self.processor(text=[text] * len(chunk), videos=videos, padding=True, return_tensors="pt")
        images = [np.asarray(frames[len(frames) // 2]) for frames in chunk]
        if prompt.prefix:
            return self.processor(images=images, text=[prompt.prefix] * len(chunk), return_tensors="pt")
        inputs = self.processor(images=images, return_tensors="pt")
        # No prefix: start from [CLS][SEP] like BLIP's own default (generate swaps in the BOS token).
        ids = [self.tokenizer.cls_token_id, self.tokenizer.sep_token_id]
        inputs["input_ids"] = torch.tensor([ids] * len(chunk), dtype=torch.long)
        return inputs

    @torch.inference_mode()
    def _generate_batch(self, chunk: list[np.ndarray], prompt: Prompt, max_new_tokens: int) -> list[Generation]:
        inputs = self._inputs(chunk, prompt)
        inputs = {k: (v.to(self.device, self.dtype) if torch.is_floating_point(v) else v.to(self.device))
                  for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        settings = self.generation_settings(max_new_tokens)
        kwargs: dict = dict(settings)
        if not self.chat:
            # BLIP drops the prompt's last token ([SEP]) and returns the rest of the prompt first.
            prompt_len = inputs["input_ids"].shape[1] - 1
            eos = self.model.config.text_config.sep_token_id
            kwargs["suppress_tokens"] = [t for t in self.tokenizer.all_special_ids if t != eos]
        else:
            prompt_len = inputs["input_ids"].shape[1]
        ids = self.model.generate(**inputs, **kwargs)
        new = ids[:, prompt_len:]
        stop = self._stop_ids()
        counts = [int(_count_until_stop(row.tolist(), stop)) for row in new]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [Generation(text=t.strip(), n_tokens=n) for t, n in zip(texts, counts)]

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
    import transformers

    cls = getattr(transformers, "AutoModelForImageTextToText", None)  # transformers >= 4.50, 5.x
    return cls if cls is not None else transformers.AutoModelForVision2Seq


def load_captioner(name_or_dir: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                   batch_size: int = 8, min_new_tokens: int = 4, prompt_version: str = "p1") -> Captioner:
    """Load any image-text-to-text captioner (hub id or local dir) the same way; fail fast if missing."""
    from transformers import AutoProcessor

    from vidcorpus.presets import require_hf_model

    path = require_hf_model(name_or_dir, "captioner")
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
                     min_new_tokens=min_new_tokens, prompt_version=prompt_version)
