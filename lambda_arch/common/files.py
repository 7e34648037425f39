"""Small state files (JSON state, manifests) in a local folder or on S3, written whole.

A reader (the serving refresh, a check, the next run) must never see half a state file: a local
file is written under a hidden temporary name and renamed over the old one (atomic on POSIX); an
object store gets one PUT, which S3 makes visible whole or not at all.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pyarrow.fs as pafs

from lambda_arch.common.storage import pyarrow_filesystem


def is_local(location: str) -> bool:
    """True for a plain path or a file:// URI."""
    return "://" not in location or location.startswith("file://")


def local_path(location: str) -> Path:
    """The path of a local location (file:// stripped)."""
    return Path(location.removeprefix("file://"))


def write_bytes(filesystem: pafs.FileSystem, path: str, data: bytes) -> None:
    """Replace the file at `path` in `filesystem` atomically, creating local parent folders."""
    if filesystem.type_name != "local":
        # No folders to create on an object store (a "folder" marker only confuses readers).
        with filesystem.open_output_stream(path) as stream:  # one PUT: atomic on S3
            stream.write(data)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Hidden (Spark and the lake's listings skip dot files) and unique per writer thread, so
    # two writers never share a temporary file.
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_text(location: str, text: str) -> None:
    """Replace the text file at a location (folder path, file:// or s3:// / s3a:// URI)."""
    if is_local(location):
        write_bytes(pafs.LocalFileSystem(), str(local_path(location)), text.encode())
        return
    filesystem, path = pyarrow_filesystem(location)
    write_bytes(filesystem, path, text.encode())


def read_text(location: str) -> str | None:
    """The text of the file at a location, None when there is none."""
    if is_local(location):
        path = local_path(location)
        return path.read_text() if path.exists() else None
    filesystem, path = pyarrow_filesystem(location)
    if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with filesystem.open_input_stream(path) as stream:
        return stream.read().decode()
