"""`lambda-arch status`: collect_status on a fresh home, without and with a broker, then after a
few records and a landing run's state; render_status of each document."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from lambda_arch.cli.status import collect_status, render_status
from lambda_arch.common.config import Settings
from lambda_arch.ingest.producer import ensure_topic, make_producer
from lambda_arch.runtime.broker import EmbeddedBroker, free_port
from lambda_arch.serving.store import ServingStore
from lambda_arch.speed.layer import COUNTS, QUERIES, SpeedPaths


def settings_for(home: Path, bootstrap: str, topic: str) -> Settings:
    return Settings(
        LAMBDA_ARCH_HOME=str(home), KAFKA_BOOTSTRAP_SERVERS=bootstrap, LAMBDA_ARCH_TOPIC=topic
    )


def test_a_fresh_home_without_a_broker(tmp_path: Path) -> None:
    closed = f"127.0.0.1:{free_port()}"
    settings = settings_for(tmp_path / "home", closed, "plays")
    document = collect_status(settings)
    json.dumps(document)  # one JSON document
    assert document["home"] == str(tmp_path / "home")
    assert document["kafka"] == {
        "topic": "plays",
        "error": f"no Kafka broker answered at {closed}: start `lambda-arch up` "
        "or set KAFKA_BOOTSTRAP_SERVERS",
    }
    assert set(document["speed"]) == set(QUERIES)
    for state in document["speed"].values():
        assert state == {
            "watermark": None,
            "max_event_time": None,
            "late_events_total": 0,
            "updated_at": None,
        }
    assert document["batch"] == {
        "landing_watermark": None,
        "complete_days": 0,
        "missing_days": [],
        "stale_days": [],
    }
    assert document["serving"] == ServingStore.from_settings(settings).summary()
    for view in document["serving"].values():
        assert view["batch_watermark"] is None and view["refreshed_at"] is None

    lines = render_status(document).splitlines()
    assert lines[0] == f"home {tmp_path / 'home'}"
    assert lines[1] == f"kafka: topic plays: {document['kafka']['error']}"
    assert f"speed {COUNTS}: watermark -, late events 0, updated -" in lines
    assert "batch: landing watermark -, 0 complete days, missing -, stale -" in lines
    serving = [line for line in lines if line.startswith("serving ")]
    assert len(serving) == len(document["serving"]) and all("refreshed never" in s for s in serving)


def test_a_missing_topic_is_reported_not_raised(broker: EmbeddedBroker, tmp_path: Path) -> None:
    missing = f"status-missing-{tmp_path.name[-8:]}"
    document = collect_status(settings_for(tmp_path / "home", broker.bootstrap_servers, missing))
    assert document["kafka"]["topic"] == missing
    assert f"topic '{missing}' does not exist" in document["kafka"]["error"]


def test_after_a_few_records_and_a_landing_run(
    broker: EmbeddedBroker, topic: str, tmp_path: Path
) -> None:
    from lambda_arch.speed.layer import _save_counts_state
    from lambda_arch.speed.streaming import StreamReport

    settings = settings_for(tmp_path / "home", broker.bootstrap_servers, topic)
    ensure_topic(broker.bootstrap_servers, topic, 2)
    producer = make_producer(broker.bootstrap_servers)
    for i in range(7):
        producer.send(topic, key=str(i).encode(), value=b"{}", partition=i % 2)
    producer.flush()
    producer.close()
    # What a counts run (which lands) leaves behind: its state files (the speed layer's own writer).
    landed = StreamReport(
        name=COUNTS,
        checkpoint="",
        micro_batches=1,
        events_read=7,
        start_offsets={},
        offsets={0: 4, 1: 3},
        duration_s=1.0,
        events_per_s=7.0,
        max_event_time=datetime(2026, 3, 2, 0, 30, tzinfo=UTC),
        watermark=None,
        late_events=2,
        observed={},
    )
    _save_counts_state(SpeedPaths.from_settings(settings), settings, landed, ())

    document = collect_status(settings)
    kafka = document["kafka"]
    assert kafka["bootstrap_servers"] == broker.bootstrap_servers
    assert kafka["end_offsets"] == {"0": 4, "1": 3}
    assert kafka["lag"] == dict.fromkeys(QUERIES, 7)  # no query has a checkpoint yet
    landing = document["speed"][COUNTS]
    assert landing["max_event_time"] == "2026-03-02T00:30:00.000Z"
    assert landing["watermark"] == "2026-03-02T00:20:00.000Z"  # minus the allowed lateness
    assert landing["late_events_total"] == 2 and landing["updated_at"]
    assert document["batch"]["landing_watermark"] == "2026-03-02T00:20:00Z"
    assert document["batch"]["complete_days"] == 0  # nothing landed in the lake

    lines = render_status(document).splitlines()
    lag = ", ".join(f"{query} 7" for query in QUERIES)
    assert f"kafka: topic {topic}, 7 records; lag: {lag}" in lines
    assert any(
        line.startswith(f"speed {COUNTS}: watermark 2026-03-02T00:20:00.000Z, late events 2")
        for line in lines
    )
    batch = "batch: landing watermark 2026-03-02T00:20:00Z, 0 complete days"
    assert any(line.startswith(batch) for line in lines)


def test_render_status_shows_dagster_materializations_and_checks() -> None:
    document = {
        "home": "/h",
        "kafka": {"topic": "t", "error": "down"},
        "speed": {},
        "batch": {
            "landing_watermark": None,
            "complete_days": 2,
            "missing_days": ["2026-03-01"],
            "stale_days": [],
        },
        "serving": {},
        "dagster": {
            "assets": {
                "trending_batch": {"at": "2026-03-02T01:00:00Z", "run_id": "abcdef0123456789"},
                "trending_serving": None,
            },
            "checks": {"events_valid": {"status": "PASSED", "at": "2026-03-02T01:01:00Z"}},
        },
    }
    assert render_status(document).splitlines()[2:] == [
        "batch: landing watermark -, 2 complete days, missing ['2026-03-01'], stale -",
        "asset trending_batch: last materialized 2026-03-02T01:00:00Z (run abcdef01)",
        "asset trending_serving: last materialized never",
        "check events_valid: PASSED at 2026-03-02T01:01:00Z",
    ]
    assert render_status({**document, "dagster": {"error": "no instance"}}).endswith(
        "dagster: no instance"
    )
