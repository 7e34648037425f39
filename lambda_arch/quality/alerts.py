"""Alerts on failed asset checks, failed runs and lost records: records, the JSON-lines log,
webhook delivery.

Dagster-free on purpose: the sensors in `sensors/alerts.py` turn Dagster events into `Alert`
records and hand them to `publish`, which always appends them to `LAMBDA_ARCH_HOME/logs/
alerts.jsonl` and then POSTs each to `LAMBDA_ARCH_ALERT_WEBHOOK` when one is set.

Delivery is best effort and bounded: a few attempts with exponential backoff, short timeouts and
a total time budget per `publish` call, so a dead or slow webhook never hangs a sensor tick. A
delivery that gives up is not retried on a later tick: the alert is already in the log file
(written before any delivery), and retrying later would need an outbox, hold newer alerts back
behind older ones and risk duplicates for receivers that did get a slow reply.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lambda_arch.common.times import format_time, from_epoch_seconds
from lambda_arch.runtime.processes import LogLimits, rotate_log

AlertKind = Literal["check_failed", "run_failed", "data_lost", "sensor_failed"]

# Ascending order: an alert passes a minimum when its severity is at or after it here.
SEVERITIES: tuple[str, ...] = ("WARN", "ERROR")
ALERTS_FILE = "alerts.jsonl"
SOURCE = "lambda-arch"
# Descriptions can hold whole stack traces; a webhook payload should stay small.
MAX_DESCRIPTION_CHARS = 4000


def severity_at_least(severity: str, minimum: str) -> bool:
    """Whether `severity` (WARN or ERROR) is at or above `minimum`; unknown ones always pass."""
    if severity not in SEVERITIES or minimum not in SEVERITIES:
        return True  # never swallow an alert because of a severity name we do not know
    return SEVERITIES.index(severity) >= SEVERITIES.index(minimum)


def iso_utc(timestamp: float) -> str:
    """Epoch seconds as ISO-8601 UTC with milliseconds and a `Z`."""
    return format_time(from_epoch_seconds(timestamp))


def run_url(dagster_port: int, run_id: str | None) -> str | None:
    """Link to the run in the Dagster UI that `lambda-arch up` serves, or None without a run."""
    if not run_id:
        return None  # checks evaluated outside a run (runless events) have no page
    return f"http://127.0.0.1:{dagster_port}/runs/{run_id}"


def _clip(text: str | None) -> str | None:
    if text is None or len(text) <= MAX_DESCRIPTION_CHARS:
        return text
    return text[: MAX_DESCRIPTION_CHARS - 1] + "…"


@dataclass(frozen=True)
class Alert:
    """One alert: what failed, where and when; `to_json` is the log line and the webhook body."""

    kind: AlertKind
    severity: str
    time: str  # when the failure happened (ISO-8601 UTC)
    message: str  # one line for humans
    alert_id: str  # stable per failure: receivers can deduplicate on it
    asset_key: str | None = None
    check_name: str | None = None
    partition: str | None = None
    run_id: str | None = None
    job_name: str | None = None
    description: str | None = None
    run_url: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # the check's numbers, JSON-safe
    alerted_at: str = field(default_factory=lambda: iso_utc(time.time()))

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "kind": self.kind,
            "severity": self.severity,
            "asset_key": self.asset_key,
            "check_name": self.check_name,
            "partition": self.partition,
            "run_id": self.run_id,
            "job_name": self.job_name,
            "message": self.message,
            "description": self.description,
            "run_url": self.run_url,
            "metadata": self.metadata,
            "alert_id": self.alert_id,
            "alerted_at": self.alerted_at,
            "source": SOURCE,
        }


def plain_metadata(values: Mapping[str, Any], limit: int = 20) -> dict[str, Any]:
    """Metadata values made JSON-safe (text for anything JSON cannot hold), at most `limit`."""
    plain: dict[str, Any] = {}
    for key, value in list(values.items())[:limit]:
        try:
            json.dumps(value, allow_nan=False)
            plain[str(key)] = value
        except (TypeError, ValueError):
            plain[str(key)] = _clip(str(value))
    return plain


def check_failed_alert(
    *,
    event_id: int,
    timestamp: float,
    asset_key: str,
    check_name: str,
    severity: str,
    partition: str | None,
    run_id: str | None,
    job_name: str | None,
    description: str | None,
    dagster_port: int,
    metadata: Mapping[str, Any] | None = None,
) -> Alert:
    """The alert for one failed check evaluation (`event_id`: its event-log storage id)."""
    where = f"{asset_key}" + (f" partition {partition}" if partition else "")
    return Alert(
        kind="check_failed",
        severity=severity,
        time=iso_utc(timestamp),
        message=f"{severity} check {check_name} failed on {where}",
        alert_id=f"check_failed:{event_id}",
        asset_key=asset_key,
        check_name=check_name,
        partition=partition,
        run_id=run_id or None,
        job_name=job_name,
        description=_clip(description),
        run_url=run_url(dagster_port, run_id),
        metadata=plain_metadata(metadata or {}),
    )


def run_failed_alert(
    *,
    timestamp: float,
    run_id: str,
    job_name: str,
    partition: str | None,
    reason: str | None,
    description: str | None,
    dagster_port: int,
) -> Alert:
    """The alert for one failed run (always severity ERROR: the run produced nothing usable)."""
    message = f"run {run_id[:8]} of {job_name} failed"
    if partition:
        message += f" (partition {partition})"
    if reason:
        message += f": {reason}"
    return Alert(
        kind="run_failed",
        severity="ERROR",
        time=iso_utc(timestamp),
        message=message,
        alert_id=f"run_failed:{run_id}",
        partition=partition,
        run_id=run_id,
        job_name=job_name,
        description=_clip(description),
        run_url=run_url(dagster_port, run_id),
    )


def data_lost_alert(
    *,
    asset_key: str,
    message: str,
    alert_id: str,
    metadata: Mapping[str, Any],
    timestamp: float | None = None,
) -> Alert:
    """The alert for records a query lost for good (e.g. with an old incarnation of the topic,
    never landed): severity ERROR; raised by the speed layer itself, outside Dagster."""
    return Alert(
        kind="data_lost",
        severity="ERROR",
        time=iso_utc(time.time() if timestamp is None else timestamp),
        message=message,
        alert_id=alert_id,
        asset_key=asset_key,
        metadata=plain_metadata(metadata),
    )


# Numbers (offsets, ports, counts, times) vary from one tick of a failure to the next; the
# failure stays the same one.
_NUMBERS = re.compile(r"\d+")


def error_signature(kind: str, message: str) -> str:
    """What makes two failures the same failure: the error class and its first line, numbers
    left out (a sensor failing every 10 s on the same cause alerts once, not per tick)."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    return f"{kind}: {_NUMBERS.sub('#', first)}"


