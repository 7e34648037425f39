"""What the sensors ask the instance about runs."""

from __future__ import annotations

from dagster import DagsterInstance, RunsFilter
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES


def job_in_flight(instance: DagsterInstance, job_name: str) -> bool:
    """Whether a run of the job is queued, starting or running.

    Queued counts: with the Spark-run limit of dagster.yaml a requested run can wait behind a
    batch run for minutes, and a sensor that ignored it would queue one more every tick.
    """
    runs = instance.get_run_records(
        filters=RunsFilter(job_name=job_name, statuses=list(NOT_FINISHED_STATUSES)), limit=1
    )
    return bool(runs)
