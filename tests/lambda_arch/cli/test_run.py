"""`lambda-arch run`: the headless pass on an empty topic, on new data, and twice in a row."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dagster import DagsterInstance

from lambda_arch.batch import layer as batch
from lambda_arch.batch.lake import Lake
from lambda_arch.cli.main import main
from lambda_arch.common.config import Settings
from lambda_arch.ingest.producer import ensure_topic, make_producer
from lambda_arch.runtime.broker import EmbeddedBroker


@pytest.fixture
def run_env(
    env_home: Path, broker: EmbeddedBroker, topic: str, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers)
    monkeypatch.setenv("LAMBDA_ARCH_TOPIC", topic)
    monkeypatch.setenv("LAMBDA_ARCH_DATABASE", f"db_{topic.replace('-', '_')}")
    monkeypatch.setenv("LAMBDA_ARCH_START_DATE", "2026-03-01")
    # `run` points DAGSTER_HOME at the home's instance: restored after the test.
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    settings = Settings.from_env()
    ensure_topic(settings.bootstrap_servers, settings.topic, 2)
    return settings


def plays(start: datetime, hours: int) -> list[bytes]:
    return [
        json.dumps(
            {
                "event_id": f"p{n}",
                "event_type": "play_start",
                "event_time": (start + timedelta(minutes=30 * n)).isoformat(),
                "member_id": n % 4,
                "title_id": n % 3,
                "country": "FR",
            }
        ).encode()
        for n in range(hours * 2)
    ]


@pytest.mark.timeout(900)  # three passes of speed, batch, checks and serving runs
def test_run_on_an_empty_topic_then_new_data_then_again(
    spark, run_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run"]) == 0
    out = capsys.readouterr().out
    assert "nothing owed" in out and "done in" in out

    producer = make_producer(run_env.bootstrap_servers)
    for payload in plays(datetime(2026, 3, 1, tzinfo=UTC), 50):  # to 2026-03-03 01:30
        producer.send(run_env.topic, value=payload)
    producer.flush()
    producer.close()

    assert main(["run"]) == 0
    out = capsys.readouterr().out
    assert "recomputing 2026-03-01 .. 2026-03-02" in out
    assert "trending_speed: 100 events read" in out
    lake = Lake.from_settings(run_env)
    rows = batch.read_batch_view(spark, lake, batch.TRENDING_TABLE).collect()
    by_day: dict[str, int] = {}
    for row in rows:
        by_day[row.dt] = by_day.get(row.dt, 0) + row.plays
    assert by_day == {"2026-03-01": 48, "2026-03-02": 48}
    # Served: batch up to the end of 2026-03-02, speed after it, for any past window.
    assert "trending: batch watermark 2026-03-03T00:00:00Z" in out
    assert main(["trending", "--as-of", "2026-03-03T02:00:00Z", "--window", "3000", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["batch_watermark"] == "2026-03-03T00:00:00Z"
    assert answer["titles"] == [
        {"rank": 1, "title_id": 0, "plays": 34},
        {"rank": 2, "title_id": 1, "plays": 33},
        {"rank": 3, "title_id": 2, "plays": 33},
    ]
    assert main(["sessions", "--member", "1", "--title", "1", "--json"]) == 0
    sessions = json.loads(capsys.readouterr().out)["sessions"]
    assert sessions and all(s["title_id"] == 1 and s["events"] == 1 for s in sessions)

    # Again: nothing new to read, nothing owed; every run is in the home's Dagster instance.
    assert main(["run"]) == 0
    out = capsys.readouterr().out
    assert "trending_speed: 0 events read" in out and "nothing owed" in out
    with DagsterInstance.from_config(str(run_env.dagster_home)) as instance:
        jobs = sorted(r.dagster_run.job_name for r in instance.get_run_records())
    # Every pass ends with a serving refresh (a sensor's batch run may have left nothing owed).
    assert jobs == ["batch_job", *["serving_job"] * 3, *["speed_job"] * 3]

    # status: the broker, every watermark, the store and the instance's materializations.
    assert main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    # One query lands and counts every count view (issue 13): its checkpoint is `counts`.
    assert status["kafka"]["lag"] == {"counts": 0, "sessions_speed": 0}
    assert status["speed"]["counts"]["watermark"] == "2026-03-03T01:20:00.000Z"
    assert status["batch"]["missing_days"] == [] and status["batch"]["stale_days"] == []
    assert status["serving"]["trending"]["batch_watermark"] == "2026-03-03T00:00:00Z"
    assert status["dagster"]["assets"]["trending_batch"]["partition"] == "2026-03-02"
    assert status["dagster"]["assets"]["trending_serving"] is not None
