"""torch.compile's caches kept under the workdir, so a fresh node starts warm.

PyTorch's own compile caches (Inductor's FX-graph cache and the AOTAutograd cache, on by default)
live in a local folder (``TORCHINDUCTOR_CACHE_DIR``, ``/tmp/torchinductor_<user>``): on an H100 they
take the caption actor's set-up from 173 s to 43 s, but only for a process on a node that compiled
the same graphs before (docs/benchmarks.md, "caption_warmup_h100"). A job's nodes are usually fresh.

``torch.compiler.save_cache_artifacts()`` packs what a process compiled (or hot-loaded) into bytes
and ``load_cache_artifacts()`` puts them back into another process's caches, on another machine.
Both caches look an entry up by a key over the graph, its inputs, the torch and triton versions and
the device, so a stale or foreign entry is a miss, never a wrong kernel: the file only needs a name
that keeps unrelated setups apart (the job, the torch version, the GPU model). Several actors may
write one file: each writes it whole (``storage.write_atomic``) and any of their copies serves.
"""

from __future__ import annotations

import re
import warnings

import torch

from vidcorpus.storage import join_url, read_bytes, write_atomic


def artifacts_url(folder: str, job: str, device: torch.device | str | None = None) -> str:
    """The file of ``job``'s compile artifacts for this torch version and device model."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    model = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    tag = re.sub(r"[^A-Za-z0-9.-]+", "_", f"{job}-torch{torch.__version__}-{model}").strip("_")
    return join_url(folder, f"{tag}.bin")


def load_artifacts(url: str) -> bytes | None:
    """Hot-load the artifacts at ``url`` into this process's compile caches; the bytes loaded, or
    None when there are none yet. A file that does not load costs a warning, never the job (the
    compiles then run as on a fresh node)."""
    try:
        data = read_bytes(url)
    except FileNotFoundError:
        return None
    except OSError as exc:  # unreachable or forbidden store: compile as on a fresh node
        warnings.warn(f"compile cache {url} not read ({type(exc).__name__}: {exc}); compiling from scratch",
                      RuntimeWarning, stacklevel=2)
        return None
    try:
        loaded = torch.compiler.load_cache_artifacts(data)  # None for bytes it cannot read (it logs why)
        problem = None if loaded is not None else "unreadable artifacts"
    except Exception as exc:  # noqa: BLE001 - a speed-up: a bad file means compiling, not failing
        problem = f"{type(exc).__name__}: {str(exc)[:200]}"
    if problem:
        warnings.warn(f"compile cache {url} did not load ({problem}); compiling from scratch",
                      RuntimeWarning, stacklevel=2)
        return None
    return data


def save_artifacts(url: str, loaded: bytes | None = None) -> bool:
    """Write what this process compiled or loaded to ``url``; False when there is nothing or it is
    what was loaded already (no rewrite)."""
    saved = torch.compiler.save_cache_artifacts()
    if saved is None or not saved[0] or saved[0] == loaded:
        return False
    try:
        write_atomic(url, saved[0], fsync=False)  # a cache: a lost write only means compiling again
    except Exception as exc:  # noqa: BLE001 - a full disk or a forbidden store must not fail the job
        warnings.warn(f"compile cache {url} not written ({type(exc).__name__}: {exc})", RuntimeWarning, stacklevel=2)
        return False
    return True
