"""The alert sensors against a real Dagster instance: failed runs and failed asset checks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    AssetCheckEvaluation,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetKey,
    AssetsDefinition,
    DagsterInstance,
    DailyPartitionsDefinition,
    Definitions,
    SensorResult,
    asset,
    asset_check,
    build_run_status_sensor_context,
    build_sensor_context,
    instance_for_test,
    job,
    materialize,
    op,
)

import sensors.alerts
from lambda_arch.quality import alerts
from resources import LambdaArchSettings
from sensors.alerts import (
    ALERT_SENSORS,
    check_failure_alert_sensor,
    run_failure_alert_sensor,
)
from tests.lambda_arch.quality.test_alerts import Receiver

RESOURCES = {"settings": LambdaArchSettings()}


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def alert_log(env_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LAMBDA_ARCH_DAGSTER_PORT", "3456")
    return env_home / "logs" / "alerts.jsonl"


@asset
def tiny() -> int:
    return 1


def checked(passed: bool, severity: AssetCheckSeverity) -> list[AssetsDefinition]:
    """`tiny` with one check that passes or fails with `severity`."""

    @asset_check(asset=tiny, name=f"tiny_{severity.value.lower()}_{passed}")
    def the_check() -> AssetCheckResult:
        return AssetCheckResult(
            passed=passed,
            severity=severity,
            description="tiny is too tiny",
            metadata={"rows": 1},
        )

    return [tiny, the_check]


def tick(instance: DagsterInstance, cursor: str | None) -> SensorResult:
    context = build_sensor_context(instance=instance, cursor=cursor, resources=RESOURCES)
    result = check_failure_alert_sensor(context)
    assert isinstance(result, SensorResult)
    return result


def test_failed_check_alerts_once(instance: DagsterInstance, alert_log: Path) -> None:
    result = materialize(checked(False, AssetCheckSeverity.ERROR), instance=instance)
    assert result.success  # a failed check does not fail its run
    first = tick(instance, None)
    assert first.skip_reason is None and first.cursor is not None
    [record] = alerts.read_alerts(alert_log)
    assert record["kind"] == "check_failed"
    assert record["severity"] == "ERROR"
    assert record["asset_key"] == "tiny"
    assert record["check_name"] == "tiny_error_False"
    assert record["run_id"] == result.run_id
    assert record["job_name"] == result.dagster_run.job_name
    assert record["run_url"] == f"http://127.0.0.1:3456/runs/{result.run_id}"
    assert record["description"] == "tiny is too tiny"
    assert record["metadata"] == {"rows": 1}
    assert record["partition"] is None

    second = tick(instance, first.cursor)  # the cursor: nothing new, nothing alerted twice
    assert second.skip_reason is not None and second.cursor == first.cursor
    assert len(alerts.read_alerts(alert_log)) == 1

    materialize(checked(False, AssetCheckSeverity.ERROR), instance=instance)
    third = tick(instance, second.cursor)
    assert int(third.cursor or 0) > int(first.cursor)
    assert [r["check_name"] for r in alerts.read_alerts(alert_log)] == ["tiny_error_False"] * 2


def test_first_tick_pages_through_old_history_quietly(
    instance: DagsterInstance, alert_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a cursor, failures older than the look-back are history, not news, however many
    ticks it takes to read past them."""
    for _ in range(2):
        materialize(checked(False, AssetCheckSeverity.ERROR), instance=instance)
    monkeypatch.setattr(sensors.alerts, "CHECK_EVENTS_PER_TICK", 1)
    monkeypatch.setattr(sensors.alerts, "FIRST_TICK_LOOKBACK_S", -60)  # both count as old
    first = tick(instance, None)
    assert first.cursor and "," in first.cursor  # the look-back boundary travels on
    second = tick(instance, first.cursor)
    assert second.cursor and "," in second.cursor
    third = tick(instance, second.cursor)  # nothing left: from here on everything is news
    assert third.cursor == second.cursor.split(",")[0]
    assert alerts.read_alerts(alert_log) == []
    materialize(checked(False, AssetCheckSeverity.ERROR), instance=instance)
    tick(instance, third.cursor)
    assert len(alerts.read_alerts(alert_log)) == 1


