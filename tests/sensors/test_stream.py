"""The views-stream sensor hands a continuous run over to its successor before its time is up,
on a real Dagster instance (runs created and started as the daemon would)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dagster import (
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    RunRequest,
    SkipReason,
    build_sensor_context,
)
from dagster._core.test_utils import instance_for_test

from lambda_arch.common.tags import SPARK_RUN_TAG, SPARK_STREAM, SPARK_STREAM_NEXT
from lambda_arch.definitions import defs
from resources import build_resources
from sensors.stream import HANDOVER_LEAD_S, views_stream_sensor


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as test_instance:
        yield test_instance


def evaluate(instance: DagsterInstance) -> RunRequest | SkipReason:
    with build_sensor_context(instance=instance, resources=build_resources()) as context:
        return views_stream_sensor(context)


def started_stream(instance: DagsterInstance, tags: dict[str, str] | None = None) -> DagsterRun:
    """A views_stream_job run that has started now, tagged as the daemon tags a sensor's run
    (the job's tags, then the request's)."""
    job = defs.resolve_job_def("views_stream_job")
    run = instance.create_run_for_job(job_def=job, tags={**job.tags, **(tags or {})})
    instance.report_dagster_event(
        DagsterEvent(DagsterEventType.RUN_START.value, job_name=run.job_name), run.run_id
    )
    return run


def test_a_successor_is_requested_before_the_running_stream_ends(
    instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAMBDA_ARCH_SPEED_STREAM_S", str(int(HANDOVER_LEAD_S) + 120))
    first = started_stream(instance)
    assert first.tags[SPARK_RUN_TAG] == SPARK_STREAM  # the job's own slot
    early = evaluate(instance)
    assert isinstance(early, SkipReason) and "s left" in str(early)

    # Less than the lead left: the successor, in the other Spark slot, keyed to its predecessor.
    monkeypatch.setenv("LAMBDA_ARCH_SPEED_STREAM_S", str(int(HANDOVER_LEAD_S) - 10))
    request = evaluate(instance)
    assert isinstance(request, RunRequest)
    assert request.run_key == f"after-{first.run_id}"
    assert request.tags[SPARK_RUN_TAG] == SPARK_STREAM_NEXT

    # Both in flight: nothing more until the predecessor has ended.
    second = started_stream(instance, tags=request.tags)
    waiting = evaluate(instance)
    assert isinstance(waiting, SkipReason) and "successor" in str(waiting)

    # The predecessor ended: the successor's own successor goes back to the first slot.
    instance.report_run_canceled(first)
    again = evaluate(instance)
    assert isinstance(again, RunRequest)
    assert again.run_key == f"after-{second.run_id}"
    assert again.tags[SPARK_RUN_TAG] == SPARK_STREAM
