"""Runs in flight: a run whose in-process executor was killed no longer holds anyone back."""

from __future__ import annotations

import subprocess
import sys

from dagster import DagsterInstance, DagsterRunStatus, job, op

from sensors.runs import (
    RUN_HOST_TAG,
    RUN_PID_TAG,
    in_process_run_tags,
    is_abandoned,
    job_in_flight,
    runs_in_flight,
)


@op
def _noop() -> None:
    return None


@job
def probe_job() -> None:
    _noop()


def _started_run(instance: DagsterInstance, tags: dict[str, str]) -> str:
    # STARTED, as a run whose executor was killed mid-run stays.
    run = instance.create_run_for_job(job_def=probe_job, tags=tags, status=DagsterRunStatus.STARTED)
    return run.run_id


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_run_whose_process_is_gone_is_marked_failed_and_not_awaited() -> None:
    with DagsterInstance.ephemeral() as instance:
        dead = _started_run(instance, {**in_process_run_tags(), RUN_PID_TAG: str(_dead_pid())})
        assert instance.get_run_by_id(dead).status == DagsterRunStatus.STARTED
        assert runs_in_flight(instance, "probe_job") == []
        run = instance.get_run_by_id(dead)
        assert run.status == DagsterRunStatus.FAILURE
        assert not job_in_flight(instance, "probe_job")


def test_live_foreign_and_untagged_runs_still_count() -> None:
    with DagsterInstance.ephemeral() as instance:
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            live = _started_run(instance, {**in_process_run_tags(), RUN_PID_TAG: str(sleeper.pid)})
            # Another host's pid says nothing about processes here; a run without the tags
            # (launched by the daemon) is left to Dagster.
            foreign = _started_run(
                instance, {RUN_PID_TAG: str(_dead_pid()), RUN_HOST_TAG: "elsewhere"}
            )
            untagged = _started_run(instance, {})
            ids = {run.run_id for run in runs_in_flight(instance, "probe_job")}
            assert ids == {live, foreign, untagged}
            assert job_in_flight(instance, "probe_job")
            assert not any(
                is_abandoned(instance.get_run_by_id(i)) for i in (live, foreign, untagged)
            )
        finally:
            sleeper.kill()
            sleeper.wait()
        assert runs_in_flight(instance, "probe_job")  # foreign and untagged remain
        assert live not in {run.run_id for run in runs_in_flight(instance, "probe_job")}
