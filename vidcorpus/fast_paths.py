"""Fast paths that check themselves before a job trusts them.

A fast path computes what a reference path computes, faster, by leaning on another library's
internals: the captioner's fused prefill and compiled decoding step (transformers' Qwen-VL layers,
its cache and attention interfaces) and the CLIP scorer's stills (frames kept at extraction instead
of decoded again). A new release of that library can change the internals without an error, only
different numbers (transformers 5.25 renamed the decoder layers' cache argument: the fused prefill
then ran without a cache and its captions drifted from the model's own). So each fast path:

1. is used only with library versions inside the range it was tested with (``TESTED``; the same
   bounds as ``pyproject.toml``, a test keeps them equal); outside it, the path switches itself off
   for the job with one warning, unless ``VIDCORPUS_ALLOW_UNTESTED=1`` (``.ci/latest`` sets it to
   test the fast paths on the newest releases before a bound is widened);
2. compares its first batch of a job with the reference path on a small probe (each caller
   knows what "equal" means for its numbers) and switches itself off for the job when they disagree.

A switch-off is a ``FastPathWarning``: the stage's warning capture (vidcorpus/stage.py) carries it
to the driver's log and the run's ``events`` table.
"""

from __future__ import annotations

import os
import warnings
from importlib import metadata

from packaging.specifiers import SpecifierSet
from packaging.version import Version

ALLOW_UNTESTED_ENV = "VIDCORPUS_ALLOW_UNTESTED"

# fast path -> {distribution: versions it was tested with}. Widen an upper bound only after
# `.ci/latest` passed with the newer release (and change pyproject.toml's bound with it).
_TRANSFORMERS = ">=4.56,<5.26"  # Qwen-VL decoder layers, cache and attention interfaces
TESTED: dict[str, dict[str, str]] = {
    "static_graph": {"transformers": _TRANSFORMERS},
    "fast_prefill": {"transformers": _TRANSFORMERS, "torch": ">=2.6"},
    "compile_decode": {"transformers": _TRANSFORMERS, "torch": ">=2.6"},
    "shared_vision": {"transformers": _TRANSFORMERS},  # wraps the vision tower that get_*_features calls
    "stills": {},  # no library internals: the probe alone guards it
}


class FastPathWarning(RuntimeWarning):
    """A fast path switched itself off; the job goes on with the reference path."""


def installed_version(dist: str) -> Version | None:
    try:
        return Version(metadata.version(dist))
    except metadata.PackageNotFoundError:
        return None


def untested_reason(path: str, tested: dict[str, dict[str, str]] | None = None) -> str | None:
    """Why ``path`` is outside its tested versions (e.g. "transformers 5.26.0 is outside
    >=4.56,<5.26"), or None when every version it depends on was tested (or the override is set)."""
    if os.environ.get(ALLOW_UNTESTED_ENV, "") not in ("", "0"):
        return None
    for dist, spec in (tested or TESTED).get(path, {}).items():
        version = installed_version(dist)
        if version is not None and not SpecifierSet(spec).contains(version, prereleases=True):
            return f"{dist} {version} is outside the tested range {spec}"
    return None


def switch_off(path: str, reason: str) -> None:
    """Say, once per call site's decision, that ``path`` is off for this job and why."""
    warnings.warn(f"fast path {path} off for this job: {reason}; using the reference path",
                  FastPathWarning, stacklevel=3)


def usable(path: str) -> bool:
    """Whether ``path`` may run with the installed libraries; warns (switch_off) when it may not."""
    reason = untested_reason(path)
    if reason is None:
        return True
    switch_off(path, reason)
    return False
