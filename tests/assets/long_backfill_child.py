"""Child process of test_long_backfill: `lambda-arch run` over a Spark Connect server, then the
served answers and what the Dagster instance recorded, as one JSON document (last stdout line).

A process of its own: a Connect session would switch the test process's pyspark into Connect
mode. Settings (SPARK_REMOTE, LAMBDA_ARCH_HOME, KAFKA_BOOTSTRAP_SERVERS, LAMBDA_ARCH_TOPIC,
LAMBDA_ARCH_START_DATE) come from the environment, as in `lambda-arch run`.

    python long_backfill_child.py '<JSON list of [as_of, window_min] to answer>' MEMBER
"""

from __future__ import annotations

import io
import json
import sys
import time
from contextlib import redirect_stdout
from datetime import datetime
from typing import Any


def steps(instance: Any, run_id: str) -> dict[str, float]:
    """Seconds per step of a run, from its STEP_START and STEP_SUCCESS/FAILURE events."""
    from dagster import DagsterEventType

    starts: dict[str, float] = {}
    took: dict[str, float] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type == DagsterEventType.STEP_START:
            starts[event.step_key] = entry.timestamp
        elif event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            took[event.step_key] = round(entry.timestamp - starts[event.step_key], 2)
    return took


def main() -> dict[str, Any]:
    from dagster import DagsterEventType, DagsterInstance

    from lambda_arch.cli.main import main as cli
    from lambda_arch.common.config import load_settings
    from lambda_arch.serving import answers
    from lambda_arch.serving.store import ServingStore

    windows = json.loads(sys.argv[1])
    member = int(sys.argv[2])
    settings = load_settings()
    started = time.monotonic()
    output = io.StringIO()
    with redirect_stdout(output):
        code = cli(["run"])
    result: dict[str, Any] = {
        "exit": code,
        "output": output.getvalue(),
        "run_s": round(time.monotonic() - started, 1),
    }
    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        runs = {}
        checks = []
        for record in instance.get_run_records():
            run = record.dagster_run
            runs[run.job_name] = {
                "status": run.status.value,
                "seconds": round((record.end_time or 0) - (record.start_time or 0), 1),
                "steps": steps(instance, run.run_id),
                "tags": {k: v for k, v in run.tags.items() if "partition" in k},
            }
            for entry in instance.all_logs(
                run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION
            ):
                evaluation = entry.dagster_event.event_specific_data
                checks.append(
                    {
                        "job": run.job_name,
                        "check": f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}",
                        "passed": evaluation.passed,
                        "severity": str(evaluation.severity),
                        "metadata": {
                            k: getattr(v, "value", str(v))
                            for k, v in evaluation.metadata.items()
                            if k in ("days", "covered_buckets", "batch_plays", "speed_plays")
                        },
                    }
                )
    result["runs"] = runs
    result["checks"] = checks
    store = ServingStore.from_settings(settings)
    result["trending"] = [
        answers.trending(store, as_of=datetime.fromisoformat(t), window=w, limit=100)
        for t, w in windows
    ]
    result["discovery"] = [
        answers.discovery(store, as_of=datetime.fromisoformat(t), window=w) for t, w in windows
    ]
    result["sessions"] = every_session(store, member)
    return result


def every_session(store: Any, member: int) -> list[dict[str, Any]]:
    """All of a member's sessions, page after page."""
    from lambda_arch.serving import answers

    sessions: list[dict[str, Any]] = []
    cursor: dict[str, Any] = {}
    while True:
        page = answers.sessions(
            store,
            member_id=member,
            limit=answers.MAX_SESSIONS_LIMIT,
            after=datetime.fromisoformat(cursor["after"]) if cursor else None,
            after_title=cursor.get("after_title"),
        )
        sessions += page["sessions"]
        if not page["next"]:
            return sessions
        cursor = page["next"]


if __name__ == "__main__":
    print(json.dumps(main(), default=str))
