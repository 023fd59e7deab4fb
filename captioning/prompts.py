"""Captioning prompts, versioned: a caption records the prompt version it was generated with, so a
version is never edited in place (add "p2" and change ``captioning.prompt_version`` instead)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PromptKind = Literal["long", "short"]

@dataclass(frozen=True)
class Prompt:
    """One prompt in two forms: an instruction for chat VLMs, a text prefix for image captioners."""

    chat: str
    prefix: str = ""
    chat_image: str | None = None  # the instruction when the input is one image (None: use ``chat``)


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
    # p2: as p1 for videos, plus image wording (p1 sent an image with the video instruction)
    "p2": {
        "long": Prompt(
            chat=(
                "Describe this video in detail in one paragraph: the main subjects and their appearance, "
                "the actions and how they change over time, the setting, lighting and colours, and the "
                "camera motion. Describe only what is visible. Do not start with 'The video shows'."
            ),
            chat_image=(
                "Describe this image in detail in one paragraph: the main subjects and their appearance, "
                "what they are doing, the setting, lighting and colours, and the composition. Describe only "
                "what is visible. Do not start with 'The image shows'."
            ),
        ),
        "short": Prompt(
            chat="Describe this video in one short sentence of at most fifteen words.",
            chat_image="Describe this image in one short sentence of at most fifteen words.",
        ),
    },
}


def get_prompt(version: str, kind: PromptKind) -> Prompt:
    try:
        return PROMPTS[version][kind]
    except KeyError as e:
        raise KeyError(f"unknown prompt {version}/{kind}; known versions: {sorted(PROMPTS)}") from e
