"""A Spark Connect server of a test's own: the settings it runs with, started and stopped."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lambda_arch.common.config import Settings
from lambda_arch.runtime.broker import free_port
from lambda_arch.runtime.spark_connect import ConnectServer


@contextmanager
def connect_server(home: Path, python: Path | str) -> Iterator[ConnectServer]:
    """A server on a free port with LAMBDA_ARCH_HOME `home` (local[2], 2 shuffle partitions),
    its Python workers running `python`; ready when entered, stopped on exit."""
    settings = Settings(
        LAMBDA_ARCH_HOME=str(home),
        LAMBDA_ARCH_SPARK_MASTER="local[2]",
        LAMBDA_ARCH_SPARK_CONNECT_PORT=free_port(),
        LAMBDA_ARCH_SHUFFLE_PARTITIONS=2,
    )
    server = ConnectServer(settings)
    with pytest.MonkeyPatch.context() as patch:  # the server's environment only
        patch.setenv("PYSPARK_PYTHON", str(python))
        server.launch()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
