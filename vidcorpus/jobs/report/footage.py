"""Where the footage went: every frame of the catalog's video sources, by destination and reason.

Kept clips, clips the recipe dropped (by its reason), segments the splitter or extractor dropped
(transition, trimmed, too_short, not_extracted, a detector's own reason) and frames in no row at
all (``catalog/coverage.py``; should be none). Frames and hours (each source's frame rate), with
their share of all split frames. Clips that overlap (packet-copied clips start at a keyframe
before their shot) count their frames once per clip.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

from vidcorpus.catalog.coverage import uncovered_frames
from vidcorpus.jobs.report import plots as rp

if TYPE_CHECKING:  # pragma: no cover
    from vidcorpus.catalog.store import Catalog

CLIPS_SQL = """
SELECT CASE WHEN c.kept THEN 'kept clips' WHEN c.kept IS NULL THEN 'undecided clips'
            ELSE 'clips dropped by the recipe' END AS destination,
       CASE WHEN c.kept THEN '' ELSE coalesce(c.reason, '') END AS reason,
       sum(c.last_frame - c.first_frame + 1) AS frames,
       sum((c.last_frame - c.first_frame + 1) / s.fps) / 3600 AS hours
FROM clips_wide c JOIN sources s USING (source_id)
WHERE c.media_type = 'video' AND s.split_frames IS NOT NULL
GROUP BY ALL
"""
SEGMENTS_SQL = """
SELECT 'dropped when splitting' AS destination, d.reason || ' (' || d.detector || ')' AS reason,
       sum(d.last_frame - d.first_frame + 1) AS frames,
       sum((d.last_frame - d.first_frame + 1) / s.fps) / 3600 AS hours
FROM dropped_segments d JOIN sources s USING (source_id)
GROUP BY ALL
"""


def footage_rows(cat: "Catalog") -> list[dict]:
    """[{destination, reason, frames, hours, share}] over the video sources whose splits were recorded."""
    has_segments = bool(cat.query_dicts(
        "SELECT 1 AS x FROM information_schema.tables WHERE table_name = 'dropped_segments'"))
    if not has_segments:  # a catalog from before frames were accounted for
        return []
    rows = cat.query_dicts(CLIPS_SQL) + cat.query_dicts(SEGMENTS_SQL)
    lost = uncovered_frames(cat)
    if lost:  # the frame rates of those sources only (none in a sound catalog)
        fps = {r["source_id"]: r["fps"] for r in cat.query_dicts(
            "SELECT source_id, fps FROM sources WHERE source_id IN (SELECT unnest(?))", [sorted(lost)])}
        frames = sum(b - a + 1 for e in lost.values() for a, b in e["gaps"])
        hours = sum((b - a + 1) / (fps.get(sid) or 25.0) for sid, e in lost.items() for a, b in e["gaps"]) / 3600
        rows.append({"destination": "in no row (catalog verify: frames_uncovered)", "reason": "", "frames": frames,
                     "hours": hours})
    total = cat.query_dicts("SELECT sum(split_frames) AS n FROM sources "
                            "WHERE media_type = 'video' AND split_frames IS NOT NULL")[0]["n"] or 0
    order = ["kept clips", "clips dropped by the recipe", "undecided clips", "dropped when splitting"]
    rows.sort(key=lambda r: (order.index(r["destination"]) if r["destination"] in order else len(order),
                             -int(r["frames"] or 0)))
    for r in rows:
        r["frames"] = int(r["frames"] or 0)
        r["hours"] = float(r["hours"] or 0.0)
        r["share"] = r["frames"] / total if total else 0.0
    return rows


def footage_plot(rows: list[dict], path: Path) -> None:
    """Horizontal bars of frames per destination and reason."""
    short = {"kept clips": "kept", "clips dropped by the recipe": "recipe", "undecided clips": "undecided",
             "dropped when splitting": "split"}
    labels = [short.get(r["destination"], "in no row") + (f": {r['reason']}" if r["reason"] else "") for r in rows]
    colours = [rp.KEPT if r["destination"] == "kept clips" else rp.DROPPED for r in rows]
    fig, ax = rp.plt.subplots(figsize=(7, 0.4 * len(rows) + 1))
    y = list(range(len(rows)))[::-1]
    ax.barh(y, [r["frames"] for r in rows], color=colours)
    ax.set_yticks(y, labels, fontsize=8)
    for yi, r in zip(y, rows):
        ax.text(r["frames"], yi, f" {r['frames']}  ({r['share']:.1%})", va="center", fontsize=8)
    ax.set_xlim(0, max([r["frames"] for r in rows] + [1]) * 1.35)
    ax.set_xlabel("source frames")
    ax.set_title("where the footage went")
    rp._save(fig, path)


def footage_section(rows: list[dict], plot_html: str, table) -> str:
    """The report section: the plot and a table (``table`` is the report's HTML table helper)."""
    if not rows:
        return "<p>no video source has its split recorded (catalogs from before issue 21)</p>"
    body = [[html.escape(r["destination"]), html.escape(r["reason"]), f"{r['frames']}", f"{r['hours']:.4g}", f"{r['share']:.1%}"] for r in rows]
    return ("<p>every frame of the video sources, whole catalog: in a clip (kept or dropped by the recipe) "
            "or in a segment dropped when splitting, with its reason.</p>" + plot_html
            + table(["destination", "reason", "frames", "hours", "share"], body, {2, 3, 4}))
