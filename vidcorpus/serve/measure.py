"""How good is each filter? Precision and recall from people's labels, with confidence intervals.

A filter is one predicate of a recipe on one score (``aesthetic>=4.5``). It *flags* a clip (would
drop it) when the clip has the score and fails the predicate. A ``bad`` label says the clip should
be dropped, ``good`` that it should be kept. So, over clips that have the score:

  precision = share of flagged clips that are bad      recall = share of bad clips that are flagged

Labels are a sample, and a biased one when people label what they happen to browse. The sampling
mode (``/sample?score=...``) draws uniformly within the two strata of a filter (flagged, passed
under the recipe's threshold) and records ``origin = sample:<score>``. When such labels exist,
only they are used, each weighted by its stratum's size over its number of labels
(Horvitz-Thompson), which makes the estimates unbiased for the whole catalog; otherwise every
label counts once and the estimates are marked biased. Intervals: a stratified bootstrap
(resampling the labels within each stratum), 95 %, seeded so the numbers are repeatable.
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass, field

import duckdb
import numpy as np

from vidcorpus.catalog.sql_names import ident
from vidcorpus.recipe_model import Predicate, Recipe
from vidcorpus.serve.labels import LATEST_LABELS_SQL

_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq,
        "!=": operator.ne}
BOOTSTRAP = 400
MIN_LABELS_FOR_INTERVAL = 5  # below this a bootstrap interval collapses to a point and says nothing
CONFIDENCE = 0.95


@dataclass
class Estimate:
    """One filter at one threshold."""

    score: str
    op: str
    threshold: float
    flagged: int                 # clips (with the score) the filter drops at this threshold
    passed: int
    labels: int                  # labels used
    bad_labels: int
    sampled: bool                # True: uniform per-stratum sample labels (unbiased); False: every label, biased
    precision: float | None = None
    precision_ci: tuple[float, float] | None = None
    recall: float | None = None
    recall_ci: tuple[float, float] | None = None

    @property
    def predicate(self) -> str:
        return str(Predicate(score=self.score, op=self.op, value=self.threshold))

    def as_dict(self) -> dict:
        return asdict(self) | {"predicate": self.predicate}


@dataclass
class LabelSet:
    """The labels one filter is measured from: score value, bad or not, weight."""

    values: np.ndarray
    bad: np.ndarray
    stratum: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # flagged at sampling time
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sampled: bool = False


def _column_exists(con: duckdb.DuckDBPyConnection, score: str) -> bool:
    return bool(con.execute("SELECT 1 FROM information_schema.columns WHERE table_name = 'clips_wide' "
                            "AND column_name = ?", [score]).fetchall())


def population(con: duckdb.DuckDBPyConnection, pred: Predicate) -> tuple[int, int]:
    """(flagged, passed) clips among those with the score."""
    if not _column_exists(con, pred.score):
        return 0, 0
    score = ident(pred.score)
    row = con.execute(f"SELECT count(*) FILTER (WHERE NOT ({score} {pred.op} ?)), "
                      f"count(*) FILTER (WHERE {score} {pred.op} ?) FROM clips_wide "
                      f"WHERE {score} IS NOT NULL AND NOT isnan({score})",
                      [pred.value, pred.value]).fetchall()[0]
    return int(row[0]), int(row[1])


def label_set(con: duckdb.DuckDBPyConnection, pred: Predicate) -> LabelSet:
    """The labels to measure ``pred`` with (its own sample's when there are any), weighted."""
    empty = LabelSet(np.zeros(0), np.zeros(0, dtype=bool))
    if not _column_exists(con, pred.score):
        return empty
    try:
        score = ident(pred.score)
        rows = con.execute(f"SELECT w.{score}, l.label = 'bad', l.origin FROM ({LATEST_LABELS_SQL}) l "
                           f"JOIN clips_wide w USING (clip_id) WHERE w.{score} IS NOT NULL").fetchall()
    except duckdb.CatalogException:  # no labels table (a snapshot from before labels)
        return empty
    origin = f"sample:{pred.score}"
    sampled = [r for r in rows if r[2] == origin]
    use = sampled or rows
    values = np.array([float(r[0]) for r in use])
    bad = np.array([bool(r[1]) for r in use], dtype=bool)
    stratum = ~np.array([_OPS[pred.op](v, pred.value) for v in values], dtype=bool)
    weights = np.ones(len(use))
    if sampled:
        flagged_n, passed_n = population(con, pred)
        for flag, size in ((True, flagged_n), (False, passed_n)):
            members = stratum == flag
            if members.any():
                weights[members] = size / members.sum()
    return LabelSet(values, bad, stratum, weights, bool(sampled))


def _point(values, bad, weights, op: str, t: float) -> tuple[float | None, float | None]:
    flagged = ~_OPS[op](values, t)
    tp = float(weights[flagged & bad].sum())
    fp = float(weights[flagged & ~bad].sum())
    fn = float(weights[~flagged & bad].sum())
    precision = tp / (tp + fp) if tp + fp > 0 else None
    recall = tp / (tp + fn) if tp + fn > 0 else None
    return precision, recall


def _interval(samples: list[float]) -> tuple[float, float] | None:
    if len(samples) < BOOTSTRAP // 2:  # undefined in too many resamples to say anything
        return None
    lo, hi = np.quantile(samples, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return float(lo), float(hi)


def estimate(con: duckdb.DuckDBPyConnection, pred: Predicate, labels: LabelSet | None = None,
             seed: int = 0) -> Estimate:
    """Precision and recall of ``pred`` with 95 % intervals from the labels."""
    labels = labels if labels is not None else label_set(con, pred)
    flagged_n, passed_n = population(con, pred)
    est = Estimate(pred.score, pred.op, pred.value, flagged_n, passed_n, int(len(labels.values)),
                   int(labels.bad.sum()), labels.sampled)
    if not len(labels.values):
        return est
    values = labels.values
    est.precision, est.recall = _point(values, labels.bad, labels.weights, pred.op, pred.value)
    if len(values) < MIN_LABELS_FOR_INTERVAL:
        return est
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels.stratum == s) for s in (True, False)] if labels.sampled else \
        [np.arange(len(values))]
    precisions, recalls = [], []
    for _ in range(BOOTSTRAP):
        idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups if len(g)])
        p, r = _point(values[idx], labels.bad[idx], labels.weights[idx], pred.op, pred.value)
        if p is not None:
            precisions.append(p)
        if r is not None:
            recalls.append(r)
    est.precision_ci, est.recall_ci = _interval(precisions), _interval(recalls)
    return est


