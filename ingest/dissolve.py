"""The frames of a dissolve or fade around a detected cut leave the clips, not only the cut inside them.

PySceneDetect's detectors report a cut somewhere inside a gradual transition (often at its first
or last frame): the clips on both sides then start or end with half-blended frames, and a model
trained on them learns dissolves. This module finds, around each boundary between two shots, the
span of frames that blend the shot before into the shot after, and drops it as a transition.

The test is the blend itself, on the small grey thumbnails the flash filter already keeps for
every frame (``ingest/flash.py``). Take a reference picture before and after the boundary
(per-pixel medians of nine frames at the ends of a window of about a second, so a flash is never
one). Each frame's position between them, ``alpha`` (its projection on the line from one to the
other: 0 at the picture before, 1 after), stays near a constant level inside a shot and climbs
along a straight ramp through a dissolve (editors blend linearly). The frames clearly between the
two levels that climb steadily around the boundary are fitted with a line, extended to where it
meets the levels before and after, refitted with references just outside it, and end frames the
blend explains no better than the nearer end frame are trimmed. A hard cut has no frame between
the levels and gets no span. A fade to black and back is two such ramps, one into the darkest
frame and one out of it.

A camera move can climb the same way (a pan shifts the small thumbnails like a blend), so a span
counts only when the linear blend explains its frames clearly better than the nearer end frame
does (``misfit_ratio``) and, for a dissolve, when the fine detail dips mid-span
(``detail_dip``): a blend of two unrelated pictures averages about half their detail away, a
pan or a zoom keeps it. Around detected cuts the thresholds are looser than in the scan inside
shots (``scan``), where no detector saw anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vidcorpus.ingest.segments import TRANSITION, DroppedSegment, exclude_spans, uncovered

DETECTOR = "dissolve"


@dataclass(frozen=True)
class BlendSettings:
    max_frames: int = 30  # longest blend looked for (one side of a fade); the search window is this each side
    min_change: float = 12.0  # RMS grey difference of the two reference pictures below which nothing is looked for
    band: tuple[float, float] = (0.2, 0.8)  # alpha values that are clearly between the two pictures
    min_frames: int = 3  # a shorter "blend" is a cut or noise
    min_ramp: int = 2  # frames inside the band a ramp needs (a hard cut has none, motion rarely climbs so steadily)
    max_misfit: float = 0.12  # largest distance of a ramp frame's alpha from the fitted line
    wobble: float = 0.05  # a ramp may step back this much between frames (the shots' own motion)
    black: float = 0.3  # a fade's darkest frame is at most this share of the brightness of its neighbours,
    video_black: float = 16.0  # measured above the luma of black (16 in limited-range video, as most is coded)
    end_ratio: float = 1.0  # an end frame the blend explains no better than the nearer end frame is clean
    margin: int = 1  # frames added at both ends of a span (the fit is often a frame off; a faint end frame)
    # How much better the blend explains the span's frames than the nearer of its two end frames does
    # (mean RMS error of the linear blend / of the nearer end frame). On the benchmark's footage
    # (8x6 thumbnails) dissolves score 0.22 to 0.89; the ramps of jump cuts, whip pans and zooms 0.6
    # to 1.4: alone it does not separate them, the detail dip below does.
    max_misfit_ratio: float = 0.85  # around a detected cut
    scan: bool = True  # also look for blends where no detector cut (a slow dissolve every detector missed)
    scan_step: int = 6  # frames between the positions the scan tries
    scan_misfit_ratio: float = 0.8  # stricter where no detector saw anything
    scan_min_change: float = 20.0
    # Fine detail mid-blend over the line between the end frames (``detail_dip``): 0.43 to 0.79 for
    # the benchmark's dissolves but one (1.02), 0.93 to 1.22 for the ramps that motion makes.
    max_detail_dip: float = 0.85
    # Around a detected cut, a blend without the dip still counts when its end frames differ this many
    # times more than either side changes by itself over as many frames, half a second at least
    # (``replacement_ratio``): 2.3 to 4.7 for the wide benchmark's dissolves (seed 0) but one (1.0,
    # which dips), 0.4 to 1.5 for motion ramps but one zoom reversal (2.8, where no detector cut:
    # the scan still asks for the dip).
    min_replacement: float = 2.0
    replacement_frames: int = 12  # the shortest stretch either side is compared over (half a second at 25 fps)


def blend_settings(cfg, fps: float) -> BlendSettings:
    """The split section's settings in frames at ``fps``."""
    return BlendSettings(max_frames=max(4, round(cfg.dissolve_max_seconds * fps)), scan=cfg.dissolve_scan,
                         replacement_frames=max(2, round(fps / 2)))


