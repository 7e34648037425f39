"""The views-stream sensor: keep one continuous run of the counts query (every count view) going.

Only with LAMBDA_ARCH_SPEED_STREAM_S > 0 (`make demo` sets it): each views_stream_job run
streams for that long and ends, and this sensor starts the next one. A run that failed is
retried after STREAM_RETRY_S, not on every tick (a broken setting would otherwise start a
failing run, and an alert, every few seconds).
"""

from __future__ import annotations

import time

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from assets.jobs import STREAM_JOB_NAME, views_stream_job
from lambda_arch.runtime.broker import ServiceError, require_reachable
from resources import LambdaArchSettings
from sensors.runs import job_in_flight

STREAM_SENSOR_INTERVAL_S = 5
STREAM_RETRY_S = 60.0


def seconds_since_failure(context: SensorEvaluationContext) -> float | None:
    """Seconds since the last views_stream_job run ended in failure; None if it did not fail."""
    records = context.instance.get_run_records(
        filters=RunsFilter(job_name=STREAM_JOB_NAME), limit=1
    )
    if not records or records[0].dagster_run.status != DagsterRunStatus.FAILURE:
        return None
    ended = records[0].end_time or records[0].update_timestamp.timestamp()
    return time.time() - ended


@sensor(
    job=views_stream_job,
    minimum_interval_seconds=STREAM_SENSOR_INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "With LAMBDA_ARCH_SPEED_STREAM_S > 0, keeps one views_stream_job run going: the counts "
        "query of every count view as a continuous query, served after every micro-batch."
    ),
)
def views_stream_sensor(
    context: SensorEvaluationContext, settings: LambdaArchSettings
) -> RunRequest | SkipReason:
    config = settings.get()
    if config.speed_stream_s <= 0:
        return SkipReason("LAMBDA_ARCH_SPEED_STREAM_S is 0: the views run in speed_job only")
    if job_in_flight(context.instance, STREAM_JOB_NAME):
        return SkipReason("a views stream is running")
    since = seconds_since_failure(context)
    if since is not None and since < STREAM_RETRY_S:
        return SkipReason(
            f"the last views stream failed {since:.0f} s ago; next try in "
            f"{STREAM_RETRY_S - since:.0f} s"
        )
    try:
        require_reachable(config.bootstrap_servers)
    except ServiceError as error:
        return SkipReason(f"broker not reachable: {error}")
    return RunRequest(tags={"lambda_arch/reason": "views-stream"})
