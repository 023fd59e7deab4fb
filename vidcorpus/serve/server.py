"""Start the app under uvicorn: checks first (bind, token, catalog), then serve until stopped."""

from __future__ import annotations

import os

from vidcorpus.serve.app import ServeSettings, make_app
from vidcorpus.serve.security import check_bind


def media_roots(workdir: str, catalog: str, extra: list[str] | None = None) -> list[str]:
    """Where clip files and shards may be served from: the workdir, the catalog's folder, any extra."""
    roots = [workdir]
    if "://" not in catalog or catalog.startswith("file://"):
        roots.append(os.path.dirname(os.path.abspath(catalog.removeprefix("file://"))))
    return roots + list(extra or [])


def serve(settings: ServeSettings, port: int, log_level: str = "warning") -> None:
    """Serve until interrupted. Refuses (security.Refused) a non-loopback bind without a token."""
    import uvicorn

    check_bind(settings.host, settings.token)
    app = make_app(settings)  # opens the catalog once (migrations, labels table) and closes it
    uvicorn.run(app, host=settings.host, port=port, log_level=log_level, access_log=False,
                timeout_graceful_shutdown=5)
