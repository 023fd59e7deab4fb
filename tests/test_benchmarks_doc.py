"""docs/benchmarks.md cannot drift from bench/results/: its generated tables equal what the raw JSON
gives (bench/render_benchmarks.py --check), and the renderer rewrites only what lies between markers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import render_benchmarks as rb  # noqa: E402
from doc_tables.formats import dp2, dp2_or_tie, whole  # noqa: E402
from doc_tables.spec import Col, RenderError, Table  # noqa: E402

TINY_TABLES = {"speed": Table("speed", ["speed.json"], rows="runs", columns=[
    Col("run", "name"),
    Col("frames/s", "fps", "{:,.0f}"),
    Col("of reference", "ratio", "{:.0%}"),
    Col("peak GB", "mem.peak_gb", "{:.1f}", missing="-"),
])}

TINY_DOC = """# Bench

## Speed (measured today)

Notes above the table stay.

<!-- table: speed -->

| run | frames/s | of reference | peak GB |
| --- | --- | --- | --- |
| stale | 1 | 1% | 9.9 |

<!-- /table -->

- A note under the table, with a figure the prose owns: 1,234 frames/s.

| hand | table |
| --- | --- |
| kept | as is |
"""


@pytest.fixture()
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    results = tmp_path / "results"
    results.mkdir()
    (results / "speed.json").write_text(json.dumps({"runs": [
        {"name": "reference", "fps": 1520.4, "ratio": 1.0, "mem": {"peak_gb": 2.04}},
        {"name": "ours | fast", "fps": 1203.6, "ratio": 0.7916},
    ]}))
    doc = tmp_path / "bench.md"
    doc.write_text(TINY_DOC)
    return doc, results


def test_the_doc_matches_its_raw_json():
    """The committed doc is exactly what the committed JSON renders to (a changed number fails here)."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "render_benchmarks.py"), "--check"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr


def test_every_table_of_the_doc_is_generated():
    """No table of docs/benchmarks.md is written by hand: each sits between markers, rendered from JSON."""
    assert rb.unbacked_tables(rb.DOC.read_text()) == []


def test_render_rewrites_only_between_markers(tiny):
    doc, results = tiny
    new, seen = rb.render_doc(doc.read_text(), TINY_TABLES, results)
    assert seen == ["speed"]
    assert "| reference | 1,520 | 100% | 2.0 |" in new
    assert "| ours \\| fast | 1,204 | 79% | - |" in new  # a pipe in a value is escaped; a missing value is '-'
    assert "stale" not in new
    before, _, after = TINY_DOC.partition("<!-- table: speed -->")
    assert new.startswith(before + "<!-- table: speed -->")
    assert new.endswith(after[after.index("<!-- /table -->"):])  # the notes and the hand table untouched
    assert rb.render_doc(new, TINY_TABLES, results)[0] == new  # rendering twice changes nothing


def test_check_fails_on_a_changed_number_and_render_repairs_it(tiny, capsys):
    doc, results = tiny
    assert rb.main(["--doc", str(doc), "--results", str(results)], TINY_TABLES) == 0
    rendered = doc.read_text()
    assert rb.main(["--check", "--doc", str(doc), "--results", str(results)], TINY_TABLES) == 0

    doc.write_text(rendered.replace("| 1,520 |", "| 1,530 |"))  # someone edits a figure by hand
    assert rb.main(["--check", "--doc", str(doc), "--results", str(results)], TINY_TABLES) == 1
    assert "1,530" in capsys.readouterr().out  # the diff names the drifted line
    assert "1,530" in doc.read_text()  # --check changes nothing

    data = json.loads((results / "speed.json").read_text())
    data["runs"][0]["fps"] = 1999.6  # a new measurement: the table follows the JSON
    (results / "speed.json").write_text(json.dumps(data))
    assert rb.main(["--check", "--doc", str(doc), "--results", str(results)], TINY_TABLES) == 1
    assert rb.main(["--doc", str(doc), "--results", str(results)], TINY_TABLES) == 0
    assert "| reference | 2,000 | 100% | 2.0 |" in doc.read_text()
    assert "A note under the table" in doc.read_text()


@pytest.mark.parametrize("broken, message", [
    ("<!-- table: nope -->\n\n<!-- /table -->\n", "not in the registry"),
    ("<!-- table: speed -->\n| x |\n", "no '<!-- /table -->'"),
    ("<!-- table: speed -->\n\n<!-- /table -->\n<!-- table: speed -->\n\n<!-- /table -->\n", "marked twice"),
])
def test_marker_mistakes_are_one_line_errors(tiny, broken, message):
    _doc, results = tiny
    with pytest.raises(RenderError, match=message):
        rb.render_doc(broken, TINY_TABLES, results)


def test_a_missing_result_file_is_a_one_line_error_and_the_doc_is_kept(tiny, capsys):
    doc, results = tiny
    (results / "speed.json").unlink()
    assert rb.main(["--doc", str(doc), "--results", str(results)], TINY_TABLES) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "speed.json" in err and err.count("\n") == 1
    assert doc.read_text() == TINY_DOC


def test_registry_tables_need_markers_and_hand_tables_are_listed(tiny, capsys):
    doc, results = tiny
    doc.write_text(TINY_DOC.replace("<!-- table: speed -->", "").replace("<!-- /table -->", ""))
    assert rb.main(["--check", "--doc", str(doc), "--results", str(results)], TINY_TABLES) == 2
    assert "without markers" in capsys.readouterr().err
    assert [head for _line, head in rb.unbacked_tables(TINY_DOC)] == ["| hand | table |"]


def test_rounding_follows_the_written_value():
    """The JSON holds rounded figures (0.625): halves round up as a reader would, ties keep a digit."""
    assert dp2(0.625) == "0.63" and dp2(0.765) == "0.77" and dp2(1.0) == "1.00"
    assert dp2_or_tie(0.945) == "0.945" and dp2_or_tie(0.776) == "0.78"
    assert whole(3162.5) == "3,163" and whole(7416.5) == "7,417" and whole(30011.9) == "30,012"


def test_timeline_summaries_say_what_the_buckets_say():
    """A summary cell is computed from the timeline, so a stray busy bucket after the busy phase shows."""
    from doc_tables.gpu_node_runs import host_busy_phases
    from doc_tables.train_compile import steady_rate

    host = {"bucket_s": 30.0, "busy_pct_by_bucket": [29.0, 89.5, 99.0, 82.8, 50.7, 12.2, 8.3, 53.9]}
    assert host_busy_phases(host) == "83 to 99% from 30 to 120 s, then 8 to 54% (median 31%)"
    assert host_busy_phases({"bucket_s": 30.0, "busy_pct_by_bucket": [10.0, 20.0]}) == \
        "under 80% in every bucket (median 15%)"
    # the compile window and a late stall (under half the median) are left out of the steady rate
    run = {"synthetic": {"windows": [{"samples_per_s": r} for r in (0.03, 7.6, 7.7, 7.65, 1.79)]}}
    assert steady_rate(run) == pytest.approx(7.65)
