"""Matplotlib figures of the audit report (Agg backend: no display, same output on every machine).

Each function draws one small PNG from plain arrays and returns nothing; the report decides what
to draw and where. Figures are closed at once so a report of many scores stays light on memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

KEPT, DROPPED = "#2b8a3e", "#c92a2a"
DPI = 80


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def funnel_plot(stages: Sequence[str], counts: Sequence[int], hours: Sequence[float | None], path: Path) -> None:
    """Horizontal bars of items per stage, labelled with the count and hours."""
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(stages) + 1))
    y = np.arange(len(stages))[::-1]
    ax.barh(y, counts, color="#4263eb")
    ax.set_yticks(y, list(stages))
    for yi, n, h in zip(y, counts, hours):
        ax.text(n, yi, f" {n}" + (f"  ({h:.3g} h)" if h else ""), va="center", fontsize=9)
    ax.set_xlim(0, max(list(counts) + [1]) * 1.35)
    ax.set_xlabel("items")
    ax.set_title("funnel")
    _save(fig, path)


def score_plot(name: str, bins: np.ndarray, kept: np.ndarray, dropped: np.ndarray,
               thresholds: Sequence[tuple[str, float]], curve: tuple[np.ndarray, np.ndarray] | None, total: int,
               path: Path) -> None:
    """Stacked histogram of kept/dropped counts per bin (computed in SQL) with the recipe's thresholds,
    and the retention curve.

    ``curve`` is (thresholds, clips kept) when the recipe has a predicate on this score: how many
    clips the whole recipe would keep if only this threshold moved.
    """
    fig, axes = plt.subplots(1, 2 if curve is not None else 1, figsize=(8 if curve is not None else 4.2, 2.8),
                             squeeze=False)
    ax = axes[0][0]
    centers = (bins[:-1] + bins[1:]) / 2
    ax.hist([centers, centers], bins=bins, weights=[kept, dropped], stacked=True, color=[KEPT, DROPPED],
            label=["kept", "dropped"])
    lo, hi = bins[0], bins[-1]
    for op, value in thresholds:
        label = f"{op}{value:g}"
        if lo <= value <= hi:
            ax.axvline(value, color="black", linestyle="--", linewidth=1)
            ax.annotate(label, (value, 1), xycoords=("data", "axes fraction"), fontsize=8, ha="left", va="top",
                        rotation=90)
        else:  # off the data's range: say so at the edge instead of squashing the histogram
            left = value < lo
            ax.annotate(("\u2190 " if left else "") + label + ("" if left else " \u2192"), (0.02 if left else 0.98, 0.6),
                        xycoords="axes fraction", fontsize=8, ha="left" if left else "right")
    ax.set_title(f"{name} (n={int(kept.sum() + dropped.sum())})", fontsize=10)
    ax.set_xlabel(name)
    ax.set_ylabel("clips")
    ax.legend(fontsize=7, loc="upper right")
    if curve is not None:
        ax2 = axes[0][1]
        xs, ys = curve
        ax2.plot(xs, ys, color="#4263eb")
        for op, value in thresholds:
            if xs[0] <= value <= xs[-1]:
                ax2.axvline(value, color="black", linestyle="--", linewidth=1)
        ax2.set_ylim(0, max(total, 1) * 1.05)
        ax2.set_title("clips kept vs threshold", fontsize=10)
        ax2.set_xlabel(f"{name} threshold")
        ax2.set_ylabel(f"kept of {total}")
    _save(fig, path)


def scatter_plot(x: np.ndarray, y: np.ndarray, kept: np.ndarray, xname: str, yname: str,
                 xthr: Sequence[float], ythr: Sequence[float], path: Path) -> None:
    """One score against another, coloured by the decision, with both thresholds."""
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(x[kept], y[kept], s=12, color=KEPT, label="kept", alpha=0.8)
    ax.scatter(x[~kept], y[~kept], s=12, color=DROPPED, label="dropped", alpha=0.8)
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    off = []  # thresholds outside the data's range are listed, not drawn (they would squash the points)
    for v in xthr:
        ax.axvline(v, color="black", linestyle="--", linewidth=1) if x0 <= v <= x1 else off.append(f"{xname} {v:g}")
    for v in ythr:
        ax.axhline(v, color="black", linestyle="--", linewidth=1) if y0 <= v <= y1 else off.append(f"{yname} {v:g}")
    if off:
        ax.annotate("thresholds off scale: " + ", ".join(off), (0.01, 0.01), xycoords="axes fraction", fontsize=7)
    ax.set_xlabel(xname)
    ax.set_ylabel(yname)
    ax.set_title(f"{xname} vs {yname}", fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, path)


def bar_plot(labels: Sequence[str], counts: Sequence[int], title: str, path: Path, color: str = DROPPED) -> None:
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(labels) + 1.2))
    y = np.arange(len(labels))[::-1]
    ax.barh(y, counts, color=color)
    ax.set_yticks(y, list(labels), fontsize=8)
    for yi, n in zip(y, counts):
        ax.text(n, yi, f" {n}", va="center", fontsize=8)
    ax.set_xlim(0, max(list(counts) + [1]) * 1.2)
    ax.set_title(title, fontsize=10)
    _save(fig, path)


def box_plot(groups: dict[str, dict], ylabel: str, title: str, path: Path) -> None:
    """One box (with its mean) per group, labelled by the group's key; each group's statistics
    (``matplotlib.cbook.boxplot_stats`` keys, computed in SQL) drawn with ``Axes.bxp``."""
    labels = list(groups)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(labels) + 2), 3))
    ax.bxp([{k: groups[g][k] for k in ("mean", "med", "q1", "q3", "whislo", "whishi", "fliers")} for g in labels],
           showmeans=True)
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=8, rotation=20)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    _save(fig, path)


def caption_length_plot(groups: dict[str, dict], path: Path) -> None:
    """Caption length in words per (caption version, kind): one box per group."""
    box_plot(groups, "words", "caption length per version / kind", path)


def scatter_note(shown: int, total: int) -> str:
    return "" if shown >= total else f"{shown:,} of {total:,} clips shown (a sample by clip-id hash)"


BUSY, HELD, IDLE = "#4263eb", "#f08c00", "#e9ecef"


def timeline_plot(stages: Sequence[str], spans: dict[str, list[tuple[str, float, float]]], wall_s: float,
                  labels: Sequence[str], path: Path) -> None:
    """One lane per stage over the run's wall time: busy (blue), waiting for output with input queued
    (orange), waiting for input (grey, the rest); ``labels`` go on the right of each lane."""
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(stages) + 1.3))
    y = np.arange(len(stages))[::-1]
    for yi, name, label in zip(y, stages, labels):
        ax.broken_barh([(0, wall_s)], (yi - 0.35, 0.7), color=IDLE)
        for state, color in (("wait_output", HELD), ("busy", BUSY)):
            bars = [(a, b - a) for s, a, b in spans.get(name, []) if s == state]
            if bars:
                ax.broken_barh(bars, (yi - 0.35, 0.7), color=color)
        ax.text(wall_s * 1.01, yi, label, va="center", fontsize=8)
    ax.set_yticks(y, list(stages), fontsize=9)
    ax.set_xlim(0, max(wall_s, 1e-6) * 1.32)
    ax.set_xlabel("seconds since the run started")
    ax.set_title("where the time goes: busy (blue), input queued but not taken (orange), waiting for input (grey)",
                 fontsize=9)
    _save(fig, path)
