"""The report's HTML: escaping, tables, the page shell, and the writer of plots, thumbnails and
clip pages. Every text from the catalog is HTML-escaped: captions are model output and source
texts are user input. Everything lands in the output folder, so pages open from file://.
"""

from __future__ import annotations

import html
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFilter

from vidcorpus.media import open_local_or_remote

CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#212529;max-width:1200px}
h1{font-size:24px} h2{font-size:19px;border-bottom:1px solid #dee2e6;padding-bottom:4px;margin-top:32px}
h3{font-size:15px;margin-bottom:4px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #dee2e6;padding:3px 7px;text-align:left;vertical-align:top}
td.n{text-align:right} .note{color:#868e96;font-size:13px}
.gallery{display:flex;flex-wrap:wrap;gap:6px;margin:4px 0 12px}
.gallery a{display:block;text-decoration:none;color:#495057;font-size:11px;width:164px}
.gallery img{width:160px;border:2px solid #dee2e6;display:block}
.kept img{border-color:#2b8a3e} .dropped img{border-color:#c92a2a}
.plots{display:flex;flex-wrap:wrap;gap:8px} .plots img{max-width:100%} .err{font-family:monospace;font-size:12px;white-space:pre-wrap}
nav a{margin-right:10px}
"""
NSFW_BLUR_AT = 0.2  # thumbnails of clips whose nsfw score reaches this are shown blurred


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def esc(value: Any) -> str:
    """HTML-escaped text of a value (floats shortened)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return html.escape(f"{value:.4g}")
    return html.escape(str(value), quote=True)


def page(title: str, body: str, css_href: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<link rel=\"stylesheet\" href=\"{css_href}\"></head><body>\n{body}\n</body></html>\n")


def table(headers: list[str], rows: list[list[Any]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td{' class=n' if i in numeric else ''}>{cell}</td>"
                                    for i, cell in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


class Writer:
    """Writes PNGs, thumbnails and pages into one folder; remembers the clips that need a page
    (a clip is a dict of ``queries.tile_columns``; its ``nsfw`` score blurs its thumbnail)."""

    def __init__(self, out: Path, thumb_px: int):
        self.out, self.thumb_px = out, thumb_px
        self.plots: list[Path] = []
        self.pages: dict[str, dict] = {}
        for sub in ("plots", "thumbs", "clips"):
            (out / sub).mkdir(parents=True, exist_ok=True)

    def plot(self, name: str) -> Path:
        path = self.out / "plots" / f"{safe_name(name)}.png"
        self.plots.append(path)
        return path

    def img(self, path: Path, alt: str) -> str:
        return f'<img src="{esc(path.relative_to(self.out).as_posix())}" alt="{esc(alt)}">'

    def thumb(self, clip: dict) -> str:
        """Relative path of the clip's thumbnail (made on first use; a grey tile if the frame is gone)."""
        rel = f"thumbs/{safe_name(clip['clip_id'])}.jpg"
        dst = self.out / rel
        if not dst.exists():
            img = None
            src = clip.get("first_frame_path")
            if src:
                try:
                    with open_local_or_remote(src) as f:
                        img = Image.open(f)
                        img.load()
                except Exception:  # noqa: BLE001 - a missing frame must not stop the report
                    img = None
            if img is None:
                img = Image.new("RGB", (self.thumb_px, self.thumb_px * 9 // 16), (222, 226, 230))
                ImageDraw.Draw(img).text((8, 8), "no first frame", fill=(73, 80, 87))
            img = img.convert("RGB")
            img.thumbnail((self.thumb_px, self.thumb_px))
            if (clip.get("nsfw") or 0.0) >= NSFW_BLUR_AT:
                img = img.filter(ImageFilter.GaussianBlur(max(4, img.width // 12)))
            img.save(dst, format="JPEG", quality=85)
        return rel

    def page(self, clip: dict) -> str:
        self.pages.setdefault(clip["clip_id"], clip)
        return f"clips/{safe_name(clip['clip_id'])}.html"

    def link(self, clip: dict) -> str:
        return f'<a href="{esc(self.page(clip))}">{esc(clip["clip_id"])}</a>'

    def tile(self, clip: dict, label: str) -> str:
        cls = "kept" if clip["kept"] else "dropped"
        return (f'<a class="{cls}" href="{esc(self.page(clip))}" title="{esc(clip["clip_id"])}">'
                f'<img src="{esc(self.thumb(clip))}" alt="{esc(clip["clip_id"])}">{esc(label)}</a>')


def clip_pages(w: Writer, con) -> int:
    """One page per clip shown: every score, decision and caption the catalog holds for it."""
    ids = sorted(w.pages)
    if not ids:
        return 0

    def by_clip(sql: str) -> dict[str, list[dict]]:
        cur = con.execute(sql, [ids])
        names = [d[0] for d in cur.description]
        out: dict[str, list[dict]] = defaultdict(list)
        for row in cur.fetchall():
            r = dict(zip(names, row))
            out[r["clip_id"]].append(r)
        return out

    scores = by_clip("SELECT clip_id, scorer, value, model, version, run_id FROM scores "
                     "WHERE clip_id IN (SELECT unnest(?)) ORDER BY scorer, written_at")
    decisions = by_clip("SELECT clip_id, recipe, kept, reason, run_id, decided_at FROM decisions "
                        "WHERE clip_id IN (SELECT unnest(?)) ORDER BY decided_at")
    captions = by_clip("SELECT clip_id, version, kind, text, model, prompt_version, meta_json, run_id FROM captions "
                       "WHERE clip_id IN (SELECT unnest(?)) ORDER BY version, kind")
    shards = by_clip("SELECT m.clip_id, s.shard_id, s.url FROM shard_members m JOIN shards s USING (shard_id) "
                     "WHERE m.clip_id IN (SELECT unnest(?))")
    for cid in ids:
        c = w.pages[cid]
        meta = [("clip", cid), ("source", c["uri"]), ("source text", c["source_text"]),
                ("media", c["media_type"]), ("size", f"{c['width']}x{c['height']}"), ("duration (s)", c["duration_s"]),
                ("kept", c["kept"]), ("reason", c["reason"]), ("recipe", c["recipe"]), ("clip file", c["clip_path"]),
                ("shards", ", ".join(s["url"] for s in shards.get(cid, [])))]
        body = (f'<p><a href="../index.html">&larr; report</a></p><h1>{esc(cid)}</h1>'
                f'<img src="../{esc(w.thumb(c))}" alt="first frame">'
                + table(["field", "value"], [[esc(k), esc(v)] for k, v in meta])
                + "<h2>scores</h2>" + table(["scorer", "value", "model", "version", "run"],
                                            [[esc(s["scorer"]), esc(s["value"]), esc(s["model"]), esc(s["version"]),
                                              esc(s["run_id"])] for s in scores.get(cid, [])], {1})
                + "<h2>decisions</h2>" + table(["recipe", "kept", "reason", "run", "decided at"],
                                               [[esc(d["recipe"]), esc(d["kept"]), esc(d["reason"]), esc(d["run_id"]),
                                                 esc(d["decided_at"])] for d in decisions.get(cid, [])])
                + "<h2>captions</h2>" + table(["version", "kind", "text", "model", "prompt", "meta"],
                                              [[esc(k["version"]), esc(k["kind"]), esc(k["text"]), esc(k["model"]),
                                                esc(k["prompt_version"]), f'<span class="err">{esc(k["meta_json"])}</span>']
                                               for k in captions.get(cid, [])]))
        (w.out / "clips" / f"{safe_name(cid)}.html").write_text(page(cid, body, "../report.css"), encoding="utf-8")
    return len(ids)
