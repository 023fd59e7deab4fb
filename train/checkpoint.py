"""Training checkpoints: atomic, the last N kept, everything a resumed run needs to continue exactly
(the cursor, not the history).

Layout of a run directory (local path or any fsspec URL)::

    {run}/checkpoints/step-00000010/unet/              trained UNet (diffusers save_pretrained)
                                    unet_ema/          EMA weights (what export uses)
                                    trainer_state.pt   optimizer, LR schedule, RNG states
                                    train_state.json   step, data cursor, selection, catalog facts
                                                       (written LAST: the marker)
    {run}/train_samples/rank-*/steps-*.parquet         the clip ids of every step (train/sample_log.py):
                                                       never inside a checkpoint, whose size so stays
                                                       independent of the step count

Atomicity: locally a checkpoint is written into ``.tmp-step-...`` and renamed into place (a crash
leaves only a temp folder, removed by the next save). Object stores have no rename, so remotely
the files are uploaded with ``train_state.json`` last, and a checkpoint without it is incomplete:
``list_checkpoints`` ignores it and the next save removes it.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import tempfile

import fsspec
import numpy as np
import torch

from vidcorpus.storage import is_url, join_url, local_path, publish_dir

CKPT_DIR = "checkpoints"
STATE_JSON = "train_state.json"
TRAINER_PT = "trainer_state.pt"
_STEP_RE = re.compile(r"^step-(\d+)$")


def step_name(step: int) -> str:
    return f"step-{step:08d}"


# -- RNG states -----------------------------------------------------------------------------------

def rng_states(generator: torch.Generator) -> dict:
    """Every RNG a step draws from: Python, NumPy, torch CPU and CUDA, and the loop's generator."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "generator": generator.get_state(),
        "generator_device": str(generator.device),
    }


def set_rng_states(states: dict, generator: torch.Generator) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    generator.set_state(states["generator"])


# -- save -----------------------------------------------------------------------------------------

def save_checkpoint(run_dir: str, step: int, unet, ema, trainer_state: dict, state: dict, keep: int) -> str:
    """Write checkpoint ``step`` of ``run_dir`` atomically and prune to the newest ``keep`` (0: all)."""
    name = step_name(step)
    root = join_url(run_dir, CKPT_DIR)
    final = join_url(root, name)
    if not is_url(run_dir):
        with publish_dir(final) as tmp:  # replaces a re-save of the same step (rerun of a finished run)
            _write_body(tmp, unet, ema, trainer_state)
            _write_state(tmp, state)  # last
    else:
        tmp = tempfile.mkdtemp(prefix="vidcorpus-ckpt-")
        try:
            body = os.path.join(tmp, "body")
            os.makedirs(body)
            _write_body(body, unet, ema, trainer_state)
            _write_state(tmp, state)
            fs, path = fsspec.core.url_to_fs(final)
            if fs.exists(path):
                fs.rm(path, recursive=True)
            fs.put(body.rstrip("/") + "/", path.rstrip("/") + "/", recursive=True)
            fs.put_file(os.path.join(tmp, STATE_JSON), join_url(path, STATE_JSON))  # last: the completion marker
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    prune_checkpoints(run_dir, keep)
    return final


def _write_body(target: str | os.PathLike, unet, ema, trainer_state: dict) -> None:
    unet.save_pretrained(os.path.join(target, "unet"))
    ema.save_pretrained(os.path.join(target, "unet_ema"))
    torch.save(trainer_state, os.path.join(target, TRAINER_PT))


def _write_state(target: str | os.PathLike, state: dict) -> None:
    """``train_state.json``, written after the body: the checkpoint's completion marker."""
    with open(os.path.join(target, STATE_JSON), "w") as f:
        json.dump(state, f, indent=1)


def list_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints of a run, oldest first, as (step, url)."""
    root = join_url(run_dir, CKPT_DIR)
    fs, path = fsspec.core.url_to_fs(root)
    if not fs.exists(path):
        return []
    out = []
    for entry in fs.ls(path, detail=False):
        base = entry.rstrip("/").rsplit("/", 1)[-1]
        m = _STEP_RE.match(base)
        if m and fs.exists(entry.rstrip("/") + "/" + STATE_JSON):
            out.append((int(m.group(1)), join_url(root, base)))
    return sorted(out)


def prune_checkpoints(run_dir: str, keep: int) -> None:
    """Remove all but the newest ``keep`` complete checkpoints, and any incomplete leftovers."""
    root = join_url(run_dir, CKPT_DIR)
    fs, path = fsspec.core.url_to_fs(root)
    if not fs.exists(path):
        return
    complete = list_checkpoints(run_dir)
    drop = complete[:-keep] if keep and keep > 0 else []
    complete_names = {u.rsplit("/", 1)[-1] for _s, u in complete}
    for entry in fs.ls(path, detail=False):
        base = entry.rstrip("/").rsplit("/", 1)[-1]
        if base.startswith(".tmp-") or (_STEP_RE.match(base) and base not in complete_names):
            fs.rm(entry, recursive=True)
    for _s, url in drop:
        fs.rm(fsspec.core.url_to_fs(url)[1], recursive=True)


# -- load -----------------------------------------------------------------------------------------

def resolve_resume(resume: str, run_dir: str | None = None) -> str | None:
    """A checkpoint URL from ``--resume``: "latest"/"auto" (newest of ``run_dir``, None if it has none),
    a run directory (its newest), or a checkpoint directory itself."""
    if resume in ("latest", "auto"):
        if run_dir is None:
            raise ValueError("--resume latest needs the run directory (--output)")
        found = list_checkpoints(run_dir)
        return found[-1][1] if found else None
    fs, path = fsspec.core.url_to_fs(resume)
    if fs.exists(path.rstrip("/") + "/" + STATE_JSON):
        return resume.rstrip("/")
    found = list_checkpoints(resume)
    if not found:
        raise FileNotFoundError(f"no complete checkpoint at {resume} (looked for {STATE_JSON} and {CKPT_DIR}/step-*)")
    return found[-1][1]


def read_state(ckpt: str) -> dict:
    with fsspec.open(join_url(ckpt, STATE_JSON), "rt") as f:
        return json.load(f)


def read_trainer_state(ckpt: str) -> dict:
    with fsspec.open(join_url(ckpt, TRAINER_PT), "rb") as f:
        buf = io.BytesIO(f.read())
    # Our own file: optimizer tensors plus RNG states (numpy's state is a tuple holding an array).
    return torch.load(buf, map_location="cpu", weights_only=False)


def load_unet_weights(ckpt: str, sub: str, module: torch.nn.Module) -> None:
    """Load ``{ckpt}/{sub}`` (diffusers save_pretrained of the UNet) into ``module`` in place.

    The UNet class is the module's own (I2VGenXLUNet for the base, UNet3DConditionModel for the
    refiner)."""
    cls = type(module)

    if not is_url(ckpt):
        loaded = cls.from_pretrained(local_path(join_url(ckpt, sub)), torch_dtype=torch.float32)
    else:
        tmp = tempfile.mkdtemp(prefix="vidcorpus-ckpt-")
        try:
            fs, path = fsspec.core.url_to_fs(join_url(ckpt, sub))
            fs.get(path.rstrip("/") + "/", tmp.rstrip("/") + "/", recursive=True)
            loaded = cls.from_pretrained(tmp, torch_dtype=torch.float32)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    missing, unexpected = module.load_state_dict(loaded.state_dict(), strict=True)
    assert not missing and not unexpected
