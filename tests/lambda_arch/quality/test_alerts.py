"""Alert records, the JSON-lines log and webhook delivery against a real HTTP receiver."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lambda_arch.common.config import ConfigError, Settings
from lambda_arch.quality import alerts
from lambda_arch.runtime.processes import LogLimits

FAST = alerts.DeliveryPolicy(attempts=3, timeout_s=1.0, backoff_s=0.05, budget_s=5.0)


class Receiver:
    """A webhook on 127.0.0.1: answers with the queued statuses (then 200) and keeps the bodies."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.bodies: list[dict[str, Any]] = []
        self.delay_s = 0.0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                time.sleep(receiver.delay_s)
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep the test output clean

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def check_alert(event_id: int = 7, severity: str = "ERROR") -> alerts.Alert:
    return alerts.check_failed_alert(
        event_id=event_id,
        timestamp=1_780_000_000.5,
        asset_key="trending_batch",
        check_name="rows_match",
        severity=severity,
        partition="2026-03-01",
        run_id="abcdef12-3456",
        job_name="batch_job",
        description="3 rows differ",
        dagster_port=3123,
        metadata={"differing": 3, "ratio": 0.25, "odd": object()},
    )


def test_check_alert_record_has_every_field() -> None:
    record = check_alert().to_json()
    assert record["kind"] == "check_failed"
    assert record["severity"] == "ERROR"
    assert record["time"] == "2026-05-28T20:26:40.500Z"
    assert record["asset_key"] == "trending_batch"
    assert record["check_name"] == "rows_match"
    assert record["partition"] == "2026-03-01"
    assert record["run_id"] == "abcdef12-3456"
    assert record["job_name"] == "batch_job"
    assert record["run_url"] == "http://127.0.0.1:3123/runs/abcdef12-3456"
    assert record["alert_id"] == "check_failed:7"
    assert record["description"] == "3 rows differ"
    assert record["metadata"]["differing"] == 3
    assert isinstance(record["metadata"]["odd"], str)  # JSON-safe text
    assert "rows_match" in record["message"] and "2026-03-01" in record["message"]
    json.dumps(record)


def test_run_alert_and_runless_check_alert() -> None:
    run = alerts.run_failed_alert(
        timestamp=0.0,
        run_id="0123456789",
        job_name="speed_job",
        partition=None,
        reason="Steps failed: boom",
        description="x" * 10_000,
        dagster_port=3000,
    ).to_json()
    assert run["kind"] == "run_failed" and run["severity"] == "ERROR"
    assert run["run_url"] == "http://127.0.0.1:3000/runs/0123456789"
    assert run["message"] == "run 01234567 of speed_job failed: Steps failed: boom"
    assert len(run["description"]) == alerts.MAX_DESCRIPTION_CHARS
    runless = alerts.check_failed_alert(
        event_id=1,
        timestamp=0.0,
        asset_key="a/b",
        check_name="fresh",
        severity="WARN",
        partition=None,
        run_id="",
        job_name=None,
        description=None,
        dagster_port=3000,
    ).to_json()
    assert runless["run_id"] is None and runless["run_url"] is None


def test_severity_order() -> None:
    assert alerts.severity_at_least("ERROR", "WARN")
    assert alerts.severity_at_least("WARN", "WARN")
    assert not alerts.severity_at_least("WARN", "ERROR")
    assert alerts.severity_at_least("ERROR", "ERROR")


