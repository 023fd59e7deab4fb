"""Where model weights are found, checked before anything loads them: a local file or directory,
the Hugging Face cache, or a hub / URL this machine can reach. Otherwise one clear error naming
the fix, instead of a library retrying the network for a minute inside a worker.

Shared by the presets' preflight and every stage that loads a model (CLIP, the aesthetic head, the
captioner, the I2VGen-XL and refiner components).
"""

from __future__ import annotations

import os
import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from huggingface_hub import snapshot_download

from vidcorpus.errors import ModelNotAvailable
from vidcorpus.storage import is_url, local_path, publishing


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Can this machine open a connection to ``host`` (never, under HF_HUB_OFFLINE)?"""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def require_hf_model(name_or_dir: str, field: str) -> str:
    """A local directory, a cached hub snapshot, or a hub id we can reach; otherwise fail fast.

    The error names the fix instead of letting transformers/diffusers retry the hub for a minute.
    """
    if Path(name_or_dir).is_dir():
        return name_or_dir
    if Path(name_or_dir).exists() or name_or_dir.startswith((".", "/")):
        raise ModelNotAvailable(f"models.{field}: {name_or_dir} is not a model directory")
    try:
        return snapshot_download(name_or_dir, local_files_only=True)
    except Exception:  # noqa: BLE001 - any miss means "not cached"
        pass
    if hub_reachable():
        return name_or_dir
    raise ModelNotAvailable(
        f"models.{field}: '{name_or_dir}' is not in the Hugging Face cache and the hub cannot be reached. "
        f"Fix: on a machine with network run `huggingface-cli download {name_or_dir}` (and copy the cache), "
        f"or set models.{field}=/path/to/local/dir, or use --preset tiny for offline test models."
    )


def require_file(path_or_url: str, field: str) -> str:
    """A local weights file, or an http(s) URL we can reach; otherwise fail fast naming the fix."""
    if not is_url(path_or_url):
        if Path(local_path(path_or_url)).is_file():
            return local_path(path_or_url)
        raise ModelNotAvailable(f"models.{field}: file {path_or_url} does not exist")
    host = urlsplit(path_or_url).hostname or ""
    cached = Path(os.environ.get("VIDCORPUS_CACHE", Path.home() / ".cache" / "vidcorpus")) / "downloads"
    local = cached / Path(urlsplit(path_or_url).path).name
    if local.is_file():
        return str(local)
    if not hub_reachable(host):
        raise ModelNotAvailable(
            f"models.{field}: cannot download {path_or_url} (no network). Fix: download it elsewhere, "
            f"put it at {local} or set models.{field}=/path/to/file, or use --preset tiny."
        )
    with publishing(local) as part:  # two workers fetching the same file never share a part file
        urllib.request.urlretrieve(path_or_url, part)  # noqa: S310 - the URL is the user's config
    return str(local)


@contextmanager
def no_progress_bars() -> Iterator[None]:
    """transformers' and the hub's progress bars off for a one-off build of a tiny model (its
    "Writing model shards" bars would otherwise land in the middle of a CLI's one-line error)."""
    # inside: transformers (seconds) loads only where a tiny model is built
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
