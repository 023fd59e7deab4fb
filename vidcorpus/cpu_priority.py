"""The CPU stages' tasks run at a lower scheduling priority than the model actors and the driver.

On a GPU node the CPU stages (decoding, shot detection, scoring, x264) keep every core busy, and
Ray starts every worker process, tasks and actors alike, at niceness 15 (``RAY_worker_niceness``):
the caption actor's threads (reading each clip's frames, the processor, handing batches to the GPU)
then wait for a core like any task (on the H100 node the caption stage captioned at 56% of its rate
alone while the ingest ran beside it, docs/benchmarks.md run 9b; how much of that the busy cores
cost, against its smaller batches, was not separated). With the tasks at niceness 19
(``ray.task_nice``) a thread that feeds a GPU gets a core first (a CFS weight of 36 against 15); the
tasks should lose about the CPU the actors use (not measured on a GPU node yet).

The model actors themselves start at ``ray.actor_nice`` (0) instead: Ray reads the worker niceness
from the actor's runtime_env (``RAY_worker_niceness``, as its own job supervisor does), so the raylet
starts them there with no privilege. Against tasks at 19 that is a CFS weight of 1024 against 15
(36 against 15 at Ray's 15): on the 2-core box a caption batch beside four x264 tasks took 1.22
to 1.23x its time alone with the actor at 0, against 1.86 to 2.1x at 15 (docs/benchmarks.md, "The
CPU stages' tasks at a lower priority"); an actor's compile (its set-up, run 12: over 439 s beside
the ingest) gets the cores first too (not measured on a GPU node yet). A runtime_env of its own also
gives an actor a worker of its own: Ray may otherwise start it in a worker a niced task left at 19.

Linux keeps the nice value per thread: ``lower_priority`` changes the calling thread's, and the
threads and processes it starts inherit it (the splitter's decoding child, FFmpeg's and the
scalers' threads). Raising it needs no privilege; lowering it again does, so it is only raised.
"""

from __future__ import annotations

import functools
import os


def lower_priority(nice: int) -> None:
    """Raise this thread's niceness to ``nice`` if it is below (0 or an OS without it: nothing)."""
    if nice <= 0 or not hasattr(os, "getpriority"):
        return
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) < nice:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError:  # a container that forbids it: the task runs as before
        pass


RAY_WORKER_NICENESS = 15  # where Ray's raylet starts a worker whose runtime_env does not say otherwise


def actor_priority(nice: int) -> dict:
    """Ray options (``ray.remote`` / ``map_batches``) that start an actor's worker at niceness ``nice``
    instead of Ray's 15; {} for 15. Env vars merge with the job's runtime_env."""
    if nice == RAY_WORKER_NICENESS:
        return {}
    return {"runtime_env": {"env_vars": {"RAY_worker_niceness": str(nice)}}}


def niced(fn, nice: int):
    """``fn`` called after ``lower_priority(nice)``: the form a Ray task of a CPU stage takes."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        lower_priority(nice)
        return fn(*args, **kwargs)

    return call
