"""vidcorpus/storage.py: one locality test, and files published whole or not at all (local and S3)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from vidcorpus import storage


def test_locality_is_one_rule():
    assert storage.is_url("s3://b/k") and storage.is_url("https://h/x.mp4")
    assert not storage.is_url("/data/x.mp4") and not storage.is_url("file:///data/x.mp4")
    assert storage.local_path("file:///data/x.mp4") == "/data/x.mp4" == storage.local_path("/data/x.mp4")
    with pytest.raises(ValueError):
        storage.local_path("s3://b/k")


def test_a_local_write_is_whole_leaves_no_temporary_and_replaces(tmp_path):
    target = tmp_path / "new" / "folder" / "f.bin"
    storage.write_atomic(str(target), b"first")
    storage.write_atomic(f"file://{target}", b"second, longer")
    assert target.read_bytes() == b"second, longer" == storage.read_bytes(str(target))
    assert os.listdir(target.parent) == ["f.bin"]


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    """A full disk or a kill between writing and publishing: the final name keeps what it had."""
    target = tmp_path / "f.bin"
    storage.write_atomic(str(target), b"old")

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError):
        storage.write_atomic(str(target), b"new")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]


def test_an_object_store_write_is_one_put_and_reads_back(s3):
    storage.write_atomic("s3://bucket/a/b.json", b"{}")
    assert s3.cat_file("bucket/a/b.json") == b"{}" == storage.read_bytes("s3://bucket/a/b.json")
    assert storage.is_local_fs(s3) is False
    import fsspec

    assert storage.is_local_fs(fsspec.filesystem("file"))


def test_a_remote_write_makes_its_folders_where_the_store_has_them(tmp_path, monkeypatch):
    """Not every remote store is an object store (sftp, hdfs, smb need the folder first): played here
    by the local file system taken through the remote branch, whose pipe_file needs the folder."""
    monkeypatch.setattr(storage, "is_local_fs", lambda fs: False)
    target = tmp_path / "a" / "b" / "c.bin"
    storage.write_atomic(str(target), b"xyz")
    assert target.read_bytes() == b"xyz"


def test_schemes_joins_and_absolute_locations(tmp_path, monkeypatch):
    assert storage.url_scheme("HTTPS://h/x") == "https" and storage.url_scheme("s3://b/k") == "s3"
    assert storage.url_scheme("/data/x.mp4") == storage.url_scheme("file:///x") == storage.url_scheme("C:/x") == "file"
    assert storage.join_url("s3://b/run/", "checkpoints", "step-1") == "s3://b/run/checkpoints/step-1"
    monkeypatch.chdir(tmp_path)
    assert storage.absolute("work") == str(tmp_path / "work")
    assert storage.absolute("file://work") == f"file://{tmp_path / 'work'}"
    assert storage.absolute("s3://b/work") == "s3://b/work" and storage.absolute(None) is None


def test_publishing_keeps_the_extension_when_asked_and_a_failed_writer_leaves_the_old_file(tmp_path):
    """PyAV picks the format from the name; a shard's part must not end in .tar (a glob would take it)."""
    target = tmp_path / "clip.mp4"
    with storage.publishing(target, keep_extension=True) as part:
        assert part.endswith(".mp4") and os.path.dirname(part) == str(tmp_path)
        Path(part).write_bytes(b"v1")
    with storage.publishing(tmp_path / "shard.tar") as part:
        assert not part.endswith(".tar")
        Path(part).write_bytes(b"t")
    os.remove(tmp_path / "shard.tar")
    with pytest.raises(RuntimeError), storage.publishing(f"file://{target}") as part:
        Path(part).write_bytes(b"half")
        raise RuntimeError("encoder died")
    assert target.read_bytes() == b"v1" and os.listdir(tmp_path) == ["clip.mp4"]


def test_publish_dir_replaces_whole_or_not_at_all(tmp_path):
    final = tmp_path / "models" / "tiny"
    with storage.publish_dir(str(final)) as tmp:
        (tmp / "config.json").write_text("{}")
        assert not final.exists()  # readers see nothing until the folder is complete
    with pytest.raises(RuntimeError), storage.publish_dir(final) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed mid-save")
    assert sorted(p.name for p in final.iterdir()) == ["config.json"]
    with storage.publish_dir(final) as tmp:
        (tmp / "model_index.json").write_text("{}")
    assert sorted(p.name for p in final.iterdir()) == ["model_index.json"]  # replaced, not merged
    with storage.publish_dir(final, replace=False) as tmp:  # another worker's build already there: kept
        (tmp / "other.json").write_text("{}")
    assert sorted(p.name for p in final.iterdir()) == ["model_index.json"]
    assert sorted(p.name for p in final.parent.iterdir()) == ["tiny"]  # no temporary folder left


# -- sites whose own locality check was wrong: file:// is local ------------------------------------
def test_a_file_url_to_local_weights_is_found_not_downloaded(tmp_path, monkeypatch):
    from vidcorpus.model_files import require_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a "download" would fail with no network
    weights = tmp_path / "head.pth"
    weights.write_bytes(b"w")
    assert require_file(f"file://{weights}", "aesthetic_head") == str(weights)


def test_relative_file_urls_in_a_list_are_read_from_beside_the_list(tmp_path):
    """``file://a.mp4`` is relative, like ``a.mp4``: each entry is its own source beside the list
    (taken as URLs, both were one source with the uri ``file://a.mp4`` resolved from the cwd)."""
    from vidcorpus.ingest.sources import read_inputs

    folder = tmp_path / "lists"
    folder.mkdir()
    (folder / "l.txt").write_text("file://a.mp4\nfile://b.mp4\n")
    rows = read_inputs([str(folder / "l.txt")])
    assert sorted(r["uri"] for r in rows) == [f"file://{folder}/a.mp4", f"file://{folder}/b.mp4"]


# -- no new copies -------------------------------------------------------------------------------------
PACKAGE_DIRS = ("vidcorpus", "ingest", "filters", "captioning", "shards", "catalog", "train")
COPIES = re.compile(r"""["']://["']\s+(?:not\s+)?in\b|removeprefix\(\s*["']file://["']\s*\)|\bos\.(?:replace|rename)\(""")
# The module that owns each pattern. ids.py needs none: it parses URLs with urlsplit for their
# identity (host, port, query), which is not a locality question.
OWNERS = {"vidcorpus/storage.py"}


def test_locality_and_atomic_renames_live_in_storage_only():
    """A new ``"://" in x``, ``removeprefix("file://")`` or ``os.replace(`` outside storage.py is a
    new locality rule or a new atomic write: use ``storage`` (is_url, local_path, url_scheme,
    write_atomic, publishing, publish_dir) instead."""
    root = Path(__file__).resolve().parents[1]
    found = []
    for folder in PACKAGE_DIRS:
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel in OWNERS:
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if COPIES.search(line):
                    found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "use vidcorpus.storage instead:\n" + "\n".join(found)
    assert COPIES.search('if "://" not in url:') and COPIES.search("x.removeprefix('file://')")
