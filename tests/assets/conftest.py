"""Fixtures of the Dagster-layer tests: settings of a test's own over the real broker, an instance."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, instance_for_test

from lambda_arch.common.config import Settings
from lambda_arch.runtime.broker import EmbeddedBroker


@pytest.fixture
def speed_env(
    env_home: Path, broker: EmbeddedBroker, topic: str, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers)
    monkeypatch.setenv("LAMBDA_ARCH_TOPIC", topic)
    monkeypatch.setenv("LAMBDA_ARCH_TOPIC_PARTITIONS", "3")
    monkeypatch.setenv("LAMBDA_ARCH_MAX_EVENTS_PER_BATCH", "1000")
    # Tables of this test's own in the suite's one metastore.
    monkeypatch.setenv("LAMBDA_ARCH_DATABASE", f"db_{topic.replace('-', '_')}")
    return Settings.from_env()


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as test_instance:
        yield test_instance