def test_warn_below_the_minimum_and_passed_checks_alert_nothing(
    instance: DagsterInstance, alert_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAMBDA_ARCH_ALERT_MIN_SEVERITY", "ERROR")
    materialize(checked(False, AssetCheckSeverity.WARN), instance=instance)
    result = tick(instance, None)
    assert result.skip_reason is not None and result.cursor not in (None, "-1")
    assert alerts.read_alerts(alert_log) == []

    monkeypatch.setenv("LAMBDA_ARCH_ALERT_MIN_SEVERITY", "WARN")
    materialize(checked(True, AssetCheckSeverity.ERROR), instance=instance)
    result = tick(instance, result.cursor)
    assert result.skip_reason is not None
    assert alerts.read_alerts(alert_log) == []

    materialize(checked(False, AssetCheckSeverity.WARN), instance=instance)
    tick(instance, result.cursor)
    assert [r["severity"] for r in alerts.read_alerts(alert_log)] == ["WARN"]


def test_check_evaluated_outside_a_run(instance: DagsterInstance, alert_log: Path) -> None:
    empty = tick(instance, None)
    assert empty.cursor == "-1" and empty.skip_reason is not None
    assert not alert_log.exists()
    # As external systems report checks: a runless evaluation has no run page to link.
    instance.report_runless_asset_event(
        AssetCheckEvaluation(
            asset_key=AssetKey(["lake", "tiny"]),
            check_name="external",
            passed=False,
            severity=AssetCheckSeverity.WARN,
        )
    )
    tick(instance, empty.cursor)
    [record] = alerts.read_alerts(alert_log)
    assert record["asset_key"] == "lake/tiny" and record["severity"] == "WARN"
    assert record["run_id"] is None and record["run_url"] is None and record["job_name"] is None


daily = DailyPartitionsDefinition(start_date="2026-03-01")


@asset(partitions_def=daily)
def tiny_daily() -> int:
    return 1


@asset_check(asset=tiny_daily, partitions_def=daily)
def tiny_daily_rows() -> AssetCheckResult:
    return AssetCheckResult(passed=False)


def test_partitioned_check_alert_reaches_the_webhook(
    instance: DagsterInstance, alert_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Receiver() as receiver:
        monkeypatch.setenv("LAMBDA_ARCH_ALERT_WEBHOOK", receiver.url)
        receiver.statuses = [500]  # one retry, then delivered
        materialize([tiny_daily, tiny_daily_rows], instance=instance, partition_key="2026-03-02")
        tick(instance, "not a number")  # an unusable cursor starts afresh
    [record] = alerts.read_alerts(alert_log)
    assert record["partition"] == "2026-03-02" and record["severity"] == "ERROR"
    assert "partition 2026-03-02" in record["message"]
    assert receiver.bodies == [record, record]


@op
def boom() -> None:
    raise RuntimeError("boom: the lake is on fire")


@job(tags={"dagster/partition": "2026-03-01"})
def failing_job() -> None:
    boom()


@op
def fine() -> None:
    pass


@job
def fine_job() -> None:
    fine()


def test_failed_run_alert_record(instance: DagsterInstance, alert_log: Path) -> None:
    result = failing_job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    context = build_run_status_sensor_context(
        sensor_name=run_failure_alert_sensor.name,
        dagster_event=result.get_run_failure_event(),
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        resources=RESOURCES,
    )
    run_failure_alert_sensor(context)
    [record] = alerts.read_alerts(alert_log)
    assert record["kind"] == "run_failed" and record["severity"] == "ERROR"
    assert record["run_id"] == result.run_id
    assert record["job_name"] == "failing_job"
    assert record["partition"] == "2026-03-01"
    assert record["run_url"] == f"http://127.0.0.1:3456/runs/{result.run_id}"
    assert "failing_job failed" in record["message"]
    # The project's own error, not Dagster's wrapper around it.
    assert record["description"].startswith("boom: RuntimeError: boom: the lake is on fire")
    assert record["alert_id"] == f"run_failed:{result.run_id}"
    # A failed run is not a failed check: the check sensor stays quiet.
    assert tick(instance, None).skip_reason is not None
    assert len(alerts.read_alerts(alert_log)) == 1


def test_failed_run_alerts_exactly_once_across_ticks(
    instance: DagsterInstance, alert_log: Path
) -> None:
    """Through the sensor's own tick evaluation and run-status cursor, as the daemon runs it."""
    repository = Definitions(
        jobs=[failing_job, fine_job], sensors=ALERT_SENSORS, resources=RESOURCES
    ).get_repository_def()

    def run_tick(cursor: str | None) -> str | None:
        context = build_sensor_context(
            instance=instance, cursor=cursor, repository_def=repository, resources=RESOURCES
        )
        run_failure_alert_sensor.evaluate_tick(context)
        return context.cursor

    cursor = run_tick(None)  # the first tick only places the cursor
    failed = failing_job.execute_in_process(instance=instance, raise_on_error=False)
    fine_job.execute_in_process(instance=instance)
    cursor = run_tick(cursor)
    cursor = run_tick(cursor)
    assert [r["run_id"] for r in alerts.read_alerts(alert_log)] == [failed.run_id]


def test_sensors_start_running() -> None:
    from dagster import DefaultSensorStatus

    statuses: dict[str, Any] = {s.name: s.default_status for s in ALERT_SENSORS}
    assert statuses == {
        "check_failure_alert_sensor": DefaultSensorStatus.RUNNING,
        "run_failure_alert_sensor": DefaultSensorStatus.RUNNING,
        "sensor_failure_alert_sensor": DefaultSensorStatus.RUNNING,
    }