def sensor_failed_alert(
    *,
    sensor: str,
    timestamp: float,
    since: float,
    error: str,
    description: str | None,
    episode: str,
) -> Alert:
    """The alert for a sensor (or schedule) whose evaluations fail: once per distinct failure
    (`episode`: the sensor, the error's signature and where that run of failures began)."""
    return Alert(
        kind="sensor_failed",
        severity="ERROR",
        time=iso_utc(timestamp),
        message=f"sensor {sensor} failing since {iso_utc(since)}: {error}",
        alert_id=f"sensor_failed:{sensor}:{episode}",
        description=_clip(description),
        metadata={"sensor": sensor, "failing_since": iso_utc(since), "error": error},
    )


def alerts_log(logs_dir: Path) -> Path:
    return logs_dir / ALERTS_FILE


def append_alerts(path: Path, alerts: Iterable[Alert], limits: LogLimits | None = None) -> int:
    """Append one JSON line per alert; returns how many were written.

    Each line goes out in a single write on a file opened with O_APPEND, so lines of the sensor
    processes the daemon runs side by side never interleave. A file over its limits (default:
    LAMBDA_ARCH_LOG_MAX_MB, LAMBDA_ARCH_LOG_KEEP) is renamed to `alerts.jsonl.1` first; a writer
    that opened it just before appends there, so no alert is lost.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    rotate_log(path, limits or LogLimits.from_env())
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for alert in alerts:
            line = json.dumps(alert.to_json(), ensure_ascii=False, separators=(",", ":")) + "\n"
            data = line.encode()
            if os.write(fd, data) != len(data):
                raise OSError(f"short write to {path}")
            written += 1
    finally:
        os.close(fd)
    return written


def read_alerts(path: Path) -> list[dict[str, Any]]:
    """The alerts logged so far (empty when there is no log yet)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class DeliveryPolicy:
    """How hard to try a webhook: defaults keep one tick's worst case near `budget_s`."""

    attempts: int = 3
    timeout_s: float = 2.0  # per attempt (connect and each read)
    backoff_s: float = 0.5  # wait before the 2nd attempt; doubles after each failure
    budget_s: float = 10.0  # total for all deliveries of one `publish` call


