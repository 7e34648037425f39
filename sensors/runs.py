"""What the sensors (and `lambda-arch run`) ask the instance about runs and backfills in flight."""

from __future__ import annotations

import os
import socket
from collections.abc import Collection
from dataclasses import dataclass
from datetime import date

from dagster import AssetKey, DagsterInstance, DagsterRun, RunsFilter
from dagster._core.definitions.assets.graph.base_asset_graph import BaseAssetGraph
from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES

from assets.batch import tagged_days
from lambda_arch.batch import layer as batch

# Backfills whose daemon may still launch runs.
_BACKFILL_IN_FLIGHT = [BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING]
# Runs that execute in the process that started them (`lambda-arch run`) carry its pid and host:
# when that process is killed, its run stays STARTED (the default run launcher has no worker
# health check), and without these tags every sensor and `run` would wait on it for ever.
RUN_PID_TAG = "lambda_arch/pid"
RUN_HOST_TAG = "lambda_arch/host"


def in_process_run_tags() -> dict[str, str]:
    """The tags that let others tell whether this process's in-process run is still alive."""
    return {RUN_PID_TAG: str(os.getpid()), RUN_HOST_TAG: socket.gethostname()}


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def is_abandoned(run: DagsterRun) -> bool:
    """Whether a run in flight executed in a process of this host that no longer exists."""
    pid = run.tags.get(RUN_PID_TAG, "")
    if not pid.isdigit() or run.tags.get(RUN_HOST_TAG) != socket.gethostname():
        return False
    return int(pid) != os.getpid() and _process_gone(int(pid))


def live_runs(instance: DagsterInstance, runs: list[DagsterRun]) -> list[DagsterRun]:
    """The runs still alive; an abandoned one is marked failed (the run-failure alert fires)."""
    live = []
    for run in runs:
        if is_abandoned(run):
            instance.report_run_failed(
                run,
                f"its process (pid {run.tags[RUN_PID_TAG]}) ended without finishing the run",
            )
        else:
            live.append(run)
    return live


def job_in_flight(instance: DagsterInstance, job_name: str) -> bool:
    """Whether a run of the job is queued, starting or running.

    Queued counts: with the Spark-run limit of dagster.yaml a requested run can wait behind a
    batch run for minutes, and a sensor that ignored it would queue one more every tick.
    """
    records = instance.get_run_records(
        filters=RunsFilter(job_name=job_name, statuses=list(NOT_FINISHED_STATUSES)), limit=50
    )
    return bool(live_runs(instance, [record.dagster_run for record in records]))


def runs_in_flight(
    instance: DagsterInstance, job_name: str, asset_keys: Collection[AssetKey] = ()
) -> list[DagsterRun]:
    """Queued, starting or running runs of `job_name`, or of any job that materializes one of
    `asset_keys` (a UI backfill or `dagster asset materialize` runs the implicit asset job).
    Runs whose process is gone are marked failed and left out."""
    records = instance.get_run_records(
        filters=RunsFilter(statuses=list(NOT_FINISHED_STATUSES)), limit=500
    )
    keys = set(asset_keys)
    return live_runs(
        instance,
        [
            record.dagster_run
            for record in records
            if record.dagster_run.job_name == job_name
            or keys & set(record.dagster_run.asset_selection or ())
        ],
    )


@dataclass(frozen=True)
class BatchWork:
    """One run or backfill in flight that writes batch partitions."""

    kind: str  # "run" or "backfill"
    id: str
    days: list[date] | None  # None: unknown, may be any day
    origin: str  # who launched it (sensor, schedule, backfill, a user), for messages

    def overlaps(self, days: Collection[date]) -> bool:
        return self.days is None or bool(set(self.days) & set(days))

    def describe(self) -> str:
        span = f"{self.days[0]}..{self.days[-1]}" if self.days else "days unknown"
        return f"{self.kind} {self.id[:8]} ({self.origin}, {span})"


def _origin(run: DagsterRun) -> str:
    tags = run.tags
    for key, name in (
        ("dagster/sensor_name", "sensor"),
        ("dagster/schedule_name", "schedule"),
        ("dagster/backfill", "backfill"),
    ):
        if key in tags:
            return f"{name} {tags[key]}"
    return tags.get("lambda_arch/reason") or "launched by hand"


def batch_work_in_flight(
    instance: DagsterInstance,
    job_name: str,
    asset_keys: Collection[AssetKey],
    asset_graph: BaseAssetGraph | None = None,
) -> list[BatchWork]:
    """Runs of batch assets in flight, plus backfills of them whose runs may not exist yet
    (with an asset graph to read asset backfills' targets)."""
    work = [
        BatchWork("run", run.run_id, tagged_days(run.tags), _origin(run))
        for run in runs_in_flight(instance, job_name, asset_keys)
    ]
    for backfill in instance.get_backfills(filters=BulkActionsFilter(statuses=_BACKFILL_IN_FLIGHT)):
        names: list[str] | None = None
        if backfill.is_asset_backfill:
            if asset_graph is None:
                continue
            try:
                data = backfill.get_asset_backfill_data(asset_graph)
            except Exception:  # a backfill of definitions that changed since: cannot say
                names = None
            else:
                targets = [
                    data.get_target_partitions_subset(key)
                    for key in asset_keys
                    if key in data.target_subset.asset_keys
                ]
                if not targets:
                    continue  # a backfill of other assets
                names = sorted({name for subset in targets for name in subset.get_partition_keys()})
        elif backfill.job_name == job_name:
            names = list(backfill.partition_names or [])
        else:
            continue
        days = None
        if names is not None:
            try:
                days = sorted(batch.parse_day(name) for name in names)
            except batch.BatchError:
                days = None
        work.append(
            BatchWork("backfill", backfill.backfill_id, days, f"backfill {backfill.backfill_id}")
        )
    return work
