"""Shared real parts for the suite: one Tansu broker and one SparkSession per test session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lambda_arch.common.config import Settings
from lambda_arch.runtime.broker import EmbeddedBroker, free_port

# The fast tier (`make test-fast`: -m "not jvm and not broker") is everything that needs neither a
# JVM nor a broker. Tests get the marks from the fixtures they use (directly or through other
# fixtures) and from the files below, which start Spark, a broker, a Connect server or a whole
# stack themselves (in child processes the fixtures cannot see).
FIXTURE_MARKS = {"spark": "jvm", "broker": "broker"}
FILE_MARKS: dict[str, tuple[str, ...]] = {
    "assets/test_batch_cli.py": ("jvm", "broker"),  # the Dagster CLI runs batch_job
    "assets/test_long_backfill.py": ("jvm", "broker"),  # its own Connect server, a child run
    "lambda_arch/cli/test_run.py": ("jvm", "broker"),  # `lambda-arch run`
    "lambda_arch/cli/test_run_beside_sensors.py": ("jvm", "broker"),  # `up`, then `run`
    "lambda_arch/common/test_storage.py": ("jvm",),  # a Spark child against an S3 server
    "lambda_arch/runtime/test_spark_connect.py": ("jvm",),  # its own Connect server
    "lambda_arch/runtime/test_stack.py": ("jvm", "broker"),  # `lambda-arch up`
    "lambda_arch/speed/test_layer_faults.py": ("jvm", "broker"),  # Spark children killed mid-run
    "ui/test_dagster_ui.py": ("jvm", "broker"),  # the whole stack and a browser
}


# `make test`'s two processes (tests/xdist_lanes.py): the files that load the CPU for minutes
# (whole stacks, Spark children, long backfills, clusters), with their seconds in a full run on
# 2 cores, go to one process, longest first ...
HEAVY_FILES: dict[str, float] = {
    "assets/test_long_backfill.py": 292,
    "scaleout/test_cluster_stack.py": 267,
    "lambda_arch/speed/test_layer_faults.py": 221,
    "ui/test_dagster_ui.py": 186,
    "lambda_arch/cli/test_run_beside_sensors.py": 184,
    "lambda_arch/runtime/test_stack.py": 164,
}
# ... and the other process takes the rest, the longest first (its first file also starts its
# Spark session); the heavy lane takes what is left when its own files are done. Each lane
# about 1,350 s of the 2,700.
LIGHT_FIRST: tuple[str, ...] = (
    "lambda_arch/serving/test_refresh.py",  # 187 s with the session's start
    "assets/test_batch_cli.py",  # 116 s
    "sensors/test_sensor_failure_alerts.py",  # 117 s, an idle stack waiting for sensor ticks
    "lambda_arch/speed/test_layer.py",  # 100 s
    "lambda_arch/common/test_storage.py",  # 89 s
    "lambda_arch/runtime/test_spark_connect.py",  # 88 s
    "assets/test_checks.py",  # 78 s
    "lambda_arch/batch/test_layer.py",  # 65 s
    "assets/test_batch_assets.py",  # 56 s
    "assets/test_speed_assets.py",  # 55 s
    "scaleout/test_dagster_on_postgres.py",  # 54 s
    "lambda_arch/cli/test_run.py",  # 52 s
)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """loadfile in lanes (tests/xdist_lanes.py); other --dist modes are xdist's own."""
    if config.getvalue("dist") != "loadfile":
        return None
    from tests.xdist_lanes import LanedFileScheduling

    return LanedFileScheduling(
        config,
        log,
        heavy={f"tests/{name}": seconds for name, seconds in HEAVY_FILES.items()},
        light_first=[f"tests/{name}" for name in LIGHT_FIRST],
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that needs a JVM (`jvm`) or a broker (`broker`); see FIXTURE_MARKS."""
    tests_dir = Path(__file__).parent
    for item in items:
        marks = {
            FIXTURE_MARKS[name]
            for name in getattr(item, "fixturenames", ())
            if name in FIXTURE_MARKS
        }
        try:
            relative = item.path.relative_to(tests_dir).as_posix()
        except ValueError:
            relative = ""
        marks.update(FILE_MARKS.get(relative, ()))
        for mark in sorted(marks):
            item.add_marker(getattr(pytest.mark, mark))


@pytest.fixture(scope="session")
def session_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LAMBDA_ARCH_HOME shared by session-scoped parts (Spark metastore, broker log)."""
    return tmp_path_factory.mktemp("lambda-arch-home")


@pytest.fixture(scope="session")
def broker(session_home: Path) -> Iterator[EmbeddedBroker]:
    """A real Tansu broker on a free loopback port, for the whole session."""
    embedded = EmbeddedBroker(free_port(), log_path=session_home / "logs" / "broker.log")
    embedded.start()
    yield embedded
    embedded.stop()


@pytest.fixture
def topic() -> str:
    """A topic name no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def env_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh LAMBDA_ARCH_HOME for this test, with the lambda-arch variables cleared."""
    import os

    for name in list(os.environ):
        if name.startswith("LAMBDA_ARCH_") or name in ("KAFKA_BOOTSTRAP_SERVERS", "SPARK_REMOTE"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    monkeypatch.setenv("LAMBDA_ARCH_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def spark(session_home: Path):
    """One local SparkSession for the whole suite (starting a JVM costs 7-8 s).

    Four shuffle partitions for the session and, as the variable, for the rest of the test
    session (processes the tests start inherit it unless they set their own); monkeypatch
    restores the environment at the end.
    """
    import os

    from lambda_arch.runtime.spark import build_session

    with pytest.MonkeyPatch.context() as patch:
        if "LAMBDA_ARCH_SHUFFLE_PARTITIONS" not in os.environ:
            patch.setenv("LAMBDA_ARCH_SHUFFLE_PARTITIONS", "4")
        # What the CLI entry point sets: build_session leaves the environment alone.
        if "SPARK_LOCAL_IP" not in os.environ:
            patch.setenv("SPARK_LOCAL_IP", "127.0.0.1")
        settings = Settings(LAMBDA_ARCH_HOME=str(session_home), LAMBDA_ARCH_SPARK_MASTER="local[2]")
        session = build_session(settings, app_name="lambda-arch-tests")
        yield session
        session.stop()