@dataclass(frozen=True)
class Delivery:
    """Outcome of POSTing one alert."""

    ok: bool
    attempts: int
    status: int | None = None
    error: str | None = None


def _retryable(status: int) -> bool:
    # Server trouble and throttling may pass; other 4xx answers will not change on a retry.
    return status >= 500 or status in (408, 429)


def deliver(
    url: str,
    payload: Mapping[str, Any],
    policy: DeliveryPolicy = DeliveryPolicy(),
    deadline: float | None = None,
) -> Delivery:
    """POST `payload` as JSON to `url` with retries; never raises, never runs past `deadline`
    (a time.monotonic() value; default: now + policy.budget_s)."""
    if deadline is None:
        deadline = time.monotonic() + policy.budget_s
    body = json.dumps(payload, ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json", "User-Agent": f"{SOURCE}-alerts"}
    backoff = policy.backoff_s
    attempts = 0
    status: int | None = None
    error = "no attempt: time budget used up"
    while attempts < policy.attempts:
        remaining = deadline - time.monotonic()
        if remaining <= 0.05:
            break
        attempts += 1
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=min(policy.timeout_s, remaining)) as reply:
                reply.read()
                return Delivery(ok=True, attempts=attempts, status=reply.status)
        except urllib.error.HTTPError as failure:
            status, error = failure.code, f"HTTP {failure.code} {failure.reason}"
            if not _retryable(failure.code):
                break
        except (urllib.error.URLError, OSError, http.client.HTTPException) as failure:
            # Refused or reset connections, DNS errors, timeouts, garbled answers: the webhook
            # may come back.
            status = None
            reason = failure.reason if isinstance(failure, urllib.error.URLError) else failure
            error = f"{type(failure).__name__}: {reason}"
        except ValueError as failure:  # a URL urllib cannot use: no retry will fix it
            status, error = None, f"ValueError: {failure}"
            break
        if attempts < policy.attempts:
            time.sleep(max(0.0, min(backoff, deadline - time.monotonic())))
            backoff *= 2
    return Delivery(ok=False, attempts=attempts, status=status, error=error)


@dataclass
class PublishReport:
    """What `publish` did: lines logged, webhook deliveries made, failed and not tried."""

    logged: int = 0
    delivered: int = 0
    failed: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


def publish(
    alerts: Iterable[Alert],
    logs_dir: Path,
    webhook: str | None,
    policy: DeliveryPolicy = DeliveryPolicy(),
) -> PublishReport:
    """Log every alert, then POST each to the webhook (when set) within one time budget.

    Logging comes first, so an alert survives a webhook that is down or a process that dies
    mid-delivery. Only writing the log may raise (a sensor tick then fails and retries the same
    events); delivery problems end up in the report. After one delivery gives up, the rest of this
    call's alerts are not tried: the webhook is down, and waiting out each would only stretch the
    tick.
    """
    batch = list(alerts)
    report = PublishReport(logged=append_alerts(alerts_log(logs_dir), batch))
    if not webhook or not batch:
        return report
    deadline = time.monotonic() + policy.budget_s
    for index, alert in enumerate(batch):
        outcome = deliver(webhook, alert.to_json(), policy, deadline)
        if outcome.ok:
            report.delivered += 1
            continue
        report.failed += 1
        report.errors.append(f"{alert.alert_id}: {outcome.error} after {outcome.attempts} tries")
        report.skipped = len(batch) - index - 1
        break
    return report
