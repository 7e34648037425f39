"""Batch sensors and schedule: complete days, stale days (late data), and a nightly safety net."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dagster import (
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    schedule,
    sensor,
)
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from assets.batch import BATCH_ASSETS, DAILY
from assets.jobs import BATCH_JOB_NAME, batch_job
from lambda_arch.batch import layer as batch
from resources import LambdaArchSettings
from sensors.runs import runs_in_flight

BATCH_SENSOR_INTERVAL_S = 60
BATCH_ASSET_KEYS = [asset.key for asset in BATCH_ASSETS]
# After a failed batch run the sensors wait this long before asking again (no retry storm).
FAILURE_BACKOFF = timedelta(minutes=5)


def batch_run_in_flight(context: SensorEvaluationContext) -> bool:
    """Whether a batch run is queued or running (it will compute what is owed): a batch_job
    run, or a run of the batch assets launched otherwise (a UI backfill, `dagster asset
    materialize`). Overlaps that slip through (two launches in one instant) wait on the
    batch-writer lock (lambda_arch.batch.layer.write_days), they never fail."""
    return bool(runs_in_flight(context.instance, BATCH_JOB_NAME, BATCH_ASSET_KEYS))


def recent_failure(context: SensorEvaluationContext) -> str | None:
    """The id of a batch run that failed within the back-off period, if any."""
    runs = context.instance.get_run_records(
        filters=RunsFilter(
            job_name=BATCH_JOB_NAME,
            statuses=[DagsterRunStatus.FAILURE],
            updated_after=datetime.now(UTC) - FAILURE_BACKOFF,
        ),
        limit=1,
    )
    return runs[0].dagster_run.run_id if runs else None


def range_requests(days: list, reason: str) -> list[RunRequest]:
    """One run per run of consecutive days: a single run for one day, a range run otherwise."""
    requests = []
    for first, last in batch.day_ranges(days):
        tags = {"lambda_arch/reason": reason}
        if first == last:
            requests.append(RunRequest(partition_key=first.isoformat(), tags=tags))
        else:
            tags |= {
                ASSET_PARTITION_RANGE_START_TAG: first.isoformat(),
                ASSET_PARTITION_RANGE_END_TAG: last.isoformat(),
            }
            requests.append(RunRequest(tags=tags))
    return requests


def _evaluate(
    context: SensorEvaluationContext, settings: LambdaArchSettings, which: str
) -> SensorResult | SkipReason:
    if batch_run_in_flight(context):
        return SkipReason("a batch run is in flight")
    if failed := recent_failure(context):
        return SkipReason(f"batch run {failed} failed less than {FAILURE_BACKOFF} ago")
    owed = batch.plan(settings.get())
    days = owed.missing if which == "missing" else owed.stale
    # Events from the future (producer clocks ahead, the demo's sped-up clock) complete days
    # that are not partitions yet: they wait until their partition exists.
    existing = set(DAILY.get_partition_keys())
    days = [day for day in days if day.isoformat() in existing]
    if not days:
        return SkipReason(
            f"no {which} days (landing watermark {owed.landing_watermark}, "
            f"{len(owed.complete)} complete days)"
        )
    context.log.info(f"{which} days: {', '.join(d.isoformat() for d in days)}")
    reason = "day-complete" if which == "missing" else "stale"
    return SensorResult(run_requests=range_requests(days, reason))


@sensor(
    job=batch_job,
    minimum_interval_seconds=BATCH_SENSOR_INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Requests a day's batch partition once the landing watermark has passed the end of the "
        "day (latest event time landed minus the allowed lateness); consecutive days run as "
        "one single-run backfill."
    ),
)
def day_complete_sensor(
    context: SensorEvaluationContext, settings: LambdaArchSettings
) -> SensorResult | SkipReason:
    return _evaluate(context, settings, "missing")


@sensor(
    job=batch_job,
    minimum_interval_seconds=BATCH_SENSOR_INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Recomputes a computed day whose raw events changed since (late events landed): the "
        "day's raw row counts differ from those its partition was computed from."
    ),
)
def stale_partition_sensor(
    context: SensorEvaluationContext, settings: LambdaArchSettings
) -> SensorResult | SkipReason:
    return _evaluate(context, settings, "stale")


@schedule(
    job=batch_job,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Nightly safety net: recompute the previous day at 02:00 UTC.",
)
def nightly_batch_schedule(
    context: ScheduleEvaluationContext, settings: LambdaArchSettings
) -> RunRequest | SkipReason:
    day = (context.scheduled_execution_time.astimezone(UTC) - timedelta(days=1)).date()
    if day < settings.get().start_date:
        return SkipReason(f"{day} is before LAMBDA_ARCH_START_DATE")
    return RunRequest(
        run_key=f"nightly-{day.isoformat()}",
        partition_key=day.isoformat(),
        tags={"lambda_arch/reason": "nightly"},
    )
