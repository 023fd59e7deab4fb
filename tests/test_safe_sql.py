"""`vidcorpus sql` reads the catalog and nothing else (issue 21, case 7): no file written or read, no
extension installed, no database attached, on the DuckDB file and on exported snapshots alike."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from test_catalog_io import _fragments
from vidcorpus.catalog.store import Catalog
from vidcorpus.cli.app import app

cli = CliRunner()


def _catalogs(tmp_path) -> dict:
    path = tmp_path / "c.duckdb"
    with Catalog(path) as cat:
        cat.commit_fragments("r1", _fragments(0, 10))
        cat.export(str(tmp_path / "snap"))
    return {"file": str(path), "snapshot": str(tmp_path / "snap")}


def _attacks(tmp_path) -> dict:
    return {
        "copy_to": (f"COPY clips TO '{tmp_path / 'out.csv'}'", tmp_path / "out.csv"),
        "copy_over_snapshot": ("COPY clips TO '{snapshot_file}'", None),
        "read_file": ("SELECT * FROM read_csv('/etc/passwd')", None),
        "read_text": ("SELECT content FROM read_text('/etc/hostname')", None),
        "glob": ("SELECT * FROM glob('/etc/*')", None),
        "install": ("INSTALL httpfs", None),
        "load": ("LOAD httpfs", None),
        "attach": (f"ATTACH '{tmp_path / 'other.duckdb'}' AS other", tmp_path / "other.duckdb"),
        "unlock": ("SET enable_external_access = true", None),
        "export": (f"EXPORT DATABASE '{tmp_path / 'dump'}'", tmp_path / "dump"),
    }


def _one_error_line(result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize("kind", ["file", "snapshot"])
def test_sql_refuses_files_extensions_and_attach(tmp_path, kind):
    where = _catalogs(tmp_path)
    manifest = json.loads((tmp_path / "snap" / "manifest.json").read_text())
    snapshot_file = tmp_path / "snap" / manifest["tables"]["clips"]["file"]
    before = snapshot_file.read_bytes()
    for name, (sql, must_not_exist) in _attacks(tmp_path).items():
        sql = sql.format(snapshot_file=snapshot_file)
        r = cli.invoke(app, ["sql", "--catalog", where[kind], sql])
        assert r.exit_code == 2, (name, r.output)
        line = _one_error_line(r)
        assert "refused" in line and "no files, extensions, network or ATTACH" in line, (name, line)
        if must_not_exist is not None:
            assert not must_not_exist.exists(), name
    assert snapshot_file.read_bytes() == before  # the snapshot's own Parquet was not overwritten
    ok = cli.invoke(app, ["sql", "--catalog", where[kind], "--format", "json",
                          "SELECT count(*) AS n FROM clips_wide WHERE kept"])  # reading still works
    assert ok.exit_code == 0 and json.loads(ok.output) == [{"n": 6}]


def test_sql_on_an_s3_snapshot_cannot_reach_out(tmp_path, s3):
    path = tmp_path / "c.duckdb"
    with Catalog(path) as cat:
        cat.commit_fragments("r1", _fragments(0, 10))
        cat.export("s3://bucket/snap")
    url = "s3://bucket/snap"
    for sql in (f"COPY clips TO '{tmp_path / 'out.csv'}'", "SELECT * FROM read_csv('/etc/passwd')",
                "INSTALL httpfs", f"ATTACH '{tmp_path / 'o.duckdb'}' AS o",
                "SELECT * FROM read_parquet('s3://bucket/snap/manifest.json')"):
        r = cli.invoke(app, ["sql", "--catalog", url, sql])
        assert r.exit_code == 2, (sql, r.output)
        assert "refused" in _one_error_line(r)
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "o.duckdb").exists()
    ok = cli.invoke(app, ["sql", "--catalog", url, "--format", "json", "SELECT count(*) AS n FROM funnel"])
    assert ok.exit_code == 0, ok.output


def test_sql_table_right_aligns_numbers_and_shows_brackets(tmp_path):
    where = _catalogs(tmp_path)
    r = cli.invoke(app, ["sql", "--catalog", where["file"],
                         "SELECT 7 AS n, 'kept [x]' AS why UNION ALL SELECT 1234, 'a' ORDER BY n"])
    assert r.exit_code == 0, r.output
    rows = [ln for ln in r.output.splitlines() if "│" in ln]
    assert rows[0].split("│")[1] == "    7 " and rows[1].split("│")[1] == " 1234 "  # right-aligned
    assert "kept [x]" in r.output  # text that looks like rich markup is printed as it is
