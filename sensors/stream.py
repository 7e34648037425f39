"""The views-stream sensor: keep one continuous run of the counts query (every count view) going.

Only with LAMBDA_ARCH_SPEED_STREAM_S > 0 (`make demo` sets it): each views_stream_job run
streams for that long and ends, and this sensor starts the next one HANDOVER_LEAD_S before:
the successor starts its step processes and Spark sessions meanwhile and waits at the
checkpoints' locks, so the queries pause for seconds between runs instead of a run's start
(~45 s with the demo's stack at 2,000 events/s: benchmarks/sustained.py). A run that failed
is retried after STREAM_RETRY_S, not on every tick (a broken setting would otherwise start a
failing run, and an alert, every few seconds).
"""

from __future__ import annotations

import time

from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES

from assets.jobs import STREAM_JOB_NAME, views_stream_job
from lambda_arch.common.tags import SPARK_RUN_TAG, SPARK_STREAM, SPARK_STREAM_NEXT
from lambda_arch.runtime.broker import ServiceError, require_reachable
from resources import LambdaArchSettings
from sensors.runs import live_runs

STREAM_SENSOR_INTERVAL_S = 5
STREAM_RETRY_S = 60.0
# The successor of a running views stream is requested this long before the running one's
# time is up (its start + LAMBDA_ARCH_SPEED_STREAM_S): a run's start took ~45 s under load.
HANDOVER_LEAD_S = 60.0
REASON_TAG = "lambda_arch/reason"


def successor(instance: DagsterInstance, stream_s: float) -> RunRequest | SkipReason | None:
    """While a views stream runs: its successor's request once the running one has less than
    HANDOVER_LEAD_S left (in the other Spark slot), else why not. None: no stream in flight."""
    records = instance.get_run_records(
        filters=RunsFilter(job_name=STREAM_JOB_NAME, statuses=list(NOT_FINISHED_STATUSES)),
        limit=10,
    )
    live = {run.run_id for run in live_runs(instance, [r.dagster_run for r in records])}
    running = [r for r in records if r.dagster_run.run_id in live]
    if not running:
        return None
    if len(running) > 1:
        return SkipReason("a views stream is running and its successor is waiting to take over")
    record = running[0]
    if record.start_time is None:
        return SkipReason("a views stream is starting")
    left = record.start_time + stream_s - time.time()
    if left > HANDOVER_LEAD_S:
        return SkipReason(f"a views stream is running ({left:.0f} s left)")
    run = record.dagster_run
    slot = SPARK_STREAM_NEXT if run.tags.get(SPARK_RUN_TAG) == SPARK_STREAM else SPARK_STREAM
    return RunRequest(
        run_key=f"after-{run.run_id}",
        tags={REASON_TAG: "views-stream-successor", SPARK_RUN_TAG: slot},
    )


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
    handover = successor(context.instance, config.speed_stream_s)
    if handover is not None:
        return handover
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
    return RunRequest(tags={REASON_TAG: "views-stream"})
