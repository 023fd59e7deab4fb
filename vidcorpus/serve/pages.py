"""The web app's pages: its Jinja templates, with the clip cards built in Python, rendered to HTML.

Every route module renders through here (``app.py``, ``routes_measure.py``).
"""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.responses import HTMLResponse

from vidcorpus.serve import cards

jinja_env = Environment(loader=PackageLoader("vidcorpus.serve", "templates"), autoescape=select_autoescape(["html"]))
jinja_env.filters["num"] = cards.num
jinja_env.globals.update(card=cards.card, cards=cards.cards)  # a clip card in Python: 5x cheaper than a macro


def render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(jinja_env.get_template(name).render(**context), status_code=status)


def error_page(message: str, status: int) -> HTMLResponse:
    return render("error.html", status=status, message=message)
