"""Alert sensors: failed runs and failed asset checks become lines in logs/alerts.jsonl and webhook
POSTs (lambda_arch.quality.alerts).

Two sensors because Dagster reports the two failures differently: a failed asset check does not
fail its run, so a run-failure sensor never sees it; check results are read from the instance's
event log instead, wherever they were evaluated: in any run (the runs the freshness-check sensor
launches included) or reported outside one.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from itertools import takewhile
from typing import Any

from dagster import (
    AssetCheckEvaluation,
    DagsterEventType,
    DagsterInstance,
    DagsterLogManager,
    DefaultSensorStatus,
    EventLogEntry,
    RunFailureSensorContext,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    run_failure_sensor,
    sensor,
)
from dagster._core.scheduler.instigation import TickStatus
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
)
from dagster._utils.error import SerializableErrorInfo

from lambda_arch.common.config import Settings
from lambda_arch.quality import alerts
from resources import LambdaArchSettings

ALERT_SENSOR_INTERVAL_S = 30
# Events read per tick: deserializing a thousand is well under a second, and a backlog (daemon
# down for a while) drains over a few ticks instead of one long one.
CHECK_EVENTS_PER_TICK = 1000
# Without a cursor (first tick ever, or a reset), older failures are history, not news: a new
# sensor on an old home would otherwise replay every failed check to the webhook.
FIRST_TICK_LOOKBACK_S = 60 * 60


def _publish(log: DagsterLogManager, found: list[alerts.Alert], config: Settings) -> str:
    """Log and deliver `found`; returns a one-line summary and logs delivery trouble."""
    report = alerts.publish(found, config.logs_dir, config.alert_webhook)
    for error in report.errors:
        log.warning(f"alert webhook delivery failed (the alert is in the log): {error}")
    if report.skipped:
        log.warning(f"{report.skipped} alerts not sent: the webhook gave up this tick")
    summary = f"alerts logged to {alerts.alerts_log(config.logs_dir)}: {report.logged}"
    if config.alert_webhook:
        summary += f", delivered to the webhook: {report.delivered}"
    return summary


def failed_check_alerts(
    entries: Sequence[tuple[int, EventLogEntry]], config: Settings, not_before: float = 0.0
) -> list[alerts.Alert]:
    """Alerts for the failed evaluations among `entries` (storage id, event) at or above the
    configured severity, skipping events older than `not_before` (epoch seconds)."""
    found = []
    for storage_id, entry in entries:
        evaluation = entry.dagster_event.event_specific_data if entry.dagster_event else None
        if not isinstance(evaluation, AssetCheckEvaluation) or evaluation.passed:
            continue
        severity = evaluation.severity.value
        if entry.timestamp < not_before or not alerts.severity_at_least(
            severity, config.alert_min_severity
        ):
            continue
        found.append(
            alerts.check_failed_alert(
                event_id=storage_id,
                timestamp=entry.timestamp,
                asset_key=evaluation.asset_key.to_user_string(),
                check_name=evaluation.check_name,
                severity=severity,
                partition=evaluation.partition,
                run_id=entry.run_id,
                job_name=entry.job_name or None,  # runless events carry ""
                description=evaluation.description,
                dagster_port=config.dagster_port,
                metadata={key: value.value for key, value in evaluation.metadata.items()},
            )
        )
    return found


def read_check_evaluations(
    instance: DagsterInstance, after: int, limit: int = CHECK_EVENTS_PER_TICK
) -> list[tuple[int, EventLogEntry]]:
    """Check evaluations with a storage id above `after`, oldest first.

    The cross-run index is the one place every evaluation lands with an increasing id: Postgres
    and consolidated SQLite keep one event table, and the default run-sharded SQLite storage
    mirrors check events into its index shard (as it does run status events, which Dagster's
    own run-retry daemon reads the same way).
    """
    entries = instance.event_log_storage.get_logs_for_all_runs_by_log_id(
        after_cursor=after,
        dagster_event_type=DagsterEventType.ASSET_CHECK_EVALUATION,
        limit=limit,
    )
    return sorted(entries.items())


@sensor(
    minimum_interval_seconds=ALERT_SENSOR_INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Alerts on failed asset check evaluations at or above LAMBDA_ARCH_ALERT_MIN_SEVERITY, "
        "from inside runs or from the freshness-check sensor: one line each in "
        "logs/alerts.jsonl and a POST to LAMBDA_ARCH_ALERT_WEBHOOK when set. The cursor is the "
        "event-log storage id, so each evaluation alerts once."
    ),
)
def check_failure_alert_sensor(
    context: SensorEvaluationContext, settings: LambdaArchSettings
) -> SensorResult:
    config = settings.get()
    after, not_before = parse_cursor(context.cursor)
    entries = read_check_evaluations(context.instance, after, CHECK_EVENTS_PER_TICK)
    if not entries:
        return SensorResult(skip_reason="no new check evaluations", cursor=str(after))
    found = failed_check_alerts(entries, config, not_before)
    # The cursor moves only after the log write succeeded: a failed write fails the tick and
    # the next tick reads the same events again (delivery failures never hold it back).
    summary = _publish(context.log, found, config) if found else "no failed checks to alert on"
    last = entries[-1][0]
    # A full batch means more history waits: keep the look-back boundary until it is read.
    catching_up = not_before > 0 and len(entries) >= CHECK_EVENTS_PER_TICK
    cursor = f"{last},{not_before}" if catching_up else str(last)
    if not found:
        return SensorResult(skip_reason=f"{len(entries)} evaluations: {summary}", cursor=cursor)
    context.log.info(summary)
    return SensorResult(cursor=cursor)


def parse_cursor(cursor: str | None) -> tuple[int, float]:
    """(storage id read up to, epoch seconds before which failures are history, or 0).

    The cursor is the last storage id read, followed by `,<epoch>` while a first tick's
    look-back is still paging through old evaluations. No cursor, or one that does not parse
    (reset from the UI), starts from the beginning with a fresh look-back.
    """
    if cursor is not None:
        last, _, since = cursor.partition(",")
        try:
            return int(last), float(since) if since else 0.0
        except ValueError:
            pass
    return -1, time.time() - FIRST_TICK_LOOKBACK_S


def _partition_of(tags: dict[str, str]) -> str | None:
    if PARTITION_NAME_TAG in tags:
        return tags[PARTITION_NAME_TAG]
    if ASSET_PARTITION_RANGE_START_TAG in tags:
        start, end = tags[ASSET_PARTITION_RANGE_START_TAG], tags.get(ASSET_PARTITION_RANGE_END_TAG)
        return f"{start}...{end}"
    return None


def _root_cause(error: SerializableErrorInfo) -> str:
    """The project's error with its stack (and its own causes), without the Dagster errors
    that wrap it (e.g. DagsterExecutionStepExecutionError around an op's exception)."""
    while error.cause is not None and (error.cls_name or "").startswith("Dagster"):
        error = error.cause
    return error.to_string().strip()


def run_failure_alert(context: RunFailureSensorContext, config: Settings) -> alerts.Alert:
    """The alert for the failed run in `context`: Dagster's reason plus each failed step's error."""
    run = context.dagster_run
    details = []
    for step_event in context.get_step_failure_events():
        error = getattr(step_event.event_specific_data, "error", None)
        if error is not None:
            details.append(f"{step_event.step_key}: {_root_cause(error)}")
    run_error = getattr(context.failure_event.event_specific_data, "error", None)
    if not details and run_error is not None:
        details.append(_root_cause(run_error))  # a run-level failure, e.g. a resource's
    record = context.instance.get_run_record_by_id(run.run_id)
    ended = record.end_time if record and record.end_time else time.time()
    return alerts.run_failed_alert(
        timestamp=ended,
        run_id=run.run_id,
        job_name=run.job_name,
        partition=_partition_of(dict(run.tags)),
        reason=context.failure_event.message,
        description="\n\n".join(details) or None,
        dagster_port=config.dagster_port,
    )


@run_failure_sensor(
    minimum_interval_seconds=ALERT_SENSOR_INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Alerts on every failed run of this code location: one line in logs/alerts.jsonl and a "
        "POST to LAMBDA_ARCH_ALERT_WEBHOOK when set (Dagster's run-status cursor: once per run)."
    ),
)
def run_failure_alert_sensor(
    context: RunFailureSensorContext, settings: LambdaArchSettings
) -> None:
    config = settings.get()
    alert = run_failure_alert(context, config)
    context.log.info(f"{alert.message}; {_publish(context.log, [alert], config)}")