def test_min_severity_setting(env_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.from_env().alert_min_severity == "WARN"
    monkeypatch.setenv("LAMBDA_ARCH_ALERT_MIN_SEVERITY", "ERROR")
    assert Settings.from_env().alert_min_severity == "ERROR"
    monkeypatch.setenv("LAMBDA_ARCH_ALERT_MIN_SEVERITY", "loud")
    with pytest.raises(ConfigError, match=r"LAMBDA_ARCH_ALERT_MIN_SEVERITY='loud'.*WARN or ERROR"):
        Settings.from_env()


def test_jsonl_appends_whole_lines_from_many_threads(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "alerts.jsonl"
    alerts.append_alerts(path, [check_alert(1)])

    def write(start: int) -> None:
        for n in range(50):
            alerts.append_alerts(path, [check_alert(start + n)])

    threads = [threading.Thread(target=write, args=(1000 * k,)) for k in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = alerts.read_alerts(path)  # every line parses: none interleaved
    assert len(records) == 201
    assert len({r["alert_id"] for r in records}) == 201
    assert records[0]["alert_id"] == "check_failed:1"


def test_publish_logs_and_delivers(tmp_path: Path, receiver: Receiver) -> None:
    found = [check_alert(1), check_alert(2, "WARN")]
    report = alerts.publish(found, tmp_path, receiver.url, FAST)
    assert (report.logged, report.delivered, report.failed) == (2, 2, 0)
    assert receiver.bodies == alerts.read_alerts(tmp_path / "alerts.jsonl")
    assert [b["alert_id"] for b in receiver.bodies] == ["check_failed:1", "check_failed:2"]


def test_delivery_retries_after_500(receiver: Receiver) -> None:
    receiver.statuses = [500, 503]
    outcome = alerts.deliver(receiver.url, check_alert().to_json(), FAST)
    assert outcome.ok and outcome.attempts == 3 and outcome.status == 200
    assert len(receiver.bodies) == 3


def test_delivery_gives_up_on_4xx_at_once(receiver: Receiver) -> None:
    receiver.statuses = [404]
    outcome = alerts.deliver(receiver.url, {"x": 1}, FAST)
    assert not outcome.ok and outcome.attempts == 1 and outcome.status == 404


def test_dead_webhook_returns_quickly_and_the_alert_is_logged(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/hook"
    started = time.monotonic()
    # Default policy: 3 refused attempts with 0.5 s and 1 s backoff in between.
    report = alerts.publish([check_alert(1), check_alert(2), check_alert(3)], tmp_path, url)
    elapsed = time.monotonic() - started
    assert elapsed < 4.0
    assert (report.logged, report.delivered, report.failed, report.skipped) == (3, 0, 1, 2)
    assert "check_failed:1" in report.errors[0] and "after 3 tries" in report.errors[0]
    assert len(alerts.read_alerts(tmp_path / "alerts.jsonl")) == 3


def test_slow_webhook_is_bounded_by_the_budget(tmp_path: Path, receiver: Receiver) -> None:
    receiver.delay_s = 2.0
    policy = alerts.DeliveryPolicy(attempts=5, timeout_s=0.3, backoff_s=0.05, budget_s=1.0)
    started = time.monotonic()
    report = alerts.publish([check_alert(1), check_alert(2)], tmp_path, receiver.url, policy)
    assert time.monotonic() - started < 1.6
    assert report.delivered == 0 and report.failed == 1 and report.skipped == 1
    assert "timed out" in report.errors[0].lower()


def test_no_webhook_only_logs(tmp_path: Path) -> None:
    report = alerts.publish([check_alert()], tmp_path, None)
    assert (report.logged, report.delivered, report.failed) == (1, 0, 0)


def test_the_alerts_log_rotates_at_its_size_limit(tmp_path: Path) -> None:
    log = alerts.alerts_log(tmp_path)
    limits = LogLimits(max_bytes=2000, keep=2)
    for n in range(60):
        alerts.append_alerts(log, [check_alert(event_id=n)], limits)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["alerts.jsonl", "alerts.jsonl.1", "alerts.jsonl.2"]
    line = len(log.read_text().splitlines()[0]) + 1
    assert all((tmp_path / name).stat().st_size <= 2000 + line for name in files)
    # Whole alerts everywhere, the newest last in the current file; the old code kept one file.
    kept = [a for name in reversed(files) for a in alerts.read_alerts(tmp_path / name)]
    assert kept[-1]["alert_id"] == check_alert(event_id=59).to_json()["alert_id"]
    ids = [a["alert_id"] for a in kept]
    assert ids == [check_alert(event_id=n).to_json()["alert_id"] for n in range(60)][-len(ids) :]
