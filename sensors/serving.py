"""The serving sensor: refresh the serving store when the lake has something it does not serve."""

from __future__ import annotations

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from assets.jobs import BATCH_JOB_NAME, SERVING_JOB_NAME, SPEED_JOB_NAME, serving_job
from lambda_arch.serving.refresh import pending_views
from resources import LambdaArchSettings
from sensors.runs import job_in_flight

SERVING_SENSOR_INTERVAL_S = 20


def writer_in_flight(context: SensorEvaluationContext) -> str | None:
    """A run that will refresh the store itself (speed, serving) or change the lake again
    (batch): the name of its job, or None."""
    for job in (SERVING_JOB_NAME, SPEED_JOB_NAME, BATCH_JOB_NAME):
        if job_in_flight(context.instance, job):
            return job
    return None


@sensor(
    job=serving_job,
    minimum_interval_seconds=SERVING_SENSOR_INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Refreshes the serving store after the batch layer computed or recomputed days (speed "
        "runs refresh it themselves), so the serving views follow both layers."
    ),
)
def serving_refresh_sensor(
    context: SensorEvaluationContext, settings: LambdaArchSettings
) -> RunRequest | SkipReason:
    config = settings.get()
    pending = pending_views(config)
    if not pending:
        return SkipReason("the serving store is up to date with the lake")
    if job := writer_in_flight(context):
        return SkipReason(f"{job} is in flight; it will be served after it")
    why = "; ".join(f"{view}: {reason}" for view, reason in sorted(pending.items()))
    context.log.info(f"serving store behind the lake: {why}")
    return RunRequest(tags={"lambda_arch/reason": "serving-behind"})