# Sensor and schedule failures -------------------------------------------------------------------

# Ticks read per sensor: the lag sensor ticks every 10 s, so 200 cover half an hour of one
# failure; a longer one is still the same failure (see InstigatorFailure.episode).
TICK_HISTORY = 200
_FINISHED_TICKS = (TickStatus.SUCCESS, TickStatus.SKIPPED, TickStatus.FAILURE)


@dataclass(frozen=True)
class InstigatorFailure:
    """A sensor or schedule whose latest evaluation failed."""

    name: str
    since: float  # epoch seconds of the first failing tick of the current run of failures
    at: float  # epoch seconds of the latest failing tick
    error: str  # one line: the project's error, without Dagster's wrappers
    description: str  # the whole error with its stack
    signature: str  # alerts.error_signature: what makes two ticks' failures the same
    # Tick id where failures of this signature began; None when they began before the ticks
    # read (then a stored alert of the same signature is still this failure).
    episode: int | None


def _tick_error(error: SerializableErrorInfo) -> tuple[str, str, str]:
    """(one line, whole text, signature) of a failed tick's error.

    The innermost cause is the reason: Dagster wraps what a sensor raised in its own errors
    (SensorExecutionError, DagsterUserCodeProcessError), whose messages say only that the
    sensor failed."""
    root = error
    while root.cause is not None:
        root = root.cause
    message = (root.message or "").strip()
    line = message.splitlines()[0] if message else (root.cls_name or "error")
    signature = alerts.error_signature(root.cls_name or "", message)
    return line, error.to_string().strip(), signature