@dataclass
class Suggestion:
    current: Estimate
    proposed: Estimate | None
    candidates: list[tuple[float, float | None, float | None]]  # threshold, precision, recall
    note: str = ""


def suggest(con: duckdb.DuckDBPyConnection, pred: Predicate, min_labels: int = 10) -> Suggestion:
    """The threshold that best separates bad from good labelled clips (highest F1 of "flagged = bad"),
    among the labelled clips' own score values; with its estimates and intervals."""
    labels = label_set(con, pred)
    current = estimate(con, pred, labels)
    if len(labels.values) < min_labels or labels.bad.all() or not labels.bad.any():
        return Suggestion(current, None, [], note=f"needs {min_labels}+ labels, good and bad "
                                                  f"(has {len(labels.values)}, {int(labels.bad.sum())} bad)")
    cuts = np.unique(labels.values)
    if len(cuts) > 60:
        cuts = np.unique(np.quantile(labels.values, np.linspace(0, 1, 61)))
    candidates, best, best_f1 = [], None, -1.0
    for t in cuts:
        p, r = _point(labels.values, labels.bad, labels.weights, pred.op, float(t))
        candidates.append((float(t), p, r))
        f1 = 2 * p * r / (p + r) if p and r else 0.0
        if f1 > best_f1 + 1e-12 or (abs(f1 - best_f1) <= 1e-12 and best is not None
                                     and abs(t - pred.value) < abs(best - pred.value)):
            best, best_f1 = float(t), f1
    proposed = estimate(con, pred.model_copy(update={"value": best}), labels)
    return Suggestion(current, proposed, candidates)


def filter_quality(con: duckdb.DuckDBPyConnection, recipe: Recipe, score: str | None = None) -> list[dict]:
    """One row per predicate of ``recipe`` (or those on ``score``): its estimates now and at the
    suggested threshold (``current``, ``proposed`` or None, ``note``); for the CLI and the report."""
    rows = []
    for pred in recipe.predicates:
        if score and pred.score != score:
            continue
        s = suggest(con, pred)
        rows.append({"current": s.current, "proposed": s.proposed, "note": s.note})
    return rows
