"""Every frame of a source accounted for: each frame is in a clip or in a dropped segment with a reason.

The splitter partitions a video's frames ``0 .. n-1`` into shots and dropped segments; trimming
and windowing turn shots into clip ranges and drop more; extraction can lose a clip's tail. Each
loss becomes a ``DroppedSegment`` that travels on the source's rows (the ``dropped`` row field) to
the catalog's ``dropped_segments`` table, so ``catalog verify`` can prove the coverage and the
report can show where footage went.

A detector that recognises transitions itself (a learned one that sees dissolves) reports them
as dropped segments with its own reason and name: ``DroppedSegment(a, b, "dissolve", "transnetv2")``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Reasons the splitter and extractor give; detectors may add their own (lower-case words).
TRANSITION = "transition"  # a short segment between two cuts: a fade or a dissolve, half-blended frames
TOO_SHORT = "too_short"  # a shot that trimming leaves empty
TRIMMED = "trimmed"  # split.trim_frames cut from a shot's ends
NOT_EXTRACTED = "not_extracted"  # extraction ended a clip early (packet copy, frames the file never delivered)


@dataclass(frozen=True)
class DroppedSegment:
    """Inclusive source frames ``first_frame..last_frame`` that no clip holds, and why."""

    first_frame: int
    last_frame: int
    reason: str
    detector: str = "split"  # who decided: the splitter's rules, the extractor, or a named detector

    def as_row(self) -> dict:
        return asdict(self)


@dataclass
class ShotSplit:
    """What the splitter found in one video: shots, the segments it dropped, and how many frames it read."""

    shots: list[tuple[int, int]]
    dropped: list[DroppedSegment]
    n_frames: int


def drop_transitions(segments: list[tuple[int, int]], min_frames: int) -> tuple[list[tuple[int, int]], list[DroppedSegment]]:
    """Segments between cuts -> (shots, dropped): an inner segment under ``min_frames`` is a transition.

    The first and last segments are never transitions (nothing blends into the video's start or end).
    """
    shots: list[tuple[int, int]] = []
    dropped: list[DroppedSegment] = []
    for i, (a, b) in enumerate(segments):
        inner = 0 < i < len(segments) - 1
        if inner and b - a + 1 < min_frames:
            dropped.append(DroppedSegment(a, b, TRANSITION))
        else:
            shots.append((a, b))
    return shots, dropped


def trim_shots(shots: list[tuple[int, int]], trim: int) -> tuple[list[tuple[int, int]], list[DroppedSegment]]:
    """Cut ``trim`` frames from both ends of each shot; a shot with nothing left is dropped whole."""
    kept: list[tuple[int, int]] = []
    dropped: list[DroppedSegment] = []
    for first, last in shots:
        a, b = first + trim, last - trim
        if b < a:
            dropped.append(DroppedSegment(first, last, TOO_SHORT))
            continue
        if a > first:
            dropped.append(DroppedSegment(first, a - 1, TRIMMED))
        if b < last:
            dropped.append(DroppedSegment(b + 1, last, TRIMMED))
        kept.append((a, b))
    return kept, dropped


def uncovered(n_frames: int, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Inclusive frame ranges of ``0..n_frames-1`` that none of ``ranges`` covers (overlaps allowed)."""
    gaps: list[tuple[int, int]] = []
    reach = -1  # last frame covered so far
    for a, b in sorted(ranges):
        if a > reach + 1:
            gaps.append((reach + 1, min(a, n_frames) - 1))
        reach = max(reach, b)
        if reach >= n_frames - 1:
            break
    if reach < n_frames - 1:
        gaps.append((reach + 1, n_frames - 1))
    return [(a, b) for a, b in gaps if a <= b]


def with_dropped(row: dict, first: int, last: int, reason: str, detector: str) -> dict:
    """``row`` with one more dropped segment (a stage that loses frames of a clip says so)."""
    if last < first:
        return row
    extra = DroppedSegment(first, last, reason, detector).as_row()
    return dict(row, dropped=[*(row.get("dropped") or []), extra])


def exclude_spans(segments: list[tuple[int, int]], spans: list[tuple[int, int]],
                  min_len: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(segments without the span frames, the spans as excluded).

    A piece shorter than ``min_len`` left between a span and a segment edge is a transition tail
    (another detector placed its cut a few frames off): it joins the excluded span.
    """
    if not spans:
        return segments, []
    out: list[tuple[int, int]] = []
    excluded = [list(s) for s in spans]
    for first, last in segments:
        pieces = [(first, last)]
        for sa, sb in spans:
            nxt = []
            for a, b in pieces:
                if sb < a or sa > b:
                    nxt.append((a, b))
                    continue
                nxt.extend(p for p in ((a, sa - 1), (sb + 1, b)) if p[1] >= p[0])
            pieces = nxt
        for a, b in pieces:
            touching = [s for s in excluded if s[0] == b + 1 or s[1] == a - 1]
            if b - a + 1 < min_len and touching and (a, b) != (first, last):
                span = touching[0]
                span[0], span[1] = min(span[0], a), max(span[1], b)
            else:
                out.append((a, b))
    return out, [tuple(s) for s in sorted(excluded)]
