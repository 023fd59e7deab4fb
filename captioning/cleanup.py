"""Caption cleanup: remove what VLMs add that is not a description, and flag captions that are junk.

Every change is reported by name (stored in the caption's meta_json), so a cleanup rule that
misfires can be found and counted in the catalog instead of silently rewriting captions.
"""

from __future__ import annotations

import re
import unicodedata

_BOILERPLATE = [
    # "The video shows", "This clip depicts", "The image is showing", "The footage features that"
    r"(?:the|this)\s+(?:video|clip|image|picture|photo|photograph|footage|scene|frame|animation)\s+"
    r"(?:shows|depicts|features|captures|displays|presents|showcases|portrays|illustrates|contains|"
    r"is\s+showing|is\s+of|appears\s+to\s+show|begins\s+with)(?:\s+that)?\s*[:,]?\s+",
    # "In this video,", "In the clip:"
    r"in\s+(?:this|the)\s+(?:video|clip|image|picture|photo|footage|scene)\s*[:,]?\s+(?:we\s+see\s+|we\s+can\s+see\s+)?",
    # "This is a video of", "Here is an image of", "A video of" (BLIP's "a picture of")
    r"(?:this\s+is\s+|here\s+is\s+|it\s+is\s+)?(?:a|an)\s+(?:video|clip|image|picture|photo|photograph|"
    r"footage|photography|close-up\s+video|still)\s+(?:of|showing|that\s+shows)\s+",
]
_BOILERPLATE_RE = re.compile(r"^(?:" + "|".join(_BOILERPLATE) + r")", re.IGNORECASE)

_REFUSAL_RE = re.compile(
    r"^(?:i'?m\s+sorry|i\s+am\s+sorry|sorry,|i\s+(?:can\s*not|can'?t|am\s+unable\s+to|am\s+not\s+able\s+to)|"
    r"as\s+an\s+ai|unfortunately,?\s+i|i\s+apologi[sz]e)",
    re.IGNORECASE,
)
_SENTENCE_END_RE = re.compile(r"[.!?][\"')\]]*(?=\s|$)")
_WORD_RE = re.compile(r"[A-Za-z]+")


def _normalise_whitespace(text: str) -> str:
    chars = [" " if unicodedata.category(c)[0] in ("C", "Z") else c for c in text]
    return re.sub(r" {2,}", " ", "".join(chars)).strip()


def _split_sentences(text: str) -> list[str]:
    """Sentences with their end punctuation; a trailing fragment without it is the last item."""
    out, start = [], 0
    for m in _SENTENCE_END_RE.finditer(text):
        out.append(text[start:m.end()].strip())
        start = m.end()
    if text[start:].strip():
        out.append(text[start:].strip())
    return [s for s in out if s]


def _key(token: str) -> str:
    return token.lower().strip(".,;:!?\"'()")


def collapse_repeats(text: str, max_n: int = 8, min_reps: int = 3) -> str:
    """Replace any n-gram (n <= max_n words) repeated >= min_reps times in a row by one copy."""
    tokens = text.split()
    keys = [_key(t) for t in tokens]
    changed = True
    while changed:
        changed = False
        for n in range(1, max_n + 1):
            i = 0
            while i + n * min_reps <= len(tokens):
                reps = 1
                while keys[i:i + n] == keys[i + reps * n:i + (reps + 1) * n]:
                    reps += 1
                if reps >= min_reps:
                    # keep the last copy: it carries the punctuation that ends the run
                    del tokens[i:i + (reps - 1) * n]
                    del keys[i:i + (reps - 1) * n]
                    changed = True
                i += 1
    return " ".join(tokens)


def _capitalise_like(new: str, old: str) -> str:
    if new and old[:1].isupper():
        return new[0].upper() + new[1:]
    return new


def clean_caption(text: str | None, truncated: bool = True) -> tuple[str, list[str]]:
    """Clean one generated caption; return (text, names of the edits made).

    ``truncated``: generation may have stopped at max_new_tokens, so an unfinished last sentence is
    cut back to the last full one (when there is one). Pass False when the model stopped by itself.
    """
    edits: list[str] = []
    raw = text or ""
    out = _normalise_whitespace(raw)
    if out != raw:
        edits.append("whitespace")

    if _REFUSAL_RE.match(out):
        sentences = _split_sentences(out)
        kept = [s for s in sentences if not _REFUSAL_RE.match(s)]
        # "I'm sorry, but I can't ... However, ..." keeps nothing useful either way
        out = " ".join(kept) if kept and not re.match(r"^(?:but|however)\b", kept[0], re.IGNORECASE) else ""
        edits.append("refusal")

    stripped = out
    while True:  # "In this video, the video shows ..." takes two passes
        m = _BOILERPLATE_RE.match(stripped)
        if not m:
            break
        stripped = stripped[m.end():]
    if stripped != out:
        out = _capitalise_like(stripped, out)
        edits.append("boilerplate")

    collapsed = collapse_repeats(out)
    if collapsed != out:
        out = collapsed
        edits.append("repetition")

    sentences = _split_sentences(out)
    seen: set[str] = set()
    unique = []
    for s in sentences:
        k = " ".join(_key(t) for t in s.split())
        if k in seen:
            continue
        seen.add(k)
        unique.append(s)
    if len(unique) < len(sentences):
        out = " ".join(unique)
        sentences = unique
        edits.append("duplicate_sentence")

    if truncated and len(sentences) > 1 and not _SENTENCE_END_RE.search(sentences[-1]):
        out = " ".join(sentences[:-1])
        edits.append("truncated")

    return out.strip(), edits


def is_degenerate(text: str | None, min_words: int = 3, min_unique_ratio: float = 0.4) -> bool:
    """True for captions not worth training on: empty, too short, mostly repeats or not words."""
    words = [w.lower() for w in _WORD_RE.findall(text or "")]
    if len(words) < min_words:
        return True
    letters = sum(c.isalpha() for c in text or "")
    if letters < 0.5 * len((text or "").replace(" ", "")):
        return True
    return len(set(words)) / len(words) < min_unique_ratio
