"""A clip card (the grid, sample and compare pages) rendered in Python.

Through a Jinja macro the grid's 48 cards cost ~0.6 ms of a ~1.0 ms page render at 1 M clips
(argument binding and an escape per field, per card); a format string over the escaped fields is
the same HTML in about a fifth of that (the markup a browser and the tests read is unchanged:
``tests/test_serve_cards.py`` renders both). The templates call ``card`` and ``cards`` as globals.
"""

from __future__ import annotations

from typing import Any, Iterable

from markupsafe import Markup, escape

VIDEO = ('<video class="hoverplay" muted loop playsinline preload="none" poster="/media/still/{0}"\n'
         '           src="/media/clip/{0}"></video>')
IMAGE = '<img src="/media/clip/{0}" alt="{0}" loading="lazy">'
CARD = ('<figure class="card {kind}" data-clip="{id}">\n  <a href="/clip/{id}{suffix}">\n  \n    {media}\n  \n  </a>\n'
        '  <figcaption>\n    <span class="decision">{decision}</span>\n    <span class="id">{id}</span>\n'
        '    {score}\n  </figcaption>\n</figure>')


def num(value: Any) -> str:
    """A score as the pages show it (four significant digits); nothing for a missing one."""
    return "" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))


def card(r: dict, sort_score: str | None = None, link_suffix: str = "") -> Markup:
    """One clip's card: its still (a video plays on hover), decision, id and the sorted score."""
    clip_id = escape(r.get("clip_id"))
    kept = r.get("kept")
    score = (f'<span class="score">{escape(sort_score)} {escape(num(r.get(sort_score)))}</span>'
             if sort_score else "")
    return Markup(CARD.format(
        kind="kept" if kept else ("dropped" if kept is False else "undecided"), id=clip_id, suffix=escape(link_suffix),
        media=(IMAGE if r.get("media_type") == "image" else VIDEO).format(clip_id),
        decision="kept" if kept else escape(r.get("reason") or "undecided"), score=score))


def cards(rows: Iterable[dict], sort_score: str | None = None) -> Markup:
    """The cards of a page, one after the other."""
    return Markup("").join(card(r, sort_score) for r in rows)
