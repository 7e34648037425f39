"""A failing sensor becomes one alert per distinct failure, and `status` names the stall.

The alert rule itself (pure: failures and a cursor in, alerts and a cursor out) is tested on
its own; then a real `lambda-arch up --no-traffic` (its daemon runs every sensor, no Spark)
meets a corrupt speed checkpoint: the Kafka-lag sensor fails on every tick (every 10 s), and
over several ticks exactly one alert reaches logs/alerts.jsonl and a real webhook; a second,
different corruption alerts once more; `lambda-arch status` says the speed layer stalls and why.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance

from lambda_arch.quality import alerts
from lambda_arch.runtime.broker import free_port
from sensors.alerts import InstigatorFailure, instigator_failures, sensor_failure_alerts
from tests.lambda_arch.quality.test_alerts import Receiver
from tests.ui.stack import Stack, running_stack, stack_env

LAG_SENSOR = "kafka_lag_sensor"
FAILURE_TIMEOUT_S = 300.0  # the daemon's first ticks on a loaded 2-core machine


def failure(signature: str, episode: int | None, name: str = LAG_SENSOR) -> InstigatorFailure:
    return InstigatorFailure(name, 100.0, 130.0, f"{signature} here", "stack", signature, episode)


def test_one_alert_per_distinct_failure() -> None:
    first, cursor = sensor_failure_alerts({LAG_SENSOR: failure("ValueError: x", 7)}, {})
    assert [a.kind for a in first] == ["sensor_failed"]
    assert first[0].message.startswith(f"sensor {LAG_SENSOR} failing since ")
    # The same failure on later ticks, also once its start has left the ticks read.
    for episode in (7, None):
        again, cursor = sensor_failure_alerts(
            {LAG_SENSOR: failure("ValueError: x", episode)}, cursor
        )
        assert again == []
    # Another error: a new alert.
    changed, cursor = sensor_failure_alerts({LAG_SENSOR: failure("OSError: y", 9)}, cursor)
    assert len(changed) == 1 and changed[0].alert_id != first[0].alert_id
    # Recovered (not failing), then the first error again: alerts again.
    _, cursor = sensor_failure_alerts({}, cursor)
    assert cursor == {}
    relapse, _ = sensor_failure_alerts({LAG_SENSOR: failure("ValueError: x", 12)}, cursor)
    assert len(relapse) == 1


def test_error_signature_ignores_numbers_only() -> None:
    one = alerts.error_signature("ValueError", "bad offset 17 in partition 2\nstack")
    assert one == alerts.error_signature("ValueError", "bad offset 18 in partition 2")
    assert one != alerts.error_signature("KeyError", "bad offset 17 in partition 2")
    assert one != alerts.error_signature("ValueError", "missing offsets file")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


@pytest.fixture
def stack(tmp_path: Path, receiver: Receiver) -> Iterator[Stack]:
    """`lambda-arch up --no-traffic` without Spark (no run can start one), alerting to the
    receiver, with a counts checkpoint whose committed offsets are garbage."""
    home = tmp_path / "home"
    corrupt(home, b"\x00garbage, not JSON\n")
    env = stack_env(home, free_port(), free_port(), free_port())
    env |= {"SPARK_REMOTE": "sc://127.0.0.1:1", "LAMBDA_ARCH_ALERT_WEBHOOK": receiver.url}
    # Whatever outlives up's own stop is killed by PID (tests/lambda_arch/runtime/test_stack.py
    # is where a clean stop is asserted).
    with running_stack(tmp_path, env) as running:
        yield running


def corrupt(home: Path, offsets: bytes | None) -> None:
    """A counts checkpoint with one committed batch whose offsets file holds `offsets` as its
    source line (None: the offsets file is missing)."""
    checkpoint = home / "checkpoints" / "counts"
    (checkpoint / "commits").mkdir(parents=True, exist_ok=True)
    (checkpoint / "offsets").mkdir(parents=True, exist_ok=True)
    (checkpoint / "commits" / "0").write_text('v1\n{"nextBatchWatermarkMs":0}\n')
    path = checkpoint / "offsets" / "0"
    if offsets is None:
        path.unlink(missing_ok=True)
    else:
        path.write_bytes(b'v1\n{"batchWatermarkMs":0,"batchTimestampMs":0}\n' + offsets)


def sensor_alerts(stack: Stack) -> list[dict]:
    return [
        a
        for a in alerts.read_alerts(stack.home / "logs" / "alerts.jsonl")
        if a["kind"] == "sensor_failed"
    ]


def posted(receiver: Receiver) -> list[str]:
    """Sensor alerts the webhook received (the idle stack's freshness checks fail too)."""
    return [body["alert_id"] for body in receiver.bodies if body["kind"] == "sensor_failed"]


def failed_lag_ticks(instance: DagsterInstance, after: float) -> int:
    """Failed ticks of the lag sensor since `after` (epoch seconds)."""
    for state in instance.all_instigator_state():
        if state.instigator_name == LAG_SENSOR:
            ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, after=after)
            return sum(1 for tick in ticks if tick.status.value == "FAILURE")
    return 0


def alert_ticks(instance: DagsterInstance, after: float) -> int:
    for state in instance.all_instigator_state():
        if state.instigator_name == "sensor_failure_alert_sensor":
            ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, after=after)
            return sum(1 for tick in ticks if tick.status.value in ("SUCCESS", "SKIPPED"))
    return 0


@pytest.mark.broker  # up starts one (the fixture is not the suite's broker fixture)
@pytest.mark.timeout(900)
def test_a_failing_lag_sensor_alerts_once_per_failure_and_status_says_why(
    stack: Stack, receiver: Receiver
) -> None:
    alerted = stack.poll("a sensor alert", lambda: sensor_alerts(stack), FAILURE_TIMEOUT_S)
    assert len(alerted) == 1 and alerted[0]["message"].startswith(f"sensor {LAG_SENSOR} failing")
    assert "JSON" in alerted[0]["message"] or "Expecting" in alerted[0]["message"], alerted
    with DagsterInstance.from_config(str(stack.home / "dagster")) as instance:
        # More failed ticks, and the alert sensor ticking over them: still one alert. (One
        # alert tick after the alert sees the same failure again; the rule's own test covers
        # many ticks, also once the failure's start has left the ticks read.)
        since = time.time()
        stack.poll(
            "more failed ticks and an alert tick",
            lambda: failed_lag_ticks(instance, since) >= 2 and alert_ticks(instance, since) >= 1,
            FAILURE_TIMEOUT_S,
        )
        assert len(sensor_alerts(stack)) == 1
        assert posted(receiver) == [alerted[0]["alert_id"]]

        status = subprocess.run(
            [sys.executable, "-m", "lambda_arch.cli", "status"],
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert f"speed layer stalled: {LAG_SENSOR} failing since " in status.stdout, (
            status.stdout + status.stderr
        )

        # Another failure: the offsets file is gone. One more alert, with its own error.
        corrupt(stack.home, None)
        second = stack.poll(
            "a second sensor alert", lambda: sensor_alerts(stack)[1:], FAILURE_TIMEOUT_S
        )
        assert "No such file" in second[0]["message"], second
        since = time.time()
        stack.poll(
            "more failed ticks after the second failure",
            lambda: failed_lag_ticks(instance, since) >= 2 and alert_ticks(instance, since) >= 1,
            FAILURE_TIMEOUT_S,
        )
        assert len(sensor_alerts(stack)) == 2
        assert posted(receiver) == [alert["alert_id"] for alert in sensor_alerts(stack)]
        assert instigator_failures(instance)[LAG_SENSOR].error == second[0]["metadata"]["error"]
