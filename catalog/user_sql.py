"""Running one user statement over a catalog (``vidcorpus sql``): a read-only catalog, locked down.

What the lock-down refuses and why: ``catalog/safe_sql.py``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import duckdb
import pyarrow as pa

from vidcorpus.catalog.safe_sql import REFUSED, RefusedSQL, first_line, lock_down
from vidcorpus.catalog.store import Catalog


@contextlib.contextmanager
def user_sql_catalog(path: str | os.PathLike) -> Iterator[Catalog]:
    """A read-only catalog (DuckDB file or snapshot) whose connection is locked down."""
    with Catalog(path, read_only=True) as cat:
        lock_down(cat.con)
        yield cat


def run_user_sql(path: str | os.PathLike, sql: str) -> pa.Table:
    """Run one user statement over the catalog at ``path``; RefusedSQL for what it may not do."""
    with user_sql_catalog(path) as cat:
        try:
            return cat.query(sql)
        except duckdb.PermissionException as e:
            raise RefusedSQL(f"refused: {REFUSED}: {first_line(str(e))}") from e
        except duckdb.InvalidInputException as e:
            text = str(e)
            if "configuration has been locked" in text:
                raise RefusedSQL(f"refused: {REFUSED}: {first_line(text)}") from e
            raise
