"""Settings from the environment: defaults, overrides and errors that name the variable."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from lambda_arch.common.config import ConfigError, Settings


def test_defaults_follow_the_contract(env_home: Path) -> None:
    settings = Settings.from_env()
    assert settings.home == env_home
    assert settings.embedded_broker
    assert settings.bootstrap_servers == "127.0.0.1:9092"
    assert settings.topic == "play-events"
    assert settings.warehouse == str(env_home / "warehouse")
    assert not settings.warehouse_is_s3
    assert settings.spark_master == "local[*]"
    assert settings.spark_remote is None
    assert settings.start_date == date(2026, 1, 1)
    assert settings.allowed_lateness_min == 10
    assert settings.max_events_per_batch == 500_000
    assert settings.alert_webhook is None
    assert settings.dagster_home == env_home / "dagster"


def test_relative_home_becomes_absolute(env_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMBDA_ARCH_HOME", "relative/home")
    assert Settings.from_env().home == Path.cwd() / "relative" / "home"


def test_every_variable_is_read(env_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "KAFKA_BOOTSTRAP_SERVERS": "kafka1:9092, kafka2:9093",
        "LAMBDA_ARCH_TOPIC": "plays.v2",
        "LAMBDA_ARCH_WAREHOUSE": "s3a://lake/warehouse/",
        "LAMBDA_ARCH_SPARK_MASTER": "spark://master:7077",
        "SPARK_REMOTE": "sc://connect:15002",
        "LAMBDA_ARCH_START_DATE": "2025-12-24",
        "LAMBDA_ARCH_ALLOWED_LATENESS_MIN": "0",
        "LAMBDA_ARCH_MAX_EVENTS_PER_BATCH": "1000",
        "LAMBDA_ARCH_ALERT_WEBHOOK": "https://hooks.example/alerts",
        "LAMBDA_ARCH_TOPIC_PARTITIONS": "3",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    assert not settings.embedded_broker
    assert settings.bootstrap_servers == "kafka1:9092,kafka2:9093"
    assert settings.topic == "plays.v2"
    assert settings.warehouse == "s3a://lake/warehouse"
    assert settings.warehouse_is_s3
    assert settings.spark_master == "spark://master:7077"
    assert settings.spark_remote == "sc://connect:15002"
    assert settings.start_date == date(2025, 12, 24)
    assert settings.allowed_lateness_min == 0
    assert settings.max_events_per_batch == 1000
    assert settings.alert_webhook == "https://hooks.example/alerts"
    assert settings.topic_partitions == 3


def test_empty_variable_counts_as_unset(env_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "")
    assert Settings.from_env().embedded_broker


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("LAMBDA_ARCH_ALLOWED_LATENESS_MIN", "ten", "whole number of minutes"),
        ("LAMBDA_ARCH_ALLOWED_LATENESS_MIN", "-1", "whole number of minutes"),
        ("LAMBDA_ARCH_MAX_EVENTS_PER_BATCH", "0", "whole number >= 1"),
        ("LAMBDA_ARCH_START_DATE", "01/02/2026", "YYYY-MM-DD"),
        ("KAFKA_BOOTSTRAP_SERVERS", "kafka-without-port", "host:port"),
        ("LAMBDA_ARCH_TOPIC", "play events", "topic name"),
        ("LAMBDA_ARCH_WAREHOUSE", "gs://bucket/lake", "s3://"),
        ("LAMBDA_ARCH_SPARK_MASTER", "local[many]", "Spark master URL"),
        ("SPARK_REMOTE", "http://connect:15002", "sc://"),
        ("LAMBDA_ARCH_ALERT_WEBHOOK", "not a url", "http"),
        ("LAMBDA_ARCH_BROKER_PORT", "70000", "port number"),
        ("LAMBDA_ARCH_BROKER_STORAGE", "file:///tmp/x", "memory or an s3://"),
        ("LAMBDA_ARCH_TOPIC_PARTITIONS", "0", "1 to 1024"),
    ],
)
def test_bad_values_name_the_variable_and_the_expected_form(
    env_home: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as raised:
        Settings.from_env()
    message = str(raised.value)
    assert message.startswith(f"{variable}=")
    assert repr(value) in message
    assert expected in message
    assert "\n" not in message
