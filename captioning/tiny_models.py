"""The tiny captioners of the ``tiny`` preset, built offline and seeded (no hub): a BLIP image
captioner with a small WordPiece vocabulary, and a Qwen2.5-VL-architecture chat VLM with a BPE
tokenizer that learnt real merges (``size="3b"`` gives the production dimensions with random
weights, for benchmarks). Saved with ``save_pretrained`` and loaded through ``load_captioner``, so
tests and the demo run the production code path."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLProcessor, Qwen2VLImageProcessor
from transformers import (
    BertTokenizerFast,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessor,
    BlipProcessor,
)
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

from vidcorpus.captioning.prompts import PROMPTS
from vidcorpus.model_files import no_progress_bars
from vidcorpus.storage import publish_dir

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

    save_pretrained_atomically(out_dir, model, processor)


def save_pretrained_atomically(out_dir: str, model, processor) -> None:
    """save_pretrained into a temporary sibling directory, then rename it into place.

    A crash never leaves a half-written model where ``presets`` looks for ``config.json``; if
    another worker finished first, its copy is kept (same seed, same model).
    """
    with no_progress_bars(), publish_dir(out_dir, replace=False) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)


# --- Tiny chat VLM (Qwen2.5-VL architecture), built offline --------------------------------------

# Qwen's chat format, reduced to what captioning sends: a user turn with a video or image and text.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CHAT_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]


def build_chat_tokenizer(vocab_size: int = 1024, extra_specials: tuple[str, ...] = ()):
    """A byte-level BPE tokenizer trained in-process on the prompts and the tiny vocabulary.

    Byte-level like Qwen's, so any text round-trips; merges learnt from our own words keep prompts
    about as many tokens long as with the real tokenizer (a merge-free byte tokenizer would make
    the prompt several times longer than in production).
    """
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = _CHAT_SPECIALS + [t for t in extra_specials if t not in _CHAT_SPECIALS]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = [p.chat for version in PROMPTS.values() for p in version.values()]
    texts += [" ".join(_WORDS[i:i + 12]) for i in range(0, len(_WORDS), 12)] + ["user assistant system"]
    bpe.train_from_iterator(texts * 4, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=specials[1:], model_max_length=32768)
    for t in specials:  # the special tokens must stay single tokens
        if len(tok(t, add_special_tokens=False)["input_ids"]) != 1:
            raise RuntimeError(f"chat tokenizer splits {t}")
    return tok


def chat_processor(tokenizer, min_pixels: int = 56 * 56, max_pixels: int = 112 * 112):
    """A Qwen2.5-VL processor (image + video processors, chat template) around ``tokenizer``."""
    pixels = dict(min_pixels=min_pixels, max_pixels=max_pixels)
    return Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels),
                               video_processor=Qwen2VLVideoProcessor(**pixels),
                               tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def chat_vlm_config(tokenizer, size: str = "tiny"):
    """Qwen2.5-VL config: ``tiny`` (tests) or ``3b`` (the dimensions of Qwen2.5-VL-3B-Instruct)."""
    ids = tokenizer.convert_tokens_to_ids
    if size == "3b":
        text = dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                    num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000,
                    rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6})
        vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                      fullatt_block_indexes=[7, 15, 23, 31])
    elif size == "tiny":
        text = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                    rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4})
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                      fullatt_block_indexes=[1], initializer_range=0.1)
        # std 0.1 (not 0.02): large enough that the random model's words depend on the frames
        text["initializer_range"] = 0.1
    else:
        raise ValueError(f"unknown chat VLM size {size!r}: tiny or 3b")
    eos, pad = ids("<|im_end|>"), ids("<|endoftext|>")
    text.update(bos_token_id=None, eos_token_id=eos, pad_token_id=pad, tie_word_embeddings=True)
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=True,
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        eos_token_id=eos, pad_token_id=pad,
    )


def build_tiny_chat_vlm(out_dir: str, seed: int = 0) -> None:
    """A seeded, random tiny Qwen2.5-VL + processor saved with save_pretrained (the production path)."""
    tok = build_chat_tokenizer()
    config = chat_vlm_config(tok, "tiny")
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(eos_token_id=config.text_config.eos_token_id,
                                               pad_token_id=config.text_config.pad_token_id)
    save_pretrained_atomically(out_dir, model, chat_processor(tok))
