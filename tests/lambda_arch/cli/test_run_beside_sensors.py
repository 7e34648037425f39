"""`lambda-arch run` next to `lambda-arch up` whose sensors are on: one writer per table.

The incident of issue 12: after a replay of several days, the day-complete sensor launched
batch_job for the whole range, `run` launched the same range 21 s later, both wrote
play_events_clean at once and both failed (`_temporary/0` deleted under them), `run` exited 2.

Here a real stack (`lambda-arch up --no-traffic`: broker, Connect server, Dagster webserver and
daemon, every sensor on) gets several days of events; once the day-complete sensor's batch run
has started, two launchers that bypass the run queue start at once: `lambda-arch run`, and a
bare in-process batch_job of the same range (what `run` used to do). Then:
- every run succeeds and `run` exits 0 (it reused the sensor's run instead of competing);
- the batch-writer lock's holdings, read from every batch materialization's metadata, never
  overlap between runs, and the bare run waited for the sensor's run;
- the served answers equal a plain-Python recomputation of the events read back from the topic.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, RunsFilter
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES

from lambda_arch.runtime.broker import free_port
from tests.kafka_helpers import consume_all
from tests.lambda_arch.serving.oracle import Oracle, clean
from tests.ui.stack import START_DATE, Stack, running_stack, stack_env

EVENTS = 4000  # 100 events/s of event time at this speedup: 5 days, 4 of them complete
PRODUCE = [
    *("--start", f"{START_DATE}T00:00:00Z", "--events", str(EVENTS)),
    *("--speedup", "10800", "--seed", "20261204", "--quiet"),
]
FIRST_DAY = datetime.fromisoformat(f"{START_DATE}T00:00:00+00:00")
COMPLETE_DAYS = 4
BATCH_TABLES = ("play_events_clean", "trending_batch", "discovery_batch", "sessions_batch")
# Bounds for a loaded 2-core machine: the lag sensor's speed run, then the day-complete
# sensor's tick (every 60 s) and its batch run.
SENSOR_RUN_TIMEOUT_S = 900.0
RUN_TIMEOUT_S = 900.0

# What `run` did before issue 12, as a bare launcher: batch_job's range in this process.
BARE_BATCH_RUN = """
import sys, warnings
from dagster import DagsterInstance
warnings.simplefilter("ignore")
from lambda_arch.common.config import load_settings
from lambda_arch.definitions import defs
first, last = sys.argv[1], sys.argv[2]
tags = {"lambda_arch/reason": "bare-test-run",
        "dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}
with DagsterInstance.from_config(str(load_settings().dagster_home)) as instance:
    result = defs.resolve_job_def("batch_job").execute_in_process(
        instance=instance, tags=tags, raise_on_error=False)
print(result.run_id)
sys.exit(0 if result.success else 1)
"""


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """`lambda-arch up --no-traffic` (sensors and schedule on) in a temp home, up."""
    env = stack_env(tmp_path / "home", free_port(), free_port(), free_port())
    # Whatever outlives up's own stop is killed by PID (tests/lambda_arch/runtime/test_stack.py
    # is where a clean stop is asserted).
    with running_stack(tmp_path, env) as running:
        yield running


def cli(stack: Stack, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lambda_arch.cli", *args],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def sensor_batch_run(instance: DagsterInstance) -> str | None:
    """The id of a started batch_job run that the day-complete sensor launched."""
    for record in instance.get_run_records(RunsFilter(job_name="batch_job")):
        run = record.dagster_run
        if run.tags.get("dagster/sensor_name") == "day_complete_sensor" and run.status.value in (
            "STARTED",
            "SUCCESS",
        ):
            return run.run_id
    return None


def lock_holdings(instance: DagsterInstance) -> list[tuple[datetime, datetime, str, float]]:
    """(acquired, released, run id, seconds waited) of every holding of the lake's batch-writer
    lock, from the batch tables' materialization metadata. One holding covers every table and
    day a run writes, so each appears once however many materializations report it."""
    holdings = set()
    for table in BATCH_TABLES:
        for record in instance.fetch_materializations(AssetKey(table), limit=1000).records:
            metadata = record.asset_materialization.metadata
            holdings.add(
                (
                    datetime.fromisoformat(metadata["lock_acquired_at"].value),
                    datetime.fromisoformat(metadata["lock_released_at"].value),
                    record.run_id,
                    float(metadata["lock_waited_s"].value),
                )
            )
    return sorted(holdings)


@pytest.mark.timeout(2700)
def test_run_reuses_the_sensors_batch_run_and_no_two_runs_write_at_once(stack: Stack) -> None:
    produced = cli(stack, "produce", *PRODUCE)
    assert produced.returncode == 0, produced.stderr
    dagster_home = stack.home / "dagster"

    with DagsterInstance.from_config(str(dagster_home)) as instance:
        sensor_run = stack.poll(
            "a batch run of the day-complete sensor",
            lambda: sensor_batch_run(instance),
            SENSOR_RUN_TIMEOUT_S,
        )
        tags = instance.get_run_by_id(sensor_run).tags
        first = tags.get("dagster/asset_partition_range_start", tags.get("dagster/partition"))
        last = tags.get("dagster/asset_partition_range_end", first)
        started = time.monotonic()
        # Both launchers at once, while the sensor's run computes the range.
        bare = subprocess.Popen(
            [sys.executable, "-c", BARE_BATCH_RUN, first, last],
            env=stack.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        run = cli(stack, "run", timeout_s=RUN_TIMEOUT_S)
        bare_out, bare_err = bare.communicate(timeout=RUN_TIMEOUT_S)
        print(f"run + bare batch run: {time.monotonic() - started:.0f} s\n{run.stdout}")
        assert bare.returncode == 0, bare_err[-3000:]
        bare_run = bare_out.split()[-1]

        # Every batch run of the home succeeded (the sensor's included) and none is left.
        stack.poll(
            "no batch run in flight",
            lambda: (
                not instance.get_run_records(
                    RunsFilter(job_name="batch_job", statuses=list(NOT_FINISHED_STATUSES))
                )
            ),
            RUN_TIMEOUT_S,
        )
        batch_runs = instance.get_run_records(RunsFilter(job_name="batch_job"))
        assert [r.dagster_run.status.value for r in batch_runs] == ["SUCCESS"] * len(batch_runs)
        assert instance.get_run_by_id(sensor_run).status.value == "SUCCESS"

        holdings = lock_holdings(instance)
        runs = {holding[2] for holding in holdings}
        assert {sensor_run, bare_run} <= runs, holdings
        # No two holdings overlap: a holding ends before the next one begins.
        for before, after in itertools.pairwise(holdings):
            assert before[1] <= after[0], f"overlapping writers: {before} and {after}"
        # The bare run found the tables being written and waited (what used to fail).
        assert max(h[3] for h in holdings if h[2] == bare_run) > 0, holdings
        # `run` never launched the sensor's range again: it waited for the sensor's run, or (when
        # its own speed step ended after that run) found nothing owed (seen in a full run: the
        # sensor's run had finished). And it finished cleanly (checked after the locks: a
        # failure of its own speed step says nothing about the batch tables).
        assert "reusing" in run.stdout or "nothing owed" in run.stdout, run.stdout
        relaunched = [
            r for r in batch_runs if r.dagster_run.tags.get("lambda_arch/reason") == "cli-run"
        ]
        assert relaunched == [], relaunched
        assert run.returncode == 0, run.stdout + run.stderr

    # The answers: exact against the events read back from the topic, per complete day.
    payloads = [record.value for record in consume_all(_bootstrap(stack), "play-events", EVENTS)]
    assert len(payloads) == EVENTS
    events = clean(payloads)
    for day in range(COMPLETE_DAYS):
        as_of = FIRST_DAY + timedelta(days=day + 1)
        answer = json.loads(
            cli(
                stack,
                "trending",
                "--as-of",
                as_of.isoformat(),
                "--window",
                "1440",
                "--limit",
                "1000",
                "--json",
            ).stdout
        )
        assert answer["batch_watermark"] is not None
        oracle = Oracle(
            events,
            events,
            datetime.fromisoformat(answer["batch_watermark"].replace("Z", "+00:00")),
            datetime.fromisoformat(answer["speed_watermark"].replace("Z", "+00:00")),
        )
        assert as_of <= oracle.batch_watermark  # the day is served from the batch layer
        assert answer["titles"] == oracle.trending(as_of, 1440, None, 1000), as_of
        discovery = json.loads(
            cli(
                stack, "discovery", "--as-of", as_of.isoformat(), "--window", "1440", "--json"
            ).stdout
        )
        assert discovery["sources"] == oracle.discovery(as_of, 1440, None), as_of


def _bootstrap(stack: Stack) -> str:
    return f"127.0.0.1:{stack.env['LAMBDA_ARCH_BROKER_PORT']}"
