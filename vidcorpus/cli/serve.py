"""`vidcorpus serve`: the local web app over a catalog (``vidcorpus/serve/``)."""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import List, Optional

import typer

from vidcorpus.cli.options import CatalogOpt, ConfigOpt, WorkdirOpt, effective_config
from vidcorpus.cli.output import console
from vidcorpus.cli.user_errors import fail


def serve(
    catalog: Optional[str] = CatalogOpt,
    config: Optional[Path] = ConfigOpt,
    workdir: Optional[str] = WorkdirOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; anything but loopback needs --token."),
    port: int = typer.Option(8765, "--port", "-p", help="TCP port."),
    token: Optional[str] = typer.Option(None, "--token", envvar="VIDCORPUS_SERVE_TOKEN",
                                        help="Secret every request must carry (?token= once, or a Bearer header)."),
    user: Optional[str] = typer.Option(None, "--user", help="Name recorded with each label (default: the login)."),
    query_threads: Optional[int] = typer.Option(None, "--query-threads", min=1, help="DuckDB threads per query "
                                                "(default: every core; fewer leave cores to other requests)."),
    request_threads: int = typer.Option(8, "--request-threads", min=1, help="Threads running requests in "
                                        "each server process."),
    workers: int = typer.Option(1, "--workers", min=1, help="Server processes (each uses about one core; "
                                "each keeps its own caches)."),
    media_root: Optional[List[str]] = typer.Option(None, "--media-root", help="Another folder (or URL prefix) "
                                                   "clip files and shards may be served from (repeatable)."),
) -> None:
    """Browse clips (play, filter, sort, SQL WHERE), label them good or bad, and measure each filter.

    Reads the catalog (DuckDB file, or a snapshot folder or s3:// URL from `catalog export`) through
    one read connection that a waiting job's commit always gets first (closed when idle too).
    Labels are catalog rows (table `labels`); a snapshot is browsed read-only.
    """
    from vidcorpus.catalog.store import CatalogError  # inside: keeps --help fast (duckdb, starlette)
    from vidcorpus.serve.app import ServeSettings
    from vidcorpus.serve.security import Refused, check_bind
    from vidcorpus.serve.server import media_roots, serve as run_server
    from vidcorpus.storage import absolute
    from vidcorpus.workdir import missing_catalog_hint

    try:
        check_bind(host, token)
    except Refused as e:
        fail(str(e), prefix="refused:")
    cfg = effective_config(config, None, workdir=workdir, catalog=catalog)
    path = cfg.catalog_path
    from vidcorpus.storage import is_url, local_path  # inside: keeps --help fast (fsspec)

    if not is_url(path) and not os.path.exists(local_path(path)):
        fail(f"no catalog at {path} ({missing_catalog_hint(path)})")
    roots = media_roots(cfg.workdir, path, [absolute(r) for r in media_root or []])
    settings = ServeSettings(catalog=path, roots=roots, host=host, token=token,
                             who=user or os.environ.get("USER") or getpass.getuser(), query_threads=query_threads,
                             request_threads=request_threads)
    shown = f"[{host}]" if ":" in host else host
    console.print(f"vidcorpus serve: http://{shown}:{port}/" + ("?token=..." if token else "") +
                  f"  (catalog {path}; Ctrl-C stops)", markup=False)
    try:
        run_server(settings, port, workers=workers)
    except CatalogError as e:
        fail(str(e))
    except OSError as e:
        fail(f"cannot listen on {host}:{port}: {e}")
