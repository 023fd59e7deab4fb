"""vidcorpus/storage.py: one locality test, and files published whole or not at all (local and S3)."""

from __future__ import annotations

import os

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
