"""The Kafka-lag sensor: run the speed layer when the topic has records its queries have not read."""

from __future__ import annotations

from dagster import (
    AssetObservation,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from assets.jobs import SPEED_JOB_NAME, STREAM_JOB_NAME, speed_job
from assets.speed import TOPIC_ASSET
from lambda_arch.ingest.kafka_offsets import KafkaOffsetsError
from lambda_arch.runtime.broker import ServiceError, require_reachable
from lambda_arch.speed import layer as speed
from lambda_arch.speed.lag import measure_lag
from resources import LambdaArchSettings
from sensors.runs import job_in_flight

LAG_SENSOR_INTERVAL_S = 10


class SpeedLayerStalled(RuntimeError):
    """The lag sensor cannot measure the topic (broker unreachable, topic missing)."""


def speed_run_in_flight(context: SensorEvaluationContext) -> bool:
    """Whether a speed run is queued or running (its queries will read the new records too)."""
    return job_in_flight(context.instance, SPEED_JOB_NAME)


@sensor(
    job=speed_job,
    minimum_interval_seconds=LAG_SENSOR_INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Compares the topic's end offsets with each speed query's checkpoint, records the lag "
        "per partition on play_events_topic and requests a speed run when there is new data "
        "and none is in flight."
    ),
)
def kafka_lag_sensor(
    context: SensorEvaluationContext, settings: LambdaArchSettings
) -> SensorResult | SkipReason:
    config = settings.get()
    checkpoints = speed.checkpoints_of(config)
    # A continuous run lands, counts every view and stitches sessions: a speed run would only
    # wait for it to pass the topic's end (and take CPU from it).
    streaming = config.speed_stream_s > 0 and job_in_flight(context.instance, STREAM_JOB_NAME)
    try:
        require_reachable(config.bootstrap_servers)  # fails fast instead of a client timeout
        topic_lag = measure_lag(config.bootstrap_servers, config.topic, checkpoints)
    except (KafkaOffsetsError, ServiceError) as error:
        # A failure, not a skip: the speed layer stalls until the broker answers, and a failed
        # tick is what the sensor-failure alert and `lambda-arch status` report.
        raise SpeedLayerStalled(f"cannot read offsets of {config.topic!r}: {error}") from None
    observation = AssetObservation(asset_key=TOPIC_ASSET, metadata=topic_lag.metadata())
    if not topic_lag.has_new_data:
        return SensorResult(asset_events=[observation], skip_reason="no new records")
    if streaming:
        return SensorResult(
            asset_events=[observation],
            skip_reason=f"{topic_lag.max_lag} records waiting; {STREAM_JOB_NAME} reads them",
        )
    if speed_run_in_flight(context):
        return SensorResult(
            asset_events=[observation],
            skip_reason=f"{topic_lag.max_lag} records waiting; a speed run is in flight",
        )
    request = RunRequest(run_key=f"lag-{topic_lag.signature}")
    return SensorResult(asset_events=[observation], run_requests=[request])
