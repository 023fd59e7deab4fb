"""torch.compile's caches kept under the workdir, so a fresh node starts warm.

PyTorch's own compile caches (Inductor's FX-graph cache and the AOTAutograd cache, on by default)
live in a local folder (``TORCHINDUCTOR_CACHE_DIR``, ``/tmp/torchinductor_<user>``): on an H100 they
take the caption actor's set-up from 173 s to 43 s, but only for a process on a node that compiled
the same graphs before (docs/benchmarks.md, "caption_warmup_h100"). A job's nodes are usually fresh.

``torch.compiler.save_cache_artifacts()`` packs what a process compiled (or hot-loaded) into bytes
and ``load_cache_artifacts()`` puts them back into another process's caches, on another machine.
Both caches look an entry up by a key over the graph, its inputs, the torch and triton versions and
the device, so a stale or foreign entry is a miss, never a wrong kernel: the file only needs a name
that keeps unrelated setups apart (the job and its settings, the torch version, the GPU model).
Several actors may write one file: each writes it whole (``storage.write_atomic``) and any of their
complete copies serves; an actor that compiled nothing new leaves the file alone. A partial set (a
caption actor's after the first of its warm-up shapes, so that a job stopped during a later one
still leaves it) is written only where there is no file yet: it never replaces another actor's
fuller file.

The file holds pickled objects and compiled kernels that the actors load and run: keep it where
only the jobs' own identities can write (as the workdir, not a world-writable bucket).
"""

from __future__ import annotations

import re
import warnings

import fsspec
import torch

from vidcorpus.storage import join_url, read_bytes, write_atomic


def artifacts_url(folder: str, job: str, device: torch.device | str | None = None) -> str:
    """The file of ``job``'s compile artifacts for this torch version and device model."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    model = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    tag = re.sub(r"[^A-Za-z0-9.-]+", "_", f"{job}-torch{torch.__version__}-{model}").strip("_")
    return join_url(folder, f"{tag}.bin")


def _keys(info) -> frozenset[tuple[str, str]]:
    """(kind, key) of every artifact a CacheInfo lists."""
    return frozenset((kind, key) for kind, keys in info.artifacts.items() for key in keys)


def _warn(url: str, what: str, exc: Exception | str) -> None:
    why = exc if isinstance(exc, str) else f"{type(exc).__name__}: {str(exc)[:200]}"
    warnings.warn(f"compile cache {url} {what} ({why}); compiling as on a fresh node", RuntimeWarning, stacklevel=3)


def load_artifacts(url: str) -> frozenset | None:
    """Hot-load the artifacts at ``url`` into this process's compile caches; the keys of what was
    loaded (for ``save_artifacts``), or None when there is no file yet. A file or store that cannot
    be read or loaded costs a warning, never the job."""
    try:
        data = read_bytes(url)
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - unreachable store, no credentials, no s3fs: a speed-up lost
        _warn(url, "not read", exc)
        return None
    try:
        info = torch.compiler.load_cache_artifacts(data)  # None for bytes it cannot read (it logs why)
    except Exception as exc:  # noqa: BLE001 - same: a bad file means compiling, not failing
        _warn(url, "did not load", exc)
        return None
    if info is None:
        _warn(url, "did not load", "unreadable artifacts")
        return None
    return _keys(info)


def save_artifacts(url: str, loaded: frozenset | None = None, partial: bool = False) -> bool:
    """Write what this process compiled or loaded to ``url``; False when there is nothing, or
    nothing beyond the ``loaded`` keys (the file already holds it: no rewrite, which could also drop
    what only the file's first writer recorded), or, with ``partial`` (more compiles to come), a
    file is there already, or the write failed (a warning)."""
    try:
        if partial and _exists(url):
            return False
        saved = torch.compiler.save_cache_artifacts()
    except Exception as exc:  # noqa: BLE001 - a speed-up: the job goes on
        _warn(url, "not saved", exc)
        return False
    if saved is None or not saved[0] or (loaded is not None and _keys(saved[1]) <= loaded):
        return False
    try:
        write_atomic(url, saved[0], fsync=False)  # a cache: a lost write only means compiling again
    except Exception as exc:  # noqa: BLE001 - a full disk or a forbidden store must not fail the job
        _warn(url, "not written", exc)
        return False
    return True


def _exists(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)