def _alpha(thumbs: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = b - a
    return (thumbs - a) @ d / max(float(d @ d), 1e-6)


def _ramp(alpha: np.ndarray, near: int, s: BlendSettings,
          levels: tuple[float, float] | None = None) -> tuple[int, int] | None:
    """(first, last) frames of the straight climb through the band closest to index ``near``,
    extended to where it meets the levels before and after it; None when there is no such climb."""
    lo, hi = s.band
    inside = np.flatnonzero((alpha > lo) & (alpha < hi))
    if len(inside) == 0:
        return None
    seed = int(inside[np.argmin(np.abs(inside - near))])
    if abs(seed - near) > s.max_frames:
        return None
    a = b = seed
    while a - 1 >= 0 and lo < alpha[a - 1] < hi and alpha[a - 1] <= alpha[a] + s.wobble:
        a -= 1
    while b + 1 < len(alpha) and lo < alpha[b + 1] < hi and alpha[b + 1] >= alpha[b] - s.wobble:
        b += 1
    if b - a + 1 < s.min_ramp:
        return None
    k = np.arange(a, b + 1)
    slope, icept = np.polyfit(k, alpha[a:b + 1], 1)
    if slope <= 1.0 / (s.max_frames + 1) * 0.8 or np.abs(alpha[a:b + 1] - (slope * k + icept)).max() > s.max_misfit:
        return None
    if levels:  # the references were taken just outside the blend: their own levels
        before, after = levels
    else:  # far references: the levels of the clean frames well before and after the climb
        before = float(np.median(alpha[:max(1, a // 2)]))
        after = float(np.median(alpha[b + 1 + (len(alpha) - b - 1) // 2:])) if b + 1 < len(alpha) else 1.0
    first = int(np.floor((before - icept) / slope)) + 1  # the last frame at the level before is clean
    last = int(np.ceil((after - icept) / slope)) - 1
    if last - first + 1 < s.min_frames or last - first + 1 > s.max_frames + 2:
        return None
    return first, last


def misfit_ratio(thumbs: np.ndarray, first: int, last: int, dark: int | None = None) -> float:
    """Mean RMS error of frames ``first..last`` against a linear blend of the frames just outside them
    (through the darkest frame ``dark`` for a fade), over that against the nearer outside frame."""
    if first < 1 or last + 1 >= len(thumbs) or last < first:
        return np.inf
    a, b = thumbs[first - 1], thumbs[last + 1]
    frames = thumbs[first:last + 1]

    def blend(x, y, n):
        w = (np.arange(1, n + 1) / (n + 1))[:, None]
        return x + w * (y - x)

    if dark is None or not first <= dark <= last:
        pred = blend(a, b, last - first + 1)
    else:
        k = thumbs[dark]
        pred = np.concatenate([blend(a, k, dark - first), k[None], blend(k, b, last - dark)])
    rms = lambda x: np.sqrt((x ** 2).mean(axis=1))  # noqa: E731
    nearer = np.minimum(rms(frames - a), rms(frames - b))
    return float(rms(frames - pred).mean() / max(nearer.mean(), 1e-3))


def _refs(win: np.ndarray, first: int, last: int, n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Reference pictures just outside frames first..last of the window: per-pixel medians of up to
    ``n`` frames (a camera flash among them does not become the reference)."""
    before = win[max(0, first - n):max(1, first)]
    after = win[min(len(win) - 1, last + 1):last + 1 + n]
    return np.median(before, axis=0), np.median(after, axis=0)


def _fitted_ramp(win: np.ndarray, a_ref: np.ndarray, b_ref: np.ndarray, near: int,
                 s: BlendSettings) -> tuple[int, int] | None:
    """The ramp between two pictures, refined twice with references taken just outside the last
    estimate (far references drift with the shots' own motion)."""
    span = _ramp(_alpha(win, a_ref, b_ref), near, s)
    for _ in range(2):
        if span is None:
            return None
        a2, b2 = _refs(win, *span)
        again = _ramp(_alpha(win, a2, b2), (span[0] + span[1]) // 2, s)
        if again is None or again == span:
            break
        span = again
    return span


def trim_clean_ends(thumbs: np.ndarray, first: int, last: int, s: BlendSettings) -> tuple[int, int]:
    """Frames first..last less the end frames the blend explains no better than the nearer end frame
    does (the ramp's extension overshoots where the shot after it keeps moving the same way)."""
    while last - first + 1 > s.min_frames and first >= 1 and last + 1 < len(thumbs):
        a, b = thumbs[first - 1], thumbs[last + 1]
        n = last - first + 1
        w = (np.arange(1, n + 1) / (n + 1))[:, None]
        frames = thumbs[first:last + 1]
        err = np.sqrt(((frames - a - w * (b - a)) ** 2).mean(axis=1))
        nearer = np.minimum(np.sqrt(((frames - a) ** 2).mean(axis=1)), np.sqrt(((frames - b) ** 2).mean(axis=1)))
        ratio = err / np.maximum(nearer, 1e-3)
        if max(ratio[0], ratio[-1]) < s.end_ratio:
            break
        if ratio[-1] >= ratio[0]:
            last -= 1
        else:
            first += 1
    return first, last


def detail_dip(detail: np.ndarray, first: int, last: int) -> float:
    """Fine detail of the middle third of frames ``first..last`` over the straight line between the
    frames just outside them. A blend of two unrelated pictures averages their detail away (about
    half of it mid-dissolve); a pan or a zoom keeps it."""
    n = last - first + 1
    a, b = float(detail[first - 1]), float(detail[last + 1])
    line = a + (np.arange(1, n + 1) / (n + 1)) * (b - a)
    ratio = detail[first:last + 1] / np.maximum(line, 1e-3)
    return float(ratio[n // 3:max(n // 3 + 1, n - n // 3)].mean())


def replacement_ratio(thumbs: np.ndarray, first: int, last: int, min_gap: int = 12,
                      shots: tuple[int, int] | None = None) -> float:
    """RMS difference of the frames just outside ``first..last`` over the larger change of either
    side by itself across as many frames (``min_gap`` at least). A dissolve replaces one picture
    with another; a camera move changes the picture at about the pace it had before and keeps after.
    Each side is measured inside ``shots`` (the first and last frame of the two shots around the
    blend; the whole source when None): where either side has fewer than ``min_gap`` frames there,
    its own pace is unknown and the ratio is 0."""
    lo, hi = shots if shots is not None else (0, len(thumbs) - 1)
    gap = max(last - first + 2, min_gap)
    if first - 1 - lo < min_gap or hi - last - 1 < min_gap:
        return 0.0
    a, b = thumbs[first - 1], thumbs[last + 1]
    rms = lambda x: float(np.sqrt(np.mean(x ** 2)))  # noqa: E731
    own = max(rms(a - thumbs[max(lo, first - 1 - gap)]), rms(thumbs[min(hi, last + 1 + gap)] - b), 1.0)
    return rms(b - a) / own


def blend_span(thumbs: np.ndarray, g0: int, g1: int, lo: int, hi: int, s: BlendSettings,
               max_ratio: float | None = None, min_change: float | None = None,
               detail: np.ndarray | None = None, scan: bool = False,
               shots: tuple[int, int] | None = None) -> tuple[int, int] | None:
    """The blend around the boundary whose frames ``g0 .. g1 - 1`` are already out of the shots
    (``g0 == g1``: a plain cut before frame ``g1``), searched in frames ``lo .. hi``; ``scan``: where
    no detector cut (the detail dip is then required); ``shots``: the first and last frame of the
    shots on both sides (``replacement_ratio``)."""
    if g0 - lo < 4 or hi - g1 < 3:
        return None
    max_ratio = max_ratio or s.max_misfit_ratio
    win = thumbs[lo:hi + 1]
    ref_a, ref_b = _refs(win, 9, len(win) - 10, 9)
    bright = win.mean(axis=1)
    centre = (g0 + g1) // 2 - lo
    # a fade: a frame near the boundary far darker than both pictures
    near = slice(max(0, centre - s.max_frames), min(len(win), centre + s.max_frames + 1))
    dark = near.start + int(np.argmin(bright[near]))
    if bright[dark] - s.video_black < s.black * (min(float(ref_a.mean()), float(ref_b.mean())) - s.video_black):
        black = win[dark]
        out_ = _fitted_ramp(win[:dark + 1], ref_a, black, dark, s)  # fading out: climbs towards black
        in_ = _fitted_ramp(win[dark:], black, ref_b, 0, s)  # fading in
        first = out_[0] if out_ else dark
        last = dark + in_[1] if in_ else dark
        if (out_ or in_) and misfit_ratio(thumbs, lo + first, lo + last, lo + dark) < max_ratio:
            return lo + first, lo + last
    if np.sqrt(np.mean((ref_b - ref_a) ** 2)) < (min_change or s.min_change):
        return None
    span = _fitted_ramp(win, ref_a, ref_b, centre, s)
    if span is None:
        return None
    first, last = trim_clean_ends(thumbs, lo + span[0], lo + span[1], s)
    if last - first + 1 < s.min_frames or misfit_ratio(thumbs, first, last) >= max_ratio:
        return None
    if detail is not None and (first < 1 or last + 1 >= len(detail)):
        return None
    if detail is not None and detail_dip(detail, first, last) >= s.max_detail_dip:
        # no dip: a blend only around a detected cut, and only where the picture is replaced
        if scan or replacement_ratio(thumbs, first, last, s.replacement_frames, shots) < s.min_replacement:
            return None
    return first, last


def scan_blends(thumbs: np.ndarray, shots: list[tuple[int, int]], s: BlendSettings,
                detail: np.ndarray | None = None) -> list[tuple[int, int]]:
    """Blends inside shots (no detector cut there): every ``scan_step`` frames, with the stricter settings."""
    found: list[tuple[int, int]] = []
    for a, b in shots:
        for k in range(a + s.max_frames // 2, b - s.max_frames // 2 + 1, s.scan_step):
            if found and k <= found[-1][1]:
                continue
            span = blend_span(thumbs, k, k, max(a, k - s.max_frames), min(b, k + s.max_frames), s,
                              s.scan_misfit_ratio, s.scan_min_change, detail, scan=True)
            if span and a < span[0] and span[1] < b:
                found.append(span)
    return found


def drop_blends(shots: list[tuple[int, int]], dropped: list[DroppedSegment], thumbs: np.ndarray, min_len: int,
                s: BlendSettings = BlendSettings(), detail: np.ndarray | None = None, seen=None,
                ) -> tuple[list[tuple[int, int]], list[DroppedSegment]]:
    """Shots without the blended frames around each boundary between two of them; the frames they lose
    become ``transition`` segments of detector ``dissolve`` (replacing dropped segments they contain).
    ``seen(first, last)``: where a learned detector ran, whether it sees a transition there; a blend the
    scan finds inside a shot (no detector cut) stays only where it does (a moving take can climb like one).

    A piece of a shot shorter than ``min_len`` left next to a span joins it (a sliver of a dissolve)."""
    n = len(thumbs)
    if len(shots) < 2 or n == 0:
        return shots, dropped
    grey = thumbs.astype(np.float32)
    spans = []
    for i, ((a0, b0), (a1, b1)) in enumerate(zip(shots, shots[1:])):
        lo = max(a0, b0 + 1 - s.max_frames)
        hi = min(b1, a1 + s.max_frames - 1, n - 1)
        span = blend_span(grey, b0 + 1, a1, lo, hi, s, detail=detail, shots=(a0, b1))
        if span is None:
            continue
        first, last = max(a0, span[0] - s.margin), min(b1, span[1] + s.margin)
        if first <= b0 or last >= a1:  # it reaches into a shot
            spans.append((min(first, b0 + 1), max(last, a1 - 1)))
    if s.scan:
        spans += [(a - s.margin, b + s.margin) for a, b in scan_blends(grey, shots, s, detail)
                  if seen is None or seen(a, b)]
        spans = _union(spans)
    if not spans:
        return shots, dropped
    kept, excluded = exclude_spans(shots, spans, min_len)
    inside = [d for d in dropped if any(a <= d.first_frame and d.last_frame <= b for a, b in excluded)]
    rest = [d for d in dropped if d not in inside]
    n_frames = max(n, max(b for _, b in shots) + 1)
    gaps = uncovered(n_frames, kept + [(d.first_frame, d.last_frame) for d in rest])  # the spans, less what stays
    new = [DroppedSegment(a, b, TRANSITION, DETECTOR) for a, b in gaps]
    return kept, sorted(rest + new, key=lambda d: d.first_frame)


def _union(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]
