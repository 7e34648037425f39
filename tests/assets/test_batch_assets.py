"""Batch assets on a real Dagster instance, broker and SparkSession: a three-day backfill in one
run, idempotent reruns, and the sensors and schedule that request partitions."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, date, datetime, timedelta

import pytest
from dagster import (
    DagsterInstance,
    SensorResult,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
    materialize,
)
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from assets.batch import BATCH_ASSETS
from assets.speed import counts
from lambda_arch.batch import layer as batch
from lambda_arch.batch.lake import Lake
from lambda_arch.common.config import Settings
from lambda_arch.ingest.producer import ensure_topic, make_producer
from resources import build_resources
from sensors.batch import day_complete_sensor, nightly_batch_schedule, stale_partition_sensor

DAYS = [date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3)]


def play(event_id: str, moment: datetime, title_id: int, country: str = "US") -> bytes:
    return json.dumps(
        {
            "event_id": event_id,
            "event_type": "play_start",
            "event_time": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "member_id": title_id % 5,
            "title_id": title_id,
            "country": country,
        }
    ).encode()


def send(settings: Settings, payloads: list[bytes]) -> None:
    ensure_topic(settings.bootstrap_servers, settings.topic, 3)
    producer = make_producer(settings.bootstrap_servers)
    for payload in payloads:
        producer.send(settings.topic, value=payload)
    producer.flush()
    producer.close()


def traffic(days: list[date], per_hour: int = 2) -> list[bytes]:
    """Plays every half hour of each day, plus a duplicate of the first one of each day."""
    payloads = []
    for day in days:
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        for n in range(24 * per_hour):
            payloads.append(play(f"{day}-{n}", start + timedelta(minutes=30 * n), n % 7))
        payloads.append(payloads[-24 * per_hour])
    return payloads


def trending_by_day(spark, settings: Settings) -> Counter[str]:
    rows = batch.read_batch_view(
        spark, Lake.from_settings(settings), batch.TRENDING_TABLE
    ).collect()
    counts: Counter[str] = Counter()
    for row in rows:
        counts[row.dt] += row.plays
    return counts


def sensor_result(sensor, instance: DagsterInstance) -> SensorResult | SkipReason:
    with build_sensor_context(instance=instance, resources=build_resources()) as context:
        return sensor(context)


def test_a_three_day_backfill_is_one_run_and_reruns_change_nothing(
    spark, speed_env: Settings, instance: DagsterInstance
) -> None:
    # Days 1-3, and the first hour of day 4 so that day 3 is complete.
    send(speed_env, [*traffic(DAYS), play("d4", datetime(2026, 3, 4, 0, 30, tzinfo=UTC), 1)])
    assert materialize([counts], resources=build_resources(), instance=instance).success

    requested = sensor_result(day_complete_sensor, instance)
    assert isinstance(requested, SensorResult)
    (request,) = requested.run_requests
    assert request.tags[ASSET_PARTITION_RANGE_START_TAG] == "2026-03-01"
    assert request.tags[ASSET_PARTITION_RANGE_END_TAG] == "2026-03-03"

    result = materialize(
        BATCH_ASSETS, resources=build_resources(), instance=instance, tags=request.tags
    )
    assert result.success
    for asset in BATCH_ASSETS:
        name = asset.key.path[-1]
        metadata = result.asset_materializations_for_node(name)[0].metadata
        assert metadata["days"].value == 3, name
    # One run materialized all three partitions of every batch asset.
    assert len(instance.get_run_records()) == 2  # counts (landing) + the backfill
    for asset in BATCH_ASSETS:
        keys = instance.get_materialized_partitions(asset.key)
        assert keys == {"2026-03-01", "2026-03-02", "2026-03-03"}

    assert trending_by_day(spark, speed_env) == {d.isoformat(): 48 for d in DAYS}
    assert isinstance(sensor_result(day_complete_sensor, instance), SkipReason)
    assert isinstance(sensor_result(stale_partition_sensor, instance), SkipReason)

    # Rerunning a partition rewrites the same content.
    lake = Lake.from_settings(speed_env)
    before = sorted(batch.read_batch_view(spark, lake, batch.SESSIONS_TABLE).collect())
    rerun = materialize(
        BATCH_ASSETS, resources=build_resources(), instance=instance, partition_key="2026-03-02"
    )
    assert rerun.success
    assert sorted(batch.read_batch_view(spark, lake, batch.SESSIONS_TABLE).collect()) == before
    assert trending_by_day(spark, speed_env) == {d.isoformat(): 48 for d in DAYS}


def test_late_events_make_a_computed_day_stale_and_the_sensor_requests_it(
    spark, speed_env: Settings, instance: DagsterInstance
) -> None:
    send(speed_env, [*traffic(DAYS[:1]), play("d2", datetime(2026, 3, 2, 1, 0, tzinfo=UTC), 1)])
    assert materialize([counts], resources=build_resources(), instance=instance).success
    assert materialize(
        BATCH_ASSETS, resources=build_resources(), instance=instance, partition_key="2026-03-01"
    ).success
    assert isinstance(sensor_result(stale_partition_sensor, instance), SkipReason)

    send(speed_env, [play("late", datetime(2026, 3, 1, 12, 1, tzinfo=UTC), 99)])
    assert materialize([counts], resources=build_resources(), instance=instance).success
    stale = sensor_result(stale_partition_sensor, instance)
    assert isinstance(stale, SensorResult)
    (request,) = stale.run_requests
    assert request.partition_key == "2026-03-01"
    assert request.tags["lambda_arch/reason"] == "stale"

    assert materialize(
        BATCH_ASSETS, resources=build_resources(), instance=instance, partition_key="2026-03-01"
    ).success
    assert trending_by_day(spark, speed_env)["2026-03-01"] == 49
    assert isinstance(sensor_result(stale_partition_sensor, instance), SkipReason)


def test_the_day_complete_sensor_skips_before_any_day_is_complete(
    speed_env: Settings, instance: DagsterInstance
) -> None:
    skipped = sensor_result(day_complete_sensor, instance)
    assert isinstance(skipped, SkipReason) and "no missing days" in skipped.skip_message


@pytest.mark.parametrize(
    ("scheduled", "want"),
    [
        (datetime(2026, 3, 5, 2, 0, tzinfo=UTC), "2026-03-04"),
        (datetime(2025, 1, 1, 2, 0, tzinfo=UTC), None),
    ],
)
def test_the_nightly_schedule_recomputes_the_previous_day(
    speed_env: Settings, instance: DagsterInstance, scheduled: datetime, want: str | None
) -> None:
    # The S3 resource is a context manager: resources live inside the `with`.
    with build_schedule_context(
        instance=instance, scheduled_execution_time=scheduled, resources=build_resources()
    ) as context:
        result = nightly_batch_schedule(context)
    if want is None:
        assert isinstance(result, SkipReason)
    else:
        assert result.partition_key == want and result.run_key == f"nightly-{want}"
