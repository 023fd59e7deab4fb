"""User SQL that can read the catalog and nothing else (``vidcorpus sql``, a future ``serve``).

Opening DuckDB ``read_only`` stops writes to the catalog file, not ``COPY ... TO``, ``read_csv``
of any file, ``INSTALL``/``LOAD`` or ``ATTACH``. So a connection that runs a user's SQL gets
``enable_external_access = false`` (no file, extension or network access at all) and then
``lock_configuration = true`` (the SQL cannot switch it back). Snapshots need no allowed paths:
their tables are Arrow datasets registered from Python (``catalog/snapshot.py``), because
DuckDB's ``allowed_directories`` would let ``COPY ... TO`` overwrite the very files it allows.
Running a user's statement over a catalog: ``catalog/user_sql.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import duckdb

if TYPE_CHECKING:
    from vidcorpus.catalog.store import Catalog

# What a refused statement hit, for the one-line message (DuckDB's own text names the file or setting).
REFUSED = "vidcorpus sql reads the catalog only (no files, extensions, network or ATTACH)"


class RefusedSQL(Exception):
    """The SQL asked for something a catalog query may not do (write, read files, load, attach)."""


def lock_down(con: duckdb.DuckDBPyConnection) -> None:
    """Disable every external access on ``con`` for good (idempotent only before it is locked)."""
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def first_line(text: str) -> str:
    """DuckDB errors carry a caret diagram over several lines; a terminal error is one line."""
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[0] if lines else ""


def check_predicate(cat: "Catalog", predicate: str, params: list | None = None) -> str:
    """``predicate`` (a user's ``--select`` over clips_wide), parenthesised, once it is shown to read
    nothing but the catalog: it runs first over empty copies of the catalog's tables in a locked-down
    in-memory DuckDB, where reading a file, loading an extension or attaching fails
    (``RefusedSQL``). The commands then run it on their own connection, which must stay able to
    read and write the catalog's files. The parentheses keep it one expression (no second statement);
    ``params`` are the values of its ``?`` placeholders."""
    sandbox = duckdb.connect()
    try:
        for r in cat.query_dicts("SELECT DISTINCT table_name FROM information_schema.tables"):
            sandbox.register(r["table_name"], cat.query(f'SELECT * FROM "{r["table_name"]}" LIMIT 0'))
        lock_down(sandbox)
        query = f"SELECT count(*) FROM clips_wide WHERE ({predicate})"
        if len(sandbox.extract_statements(query)) != 1:  # "TRUE); DELETE FROM clips; SELECT (1"
            raise RefusedSQL(f"refused: a selection is one SQL expression, not statements: {predicate!r}")
        try:
            sandbox.execute(query, params).fetchall() if params else sandbox.execute(query).fetchall()
        except duckdb.PermissionException as e:
            raise RefusedSQL(f"refused: a selection reads the catalog only: {first_line(str(e))}") from e
        except duckdb.InvalidInputException as e:
            if "configuration has been locked" in str(e):
                raise RefusedSQL(f"refused: a selection reads the catalog only: {first_line(str(e))}") from e
            raise
    finally:
        sandbox.close()
    return f"({predicate})"