def _fails_with(signature: str, tick: Any) -> bool:
    return bool(tick.error) and _tick_error(tick.error)[2] == signature


def instigator_failures(
    instance: DagsterInstance, history: int = TICK_HISTORY
) -> dict[str, InstigatorFailure]:
    """Every sensor and schedule of the instance whose latest finished tick failed.

    Dagster records each evaluation as a tick (status and error) in the instance, whatever
    raised: a corrupt checkpoint, an unreachable broker, a bug. Reading ticks sees every
    sensor without wrapping each one's code.
    """
    failures: dict[str, InstigatorFailure] = {}
    for state in instance.all_instigator_state():
        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=history)
        finished = sorted(
            (tick for tick in ticks if tick.status in _FINISHED_TICKS),
            key=lambda tick: tick.timestamp,
            reverse=True,
        )
        if not finished or finished[0].status != TickStatus.FAILURE or not finished[0].error:
            continue
        line, description, signature = _tick_error(finished[0].error)
        streak = list(takewhile(lambda tick: tick.status == TickStatus.FAILURE, finished))
        same = list(takewhile(partial(_fails_with, signature), streak))
        began_before_history = len(same) == len(finished) and len(ticks) >= history
        failures[state.instigator_name] = InstigatorFailure(
            name=state.instigator_name,
            since=streak[-1].timestamp,
            at=finished[0].timestamp,
            error=line,
            description=description,
            signature=signature,
            episode=None if began_before_history else same[-1].tick_id,
        )
    return failures


def _already_alerted(failure: InstigatorFailure, alerted: dict[str, Any] | None) -> bool:
    if not alerted or alerted.get("signature") != failure.signature:
        return False
    stored = alerted.get("episode")
    return stored is None or failure.episode is None or stored == failure.episode


def sensor_failure_alerts(
    failures: dict[str, InstigatorFailure], cursor: dict[str, Any]
) -> tuple[list[alerts.Alert], dict[str, Any]]:
    """(alerts to publish, the new cursor): one alert per distinct failure. The cursor keeps
    what was alerted for each sensor failing now; a sensor that recovered drops out of it, so
    failing again alerts again, as does a failure with another signature."""
    found = []
    new_cursor: dict[str, Any] = {}
    for name, failure in sorted(failures.items()):
        alerted = cursor.get(name)
        if _already_alerted(failure, alerted):
            new_cursor[name] = alerted
            continue
        episode = f"{hashlib.sha1(failure.signature.encode()).hexdigest()[:10]}"
        episode += f":{failure.episode if failure.episode is not None else 'ongoing'}"
        found.append(
            alerts.sensor_failed_alert(
                sensor=name,
                timestamp=failure.at,
                since=failure.since,
                error=failure.error,
                description=failure.description,
                episode=episode,
            )
        )
        new_cursor[name] = {"signature": failure.signature, "episode": failure.episode}
    return found, new_cursor


@sensor(
    minimum_interval_seconds=ALERT_SENSOR_INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Alerts when a sensor or schedule fails (its tick records an error): once per distinct "
        "failure (sensor and error signature), again when the error changes or after the "
        "sensor recovered and failed again; logs/alerts.jsonl and LAMBDA_ARCH_ALERT_WEBHOOK."
    ),
)
def sensor_failure_alert_sensor(
    context: SensorEvaluationContext, settings: LambdaArchSettings
) -> SensorResult:
    config = settings.get()
    try:
        cursor = json.loads(context.cursor) if context.cursor else {}
    except ValueError:
        cursor = {}  # reset from the UI, or garbage: alert on what fails now
    failures = instigator_failures(context.instance)
    found, new_cursor = sensor_failure_alerts(failures, cursor)
    cursor_text = json.dumps(new_cursor, sort_keys=True)
    if not found:
        failing = ", ".join(sorted(failures)) or "none"
        return SensorResult(
            skip_reason=f"no new sensor failures (failing: {failing})", cursor=cursor_text
        )
    # The cursor moves only after the log write succeeded (publish raises otherwise).
    summary = _publish(context.log, found, config)
    context.log.info(f"{'; '.join(a.message for a in found)}; {summary}")
    return SensorResult(cursor=cursor_text)


ALERT_SENSORS: list[SensorDefinition] = [
    check_failure_alert_sensor,
    run_failure_alert_sensor,
    sensor_failure_alert_sensor,
]
