"""Speed assets and the Kafka-lag sensor on a real Dagster instance, broker and SparkSession."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    SensorResult,
    build_sensor_context,
    materialize,
)

from assets.speed import SPEED_ASSETS, counts, play_events_topic
from lambda_arch.common.config import Settings
from lambda_arch.ingest.generator import TrafficConfig, generate
from lambda_arch.ingest.producer import ProduceRequest, run_produce
from lambda_arch.ingest.schema import PlayEvent, parse_payload
from resources import build_resources
from sensors.kafka_lag import kafka_lag_sensor

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
EVENTS = 3_000
DUPLICATES = 0.05  # exact re-sends: counted once


def produce(settings: Settings, events: int, seed: int) -> None:
    request = ProduceRequest(
        events=events, seed=seed, start=START, duplicate_rate=DUPLICATES, progress=False
    )
    run_produce(settings, request)


def _payloads(seed: int, events: int) -> list[bytes]:
    config = TrafficConfig(seed=seed, start=START, duplicate_rate=DUPLICATES)
    return [record.value for record in itertools.islice(generate(config), events)]


def view_metadata(result: Any, key: str) -> Any:
    """The metadata of one `<view>_speed` output of the counts multi-asset."""
    (event,) = [
        m
        for m in result.asset_materializations_for_node("counts")
        if m.asset_key.to_user_string() == key
    ]
    return event.metadata


def expected_plays(seed: int, events: int) -> Counter[tuple[datetime, str, int]]:
    """Plays per (minute, country, title) by plain Python over the same generated payloads."""
    plays: Counter[tuple[datetime, str, int]] = Counter()
    seen: set[str] = set()
    for payload in _payloads(seed, events):
        event = parse_payload(payload)
        assert isinstance(event, PlayEvent)
        if event.event_type == "play_start" and event.event_id not in seen:
            seen.add(event.event_id)
            minute = event.event_time.replace(second=0, microsecond=0)
            plays[(minute, event.country, event.title_id)] += 1
    return plays


def test_speed_assets_materialize_with_metadata_and_exact_counts(
    spark, speed_env: Settings, instance: DagsterInstance
) -> None:
    produce(speed_env, EVENTS, seed=21)
    result = materialize(
        [play_events_topic, *SPEED_ASSETS], resources=build_resources(), instance=instance
    )
    assert result.success

    trending = view_metadata(result, "trending_speed")
    assert trending["events_read"].value == EVENTS
    assert trending["micro_batches"].value >= 3  # admission control: at most 1000 per batch
    assert trending["lag_left"].value == 0
    assert trending["late_events"].value == 0
    assert "| rank | title_id | plays |" in trending["top_10"].value
    # One counts query: one output per declared count view, each with the run's metadata.
    for name in ("discovery_speed", "device_mix_speed"):
        assert view_metadata(result, name)["events_read"].value == EVENTS
    sessions = result.asset_materializations_for_node("sessions_speed")[0].metadata
    assert sessions["events_read"].value == EVENTS

    # Landing, by the same counts query: every valid Kafka record once (re-sent duplicates are
    # distinct records; the batch layer's play_events_clean deduplicates them by event_id).
    landed = {
        m.asset_key.path[-1]: m.metadata for m in result.asset_materializations_for_node("counts")
    }
    assert landed["play_events_raw"]["valid"].value == EVENTS
    assert landed["play_events_quarantine"]["quarantined"].value == 0
    from lambda_arch.batch.lake import Lake, read_play_events

    raw = read_play_events(spark, Lake.from_settings(speed_env))
    assert raw.count() == EVENTS
    assert raw.select("partition", "offset").distinct().count() == EVENTS
    distinct_ids = {e.event_id for e in map(parse_payload, _payloads(21, EVENTS))}
    assert raw.select("event_id").distinct().count() == len(distinct_ids)

    from lambda_arch.speed.layer import SpeedPaths, read_trending_speed

    rows = read_trending_speed(spark, SpeedPaths.from_settings(speed_env)).collect()
    got = Counter(
        {
            (row["minute"].replace(tzinfo=None), row["country"], row["title_id"]): row["plays"]
            for row in rows
        }
    )
    want = Counter(
        {(m.replace(tzinfo=None), c, t): n for (m, c, t), n in expected_plays(21, EVENTS).items()}
    )
    assert got == want

    # A second run with nothing new reads nothing and changes nothing.
    again = materialize([counts], resources=build_resources(), instance=instance)
    assert view_metadata(again, "trending_speed")["events_read"].value == 0


def lag_sensor(instance: DagsterInstance, resources: dict[str, Any]) -> SensorResult:
    """One evaluation of the Kafka-lag sensor on the instance."""
    with build_sensor_context(instance=instance, resources=resources) as context:
        result = kafka_lag_sensor(context)
    assert isinstance(result, SensorResult)
    return result


def test_lag_sensor_requests_a_run_only_for_new_data(
    spark, speed_env: Settings, instance: DagsterInstance
) -> None:
    produce(speed_env, 500, seed=22)
    resources = build_resources()
    evaluate = partial(lag_sensor, instance, resources)

    first = evaluate()
    assert len(first.run_requests or []) == 1
    observation = first.asset_events[0]
    assert observation.asset_key == AssetKey("play_events_topic")
    assert observation.metadata["end_offset_total"].value == 500
    assert observation.metadata["max_lag"].value == 500

    assert materialize(SPEED_ASSETS, resources=resources, instance=instance).success
    caught_up = evaluate()
    assert not caught_up.run_requests
    assert caught_up.asset_events[0].metadata["max_lag"].value == 0

    produce(speed_env, 40, seed=23)
    behind = evaluate()
    assert len(behind.run_requests or []) == 1
    assert behind.run_requests[0].run_key != first.run_requests[0].run_key
    assert behind.asset_events[0].metadata["max_lag"].value == 40


def test_lag_sensor_fails_with_a_reason_when_the_broker_is_down(
    env_home: Path, instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A failed tick, not a skip: the speed layer stalls, and failed ticks become alerts.
    from lambda_arch.runtime.broker import free_port
    from sensors.kafka_lag import SpeedLayerStalled

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")
    with (
        build_sensor_context(instance=instance, resources=build_resources()) as context,
        pytest.raises(SpeedLayerStalled, match="cannot read offsets"),
    ):
        kafka_lag_sensor(context)


def test_late_events_are_counted_in_metadata_not_in_the_view(
    spark, speed_env: Settings, instance: DagsterInstance
) -> None:
    from kafka import KafkaProducer

    produce(speed_env, 300, seed=24)
    assert materialize([counts], resources=build_resources(), instance=instance).success
    late_time = START - timedelta(hours=2)
    producer = KafkaProducer(bootstrap_servers=speed_env.bootstrap_servers)
    producer.send(
        speed_env.topic,
        key=b"1",
        value=(
            '{"event_id":"late-1","event_type":"play_start","event_time":"'
            + late_time.strftime("%Y-%m-%dT%H:%M:%SZ")
            + '","member_id":1,"title_id":99999,"country":"US"}'
        ).encode(),
    )
    producer.flush()
    producer.close()
    result = materialize([counts], resources=build_resources(), instance=instance)
    metadata = view_metadata(result, "trending_speed")
    assert metadata["events_read"].value == 1
    assert metadata["late_events"].value == 1

    from lambda_arch.speed.layer import SpeedPaths, read_trending_speed

    view = read_trending_speed(spark, SpeedPaths.from_settings(speed_env))
    assert view.where("title_id = 99999").count() == 0


def test_lag_sensor_leaves_the_views_to_a_running_stream(
    spark, speed_env: Settings, instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    from assets.jobs import views_stream_job
    from lambda_arch.definitions import defs

    produce(speed_env, 300, seed=24)
    monkeypatch.setenv("LAMBDA_ARCH_SPEED_STREAM_S", "600")
    resources = build_resources()
    evaluate = partial(lag_sensor, instance, resources)

    # No stream running: the whole speed run, views included.
    alone = evaluate()
    assert alone.run_requests and alone.run_requests[0].asset_selection is None

    # A views_stream_job run in flight (it lands, counts and stitches sessions): no speed run.
    instance.create_run_for_job(job_def=defs.resolve_job_def(views_stream_job.name))
    beside = evaluate()
    assert not beside.run_requests
    assert beside.skip_reason and "views_stream_job reads" in beside.skip_reason.skip_message
    observed = beside.asset_events[0].metadata  # the lag is still measured and plotted
    assert observed["max_lag"].value == 300, observed


def test_a_continuous_step_ends_its_stream_time_after_it_started_however_long_it_waited(
    tmp_path: Path,
) -> None:
    """A successor run waits at the checkpoint's lock while its predecessor ends: its stream
    still ends LAMBDA_ARCH_SPEED_STREAM_S after the step started, so every hand-over of the
    views stream (sensors/stream.py) waits as long as the first, not longer each time."""
    import time

    from dagster import AssetKey, build_asset_context

    from assets.speed import _continuous
    from lambda_arch.speed.streaming import StreamReport

    config = Settings(LAMBDA_ARCH_HOME=str(tmp_path), LAMBDA_ARCH_SPEED_STREAM_S=1)
    seen: dict[str, Any] = {}

    def stream(*, stream_s: float, on_batch: Any, stop_early: Any) -> StreamReport:
        seen["before"] = stop_early()
        time.sleep(1.2)  # the lock wait: longer than the stream's time
        seen["after"] = stop_early()
        seen["stream_s"] = stream_s
        return StreamReport("counts", "checkpoint", 0, 0, {}, {}, 1.2, 0.0, None, None, 0, {})

    with build_asset_context() as context:
        _continuous(context, config, "counts", [AssetKey("trending_speed")], [], stream, 2.0)
    assert seen == {"before": False, "after": True, "stream_s": 1}
