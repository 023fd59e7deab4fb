"""Does every frame of every video source have a place: in a clip, or in a dropped segment with a reason?

The splitter records how many frames it read (``sources.split_frames``) and each run of frames no
clip holds (``dropped_segments``: transition, trimmed, too_short, not_extracted, or a detector's
own reason). A frame in neither was lost silently (issue 21: 44 frames of a shot vanished);
``catalog verify`` reports each such source (check ``frames_uncovered``). Sources split before
the splitter recorded its frame count (``split_frames`` NULL), images and sources not ``done``
are not checked. Clips may overlap each other or a dropped segment (packet-copied clips start at
a keyframe before their shot): only gaps count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from vidcorpus.catalog.store import Catalog

MAX_GAPS_LISTED = 3  # gaps named per source in the problem's detail

# One row per (source, gap): intervals sorted by first frame, each compared with the furthest frame
# covered before it; then the tail after the last interval.
UNCOVERED_SQL = """
WITH src AS (
    SELECT source_id, split_frames AS n FROM sources
    WHERE media_type = 'video' AND status = 'done' AND split_frames IS NOT NULL
),
iv AS (
    SELECT source_id, first_frame AS a, last_frame AS b FROM clips WHERE source_id IN (SELECT source_id FROM src)
    UNION ALL
    SELECT source_id, first_frame, last_frame FROM dropped_segments WHERE source_id IN (SELECT source_id FROM src)
),
ordered AS (
    SELECT source_id, a, b,
           max(b) OVER (PARTITION BY source_id ORDER BY a, b ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reach
    FROM iv
),
gaps AS (
    SELECT o.source_id, coalesce(o.reach, -1) + 1 AS gap_first, least(o.a, src.n) - 1 AS gap_last
    FROM ordered o JOIN src USING (source_id)
    WHERE o.a > coalesce(o.reach, -1) + 1
    UNION ALL
    SELECT src.source_id, coalesce(max(o.b), -1) + 1, src.n - 1
    FROM src LEFT JOIN ordered o USING (source_id)
    GROUP BY src.source_id, src.n
    HAVING coalesce(max(o.b), -1) < src.n - 1
)
SELECT g.source_id, g.gap_first, g.gap_last, src.n
FROM gaps g JOIN src USING (source_id)
WHERE g.gap_first <= g.gap_last
ORDER BY g.source_id, g.gap_first
"""


def uncovered_frames(cat: "Catalog") -> dict[str, dict]:
    """source_id -> {n_frames, gaps: [(first, last), ...]} for every source with frames in no row."""
    out: dict[str, dict] = {}
    for r in cat.query_dicts(UNCOVERED_SQL):
        entry = out.setdefault(r["source_id"], {"n_frames": r["n"], "gaps": []})
        entry["gaps"].append((r["gap_first"], r["gap_last"]))
    return out


def coverage_problems(cat: "Catalog") -> list[dict]:
    """``catalog verify`` problems: one ``frames_uncovered`` per source whose frames are not all accounted for."""
    problems = []
    for source_id, entry in uncovered_frames(cat).items():
        gaps = entry["gaps"]
        missing = sum(b - a + 1 for a, b in gaps)
        named = ", ".join(f"{a}-{b}" for a, b in gaps[:MAX_GAPS_LISTED]) + (" ..." if len(gaps) > MAX_GAPS_LISTED else "")
        problems.append({"check": "frames_uncovered", "item": source_id,
                         "detail": f"{missing} of {entry['n_frames']} frames are in no clip and no dropped "
                                   f"segment (frames {named})"})
    return problems
