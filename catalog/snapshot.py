"""Catalog snapshots: every table as Parquet plus ``manifest.json``, on local disk or S3.

Layout at URL (a folder or an s3:// prefix)::

    URL/manifest.json                  written last: the snapshot exists once this is there
    URL/{snapshot_id}/{table}.parquet  one file per table (clips_wide included)

The manifest lists each table's file, row count and sha256, the schema version, the view
definitions and when it was made. Re-exporting to the same URL writes a new snapshot folder,
swaps the manifest, then removes the previous snapshot's folder.

Reading a snapshot (``Catalog(URL, read_only=True)``, ``vidcorpus sql --catalog URL``) gives a
read-only DuckDB with one view per table over its Parquet file and the catalog's own views on top.
The files are read as pyarrow datasets through fsspec (``s3fs`` for s3://, configured from the
usual AWS_* variables such as AWS_ENDPOINT_URL), registered with DuckDB from Python: DuckDB's
httpfs extension needs a network download that offline machines cannot do, and DuckDB itself
touching no file lets user SQL run with external access disabled (``catalog/safe_sql.py``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import tempfile
from typing import TYPE_CHECKING

import duckdb
import fsspec
import pyarrow.dataset as pads
from pyarrow.fs import FSSpecHandler, PyFileSystem

from vidcorpus.catalog.catalog_error import CatalogError
from vidcorpus.catalog.sql_names import ident
from vidcorpus.storage import is_url, local_path, write_atomic

if TYPE_CHECKING:  # pragma: no cover
    from vidcorpus.catalog.store import Catalog

MANIFEST = "manifest.json"
FORMAT = "vidcorpus-catalog-snapshot/1"


def is_snapshot(path_or_url: str) -> bool:
    """True for a folder or prefix holding manifest.json (a DuckDB file path is never one)."""
    if is_url(path_or_url):
        fs, root = fsspec.core.url_to_fs(path_or_url)
        try:
            return fs.exists(f"{root.rstrip('/')}/{MANIFEST}")
        except Exception:  # unreachable store: let the caller's error say so
            return False
    local = local_path(path_or_url)
    return os.path.isdir(local) and os.path.exists(os.path.join(local, MANIFEST))


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_snapshot(cat: "Catalog", url: str) -> dict:
    """Write every table to Parquet, upload, then write the manifest last; returns the manifest."""
    if cat.manifest is not None:
        raise CatalogError("export from the DuckDB file, not from a snapshot")
    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")
    created = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    snapshot_id = created.strftime("%Y%m%dT%H%M%S%fZ")
    previous = None
    try:
        previous = json.loads(fs.cat_file(f"{root}/{MANIFEST}"))
    except (FileNotFoundError, OSError, ValueError):
        pass
    tables: dict[str, dict] = {}
    with cat._session() as con, tempfile.TemporaryDirectory(prefix="vidcorpus-export-") as tmp:
        # one read transaction: every table from the same committed state
        con.begin()
        try:
            names = [r[0] for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
                "AND table_schema = 'main' ORDER BY 1").fetchall()]
            views = [{"name": n, "sql": sql} for n, sql in con.execute(
                "SELECT view_name, sql FROM duckdb_views() WHERE NOT internal AND schema_name = 'main' "
                "ORDER BY view_name").fetchall()]
            version = con.execute("SELECT max(version) FROM schema_version").fetchall()[0][0]
            for name in names:
                local = os.path.join(tmp, f"{name}.parquet")
                con.sql(f"SELECT * FROM {ident(name)}").write_parquet(local, compression="zstd")
                rows = con.execute(f"SELECT count(*) FROM {ident(name)}").fetchall()[0][0]
                tables[name] = {"file": f"{snapshot_id}/{name}.parquet", "rows": rows,
                                "bytes": os.path.getsize(local), "sha256": _sha256(local)}
        finally:
            con.rollback()
        fs.makedirs(f"{root}/{snapshot_id}", exist_ok=True)
        for name, entry in tables.items():
            fs.put_file(os.path.join(tmp, f"{name}.parquet"), f"{root}/{entry['file']}")
    manifest = {"format": FORMAT, "snapshot_id": snapshot_id, "created_at": created.isoformat() + "Z",
                "schema_version": version, "source": os.path.abspath(cat.path), "tables": tables, "views": views}
    # last, whole: readers see the old snapshot or the whole new one
    write_atomic(f"{url.rstrip('/')}/{MANIFEST}", json.dumps(manifest, indent=1).encode())
    if previous and previous.get("snapshot_id") and previous["snapshot_id"] != snapshot_id:
        old = f"{root}/{previous['snapshot_id']}"
        try:
            if fs.exists(old):
                fs.rm(old, recursive=True)
        except OSError:
            pass
    return manifest


def _table_datasets(fs, root: str, manifest: dict) -> dict:
    """Each table's Parquet file as a pyarrow dataset, read through fsspec (s3fs for s3://).

    Registered with DuckDB from Python rather than read with ``read_parquet``: DuckDB itself
    then needs no file access, so user SQL can run with external access off (``safe_sql``).
    """
    filesystem = PyFileSystem(FSSpecHandler(fs))
    return {name: pads.dataset(f"{root}/{entry['file']}", format="parquet", filesystem=filesystem)
            for name, entry in manifest["tables"].items()}


def _register(con: duckdb.DuckDBPyConnection, datasets: dict) -> None:
    for name, ds in datasets.items():
        con.register(f"{SNAPSHOT_PREFIX}{name}", ds)


SNAPSHOT_PREFIX = "__snapshot_"  # the registered dataset behind each table's view


def open_snapshot(url: str) -> tuple[duckdb.DuckDBPyConnection, dict, tempfile.TemporaryDirectory]:
    """A read-only DuckDB with the snapshot's tables as views over its Parquet files.

    The views live in a small local DuckDB file that is then reopened read-only, so SQL over a
    snapshot refuses writes exactly as over the catalog file. The caller keeps the returned
    temporary folder alive as long as the connection.
    """
    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")
    try:
        manifest = json.loads(fs.cat_file(f"{root}/{MANIFEST}"))
    except (OSError, ValueError) as e:
        raise CatalogError(f"cannot read the snapshot manifest at {url}: {e}") from e
    if manifest.get("format") != FORMAT:
        raise CatalogError(f"{url}: not a vidcorpus catalog snapshot (format {manifest.get('format')!r})")
    try:
        for name in manifest["tables"]:
            ident(name)  # a table name that is not a plain identifier would change the views' SQL
        datasets = _table_datasets(fs, root, manifest)
    except (OSError, ValueError) as e:
        raise CatalogError(f"cannot read the snapshot's tables at {url}: {e}") from e
    tmp = tempfile.TemporaryDirectory(prefix="vidcorpus-snapshot-")
    views_db = os.path.join(tmp.name, "views.duckdb")
    con = duckdb.connect(views_db)
    _register(con, datasets)
    for name in manifest["tables"]:
        con.execute(f"CREATE VIEW {ident(name)} AS SELECT * FROM {ident(SNAPSHOT_PREFIX + name)}")
    pending = list(manifest.get("views", []))
    while pending:  # views may build on views: create until no progress
        left = []
        for v in pending:
            try:
                con.execute(v["sql"])
            except duckdb.CatalogException:
                left.append(v)
        if len(left) == len(pending):
            raise CatalogError(f"{url}: cannot create views {[v['name'] for v in left]}")
        pending = left
    con.close()
    con = duckdb.connect(views_db, read_only=True)
    _register(con, datasets)
    return con, manifest, tmp
