"""One PostgreSQL and one Spark standalone cluster for the whole test session (started on first
use, stopped by PID at its end); each test takes databases of its own in that PostgreSQL."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lambda_arch.runtime.broker import free_port
from tests.scaleout.engines import Postgres, SparkCluster


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL 15 cluster of the session's own on 127.0.0.1 (about 3 s to start)."""
    # Under /tmp directly: the postgres user cannot enter pytest's 0700 temp tree.
    folder = Path(tempfile.mkdtemp(prefix="lambda-arch-pg-"))
    server = Postgres(folder, free_port())
    try:
        server.start()
        print(f"\nPostgreSQL ready in {server.setup_s:.1f} s on port {server.port}")
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkCluster]:
    """A Spark standalone master and two 1-core workers on 127.0.0.1."""
    cluster = SparkCluster(tmp_path_factory.mktemp("spark-cluster"))
    try:
        cluster.start()
        print(f"\nSpark cluster ready in {cluster.setup_s:.1f} s at {cluster.master_url}")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def database(postgres: Postgres) -> str:
    """A new, empty database in the session's PostgreSQL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    postgres.create_database(name)
    return name
