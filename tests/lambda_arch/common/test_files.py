"""State files written whole: local rename over the old file, one PUT on an object store."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from lambda_arch.common.files import is_local, local_path, read_text, write_bytes, write_text


def test_local_locations() -> None:
    assert is_local("/tmp/x.json")
    assert is_local("relative/x.json")
    assert is_local("file:///tmp/x.json")
    assert not is_local("s3://b/x.json")
    assert not is_local("s3a://b/x.json")
    assert local_path("file:///tmp/x.json") == Path("/tmp/x.json")
    assert local_path("/tmp/x.json") == Path("/tmp/x.json")


def test_write_creates_folders_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state" / "deep" / "view.json"
    assert read_text(str(target)) is None
    write_text(str(target), '{"a": 1}\n')
    assert read_text(str(target)) == '{"a": 1}\n'
    write_text(f"file://{target}", '{"a": 2}\n')
    assert target.read_text() == '{"a": 2}\n'
    assert read_text(f"file://{target}") == '{"a": 2}\n'
    assert sorted(p.name for p in target.parent.iterdir()) == ["view.json"]


def test_a_failed_write_keeps_the_old_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "view.json"
    write_text(str(target), "old")

    def broken_replace(source: object, destination: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_text(str(target), "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["view.json"]


def test_write_bytes_through_a_local_pyarrow_filesystem(tmp_path: Path) -> None:
    filesystem, path = pafs.FileSystem.from_uri(str(tmp_path / "a" / "b.json"))
    write_bytes(filesystem, path, b"{}")
    write_bytes(filesystem, path, b'{"x": 1}')
    assert (tmp_path / "a" / "b.json").read_bytes() == b'{"x": 1}'
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.json"]


def test_write_bytes_on_an_object_store_is_one_stream_without_a_temporary() -> None:
    store = pafs._MockFileSystem()  # not "local": the object-store branch
    store.create_dir("bucket/state")  # the mock, unlike S3, needs its folders
    write_bytes(store, "bucket/state/b.json", b"one")
    write_bytes(store, "bucket/state/b.json", b"two")
    with store.open_input_stream("bucket/state/b.json") as stream:
        assert stream.read() == b"two"
    listing = store.get_file_info(pafs.FileSelector("bucket", recursive=True))
    assert [info.path for info in listing if info.type == pafs.FileType.File] == [
        "bucket/state/b.json"
    ]
