"""Serving assets on a real Dagster instance, broker and SparkSession: speed_job serves what it
counted in the same run, the serving sensor follows batch runs, the metadata reports both."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from dagster import DagsterInstance, RunRequest, SkipReason, build_sensor_context, materialize

import assets.speed
from assets.batch import BATCH_ASSETS
from lambda_arch.common.config import Settings
from lambda_arch.definitions import defs
from lambda_arch.serving import answers
from lambda_arch.serving.store import ServingStore
from resources import build_resources
from sensors.serving import serving_refresh_sensor
from sensors.stream import views_stream_sensor
from tests.assets.test_batch_assets import play, send

DAY_START = datetime(2026, 3, 1, tzinfo=UTC)


def plays() -> list[bytes]:
    """A play every 20 minutes from 2026-03-01 00:00 to 2026-03-02 01:40 (title n % 4)."""
    return [play(f"s{n}", DAY_START + timedelta(minutes=20 * n), n % 4) for n in range(78)]


def sensor(instance: DagsterInstance) -> RunRequest | SkipReason:
    with build_sensor_context(instance=instance, resources=build_resources()) as context:
        return serving_refresh_sensor(context)


def test_speed_job_serves_what_it_counted_and_the_sensor_follows_batch_runs(
    spark, speed_env: Settings, instance: DagsterInstance
) -> None:
    send(speed_env, plays())
    result = defs.resolve_job_def("speed_job").execute_in_process(instance=instance)
    assert result.success
    served = result.asset_materializations_for_node("trending_serving")[0].metadata
    assert served["speed_micro_batches_read"].value >= 1
    assert served["batch_watermark"].value == ""
    assert served["speed_watermark"].value == "2026-03-02T01:30:00Z"
    assert "| rank | title_id | plays |" in served["top_10"].value
    for name in ("discovery_serving", "sessions_serving"):
        assert result.asset_materializations_for_node(name)
    # Freshness: the count views are counted (one query, which lands too) and trending served
    # first, sessions after.
    order = [event.step_key for event in result.all_events if event.is_step_start]
    assert order[:3] == ["counts", "trending_serving", "discovery_serving"]
    assert order.index("sessions_speed") > order.index("discovery_serving")

    store = ServingStore.from_settings(speed_env)
    whole = answers.trending(store, as_of=datetime(2026, 3, 2, 2, 0, tzinfo=UTC), window=26 * 60)
    assert whole["titles"] == [
        {"rank": 1, "title_id": 0, "plays": 20},
        {"rank": 2, "title_id": 1, "plays": 20},
        {"rank": 3, "title_id": 2, "plays": 19},
        {"rank": 4, "title_id": 3, "plays": 19},
    ]
    assert isinstance(sensor(instance), SkipReason)  # the speed run served itself

    # The batch layer computes 2026-03-01: the store is behind until serving_job runs.
    assert materialize(
        BATCH_ASSETS, resources=build_resources(), instance=instance, partition_key="2026-03-01"
    ).success
    request = sensor(instance)
    assert isinstance(request, RunRequest)
    refresh = defs.resolve_job_def("serving_job").execute_in_process(instance=instance)
    assert refresh.success
    metadata = refresh.asset_materializations_for_node("trending_serving")[0].metadata
    assert metadata["batch_days_loaded"].value == 1
    assert metadata["batch_watermark"].value == "2026-03-02T00:00:00Z"
    assert metadata["speed_rows_pruned"].value > 0
    assert isinstance(sensor(instance), SkipReason)

    # Same answer, now mostly from the batch layer.
    again = answers.trending(store, as_of=datetime(2026, 3, 2, 2, 0, tzinfo=UTC), window=26 * 60)
    assert again["titles"] == whole["titles"]
    assert again["batch_watermark"] == "2026-03-02T00:00:00Z"


def stream_sensor(instance: DagsterInstance) -> RunRequest | SkipReason:
    with build_sensor_context(instance=instance, resources=build_resources()) as context:
        return views_stream_sensor(context)


def test_views_stream_job_serves_while_it_runs_and_the_sensor_keeps_one_going(
    spark, speed_env: Settings, instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    skipped = stream_sensor(instance)
    assert isinstance(skipped, SkipReason) and "LAMBDA_ARCH_SPEED_STREAM_S is 0" in str(skipped)

    monkeypatch.setenv("LAMBDA_ARCH_SPEED_STREAM_S", "6")
    monkeypatch.setenv("LAMBDA_ARCH_SPEED_TRIGGER_S", "0.5")
    monkeypatch.setattr(assets.speed, "PUBLISH_EVERY_S", 0.0)  # report every micro-batch
    request = stream_sensor(instance)
    assert isinstance(request, RunRequest)

    send(speed_env, plays())
    job = defs.resolve_job_def("views_stream_job")
    result = job.execute_in_process(instance=instance, tags=request.tags)
    assert result.success
    events = result.asset_materializations_for_node("counts")
    keys = [event.asset_key.to_user_string() for event in events]
    # While it ran: the view and its serving asset, reported together per micro-batch; then
    # the step's own materialization with the whole run's figures.
    assert keys.count("trending_serving") >= 1 and keys[-1] == "trending_speed"
    assert {"discovery_speed", "device_mix_speed"} <= set(keys)  # the same query's outputs
    assert events[-1].metadata["events_read"].value == 78
    during = [e for e in events if e.asset_key.to_user_string() == "trending_serving"]
    assert during[0].metadata["speed_micro_batches_read"].value >= 1
    assert during[-1].metadata["speed_watermark"].value == "2026-03-02T01:30:00Z"
    assert any(
        e.asset_key.to_user_string() == "discovery_serving"
        for e in result.asset_materializations_for_node("counts")
    )
    store = ServingStore.from_settings(speed_env)
    answer = answers.trending(store, as_of=datetime(2026, 3, 2, 2, 0, tzinfo=UTC), window=26 * 60)
    assert [t["plays"] for t in answer["titles"]] == [20, 20, 19, 19]

    # A failed stream is retried after a pause, not on every tick.
    failed = instance.create_run_for_job(job_def=job)
    instance.report_run_failed(failed)
    backing_off = stream_sensor(instance)
    assert isinstance(backing_off, SkipReason) and "failed" in str(backing_off)
