"""The catalog's one time convention: naive UTC ``datetime`` values (DuckDB ``TIMESTAMP`` columns)."""

from __future__ import annotations

import datetime as dt


def utc_now() -> dt.datetime:
    """Now in UTC without tzinfo: what every ``*_at`` column stores."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
