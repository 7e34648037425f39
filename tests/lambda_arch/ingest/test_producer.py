"""Producing to a real Tansu broker: synthetic traffic and file replay, read back with a consumer."""

from __future__ import annotations

import csv
import itertools
import json
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lambda_arch.cli.main import main
from lambda_arch.common.config import Settings
from lambda_arch.ingest.producer import ProduceRequest, ensure_topic, read_replay, run_produce
from lambda_arch.ingest.schema import PlayEvent, Rejection, parse_payload
from lambda_arch.runtime.broker import EmbeddedBroker
from tests.kafka_helpers import consume_all

ROWS = [
    {
        "event_id": f"e{i}",
        "event_type": ("play_start", "play_heartbeat", "play_stop")[i % 3],
        "event_time": f"2026-03-01T12:{i:02d}:00Z",
        "member_id": 100 + i % 7,
        "title_id": 40 + i % 5,
        "country": ("US", "BR", "DE")[i % 3],
        "device": "tv",
        "discovery_source": "search",
        "position_ms": i * 1000,
    }
    for i in range(40)
]


@pytest.fixture
def kafka_env(env_home: Path, broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers)
    return Settings.from_env()


def test_ensure_topic_creates_partitions_once(broker: EmbeddedBroker, topic: str) -> None:
    assert ensure_topic(broker.bootstrap_servers, topic, 4) == 4
    assert ensure_topic(broker.bootstrap_servers, topic, 9) == 4


def test_synthetic_round_trip_counts_and_keys(kafka_env: Settings, topic: str) -> None:
    request = ProduceRequest(
        events=3000,
        seed=11,
        duplicate_rate=0.05,
        malformed_rate=0.02,
        late_rate=0.03,
        topic=topic,
        progress=False,
    )
    summary = run_produce(kafka_env, request)
    assert summary.records == 3000
    assert sum(summary.kinds.values()) == 3000
    assert summary.kinds["duplicate"] > 0 and summary.kinds["malformed"] > 0

    records = consume_all(kafka_env.bootstrap_servers, topic, 3000)
    assert len(records) == 3000
    partitions_of_member: dict[int, set[int]] = defaultdict(set)
    rejected = 0
    for record in records:
        parsed = parse_payload(record.value)
        if isinstance(parsed, Rejection):
            rejected += 1
            continue
        assert record.key == str(parsed.member_id).encode()
        partitions_of_member[parsed.member_id].add(record.partition)
    assert rejected == summary.kinds["malformed"]
    # key = member_id: one member's events stay on one partition, in order.
    assert all(len(p) == 1 for p in partitions_of_member.values())
    assert len({r.partition for r in records}) == kafka_env.topic_partitions


def _write_replay_file(path: Path) -> None:
    if path.suffix == ".csv":
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(ROWS[0]))
            writer.writeheader()
            writer.writerows(ROWS)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    else:
        table = pa.Table.from_pylist(ROWS)
        pq.write_table(table, path)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_replay_from_file_keeps_file_order(
    kafka_env: Settings,
    topic: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    suffix: str,
) -> None:
    source = tmp_path / f"events{suffix}"
    _write_replay_file(source)
    # One partition, so the topic's order is the file's order.
    monkeypatch.setenv("LAMBDA_ARCH_TOPIC_PARTITIONS", "1")
    assert main(["produce", "--from", str(source), "--topic", topic, "--quiet"]) == 0

    records = consume_all(kafka_env.bootstrap_servers, topic, len(ROWS))
    events = [parse_payload(record.value) for record in records]
    assert all(isinstance(event, PlayEvent) for event in events)
    assert [e.event_id for e in events] == [row["event_id"] for row in ROWS]  # type: ignore[union-attr]
    for record, row in zip(records, ROWS, strict=True):
        event = parse_payload(record.value)
        assert isinstance(event, PlayEvent)
        assert record.key == str(row["member_id"]).encode()
        assert (event.member_id, event.title_id, event.position_ms) == (
            row["member_id"],
            row["title_id"],
            row["position_ms"],
        )
        assert event.event_time.isoformat().startswith(row["event_time"][:19])


def test_replay_passes_malformed_lines_through_unchanged(tmp_path: Path) -> None:
    source = tmp_path / "mixed.jsonl"
    source.write_bytes(b'{"member_id": 5, "event_id": "x"}\n{not json\n\n{"member_id": 6}\n')
    pairs = list(read_replay(source))
    assert pairs == [
        (b"5", b'{"member_id": 5, "event_id": "x"}'),
        (None, b"{not json"),
        (b"6", b'{"member_id": 6}'),
    ]


def test_csv_replay_types_integers_and_keeps_bad_text(tmp_path: Path) -> None:
    source = tmp_path / "typed.csv"
    source.write_text(
        "event_id,event_type,event_time,member_id,title_id,country,position_ms\n"
        "a,play_start,1767225600000,7,9,US,\n"
        "b,play_start,2026-01-01T00:00:00Z,seven,9,US,10\n"
    )
    first, second = (json.loads(value) for _, value in read_replay(source))
    assert first["event_time"] == 1767225600000 and first["member_id"] == 7
    assert "position_ms" not in first
    assert second["member_id"] == "seven"
    assert isinstance(parse_payload(json.dumps(second)), Rejection)


def test_rate_limit_paces_the_stream(kafka_env: Settings, topic: str) -> None:
    # A lower bound only: the producer may never run ahead of --rate.
    started = time.monotonic()
    summary = run_produce(
        kafka_env, ProduceRequest(events=600, rate=400.0, seed=3, topic=topic, progress=False)
    )
    elapsed = time.monotonic() - started
    assert summary.records == 600
    assert elapsed >= 599 / 400.0 * 0.95


def test_record_timestamps_run_on_the_event_clock_and_replays_keep_sending_time(
    kafka_env: Settings, topic: str, tmp_path: Path
) -> None:
    """CONTRACT section 3: synthetic traffic (a simulated clock: --start, --speedup) stamps each
    record with the event clock at its emission (an on-time event: its own event time), so the
    future rule never quarantines it however fast the clock runs; a replay keeps the time of
    sending. Read back from a real broker."""
    from collections import Counter

    from lambda_arch.common.times import epoch_millis
    from lambda_arch.ingest.generator import TrafficConfig, generate
    from lambda_arch.ingest.producer import DEFAULT_DENSITY
    from lambda_arch.ingest.schema import REASON_FUTURE

    start = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    request = ProduceRequest(
        events=2000,
        seed=5,
        start=start,
        speedup=60.0,  # 2000 records: 20 minutes of event time, sent in about a second
        late_rate=0.05,
        duplicate_rate=0.03,
        malformed_rate=0.02,
        topic=topic,
        progress=False,
    )
    run_produce(kafka_env, request)
    records = consume_all(kafka_env.bootstrap_servers, topic, 2000)
    assert len(records) == 2000
    config = TrafficConfig(
        seed=5,
        start=start,
        events_per_second=DEFAULT_DENSITY / 60.0,
        late_rate=0.05,
        duplicate_rate=0.03,
        malformed_rate=0.02,
        allowed_lateness_min=kafka_env.allowed_lateness_min,
    )
    expected = Counter(
        (r.value, epoch_millis(r.emit_time)) for r in itertools.islice(generate(config), 2000)
    )
    assert Counter((r.value, r.timestamp) for r in records) == expected
    events = [(r, parse_payload(r.value)) for r in records]
    on_time = [(r, e) for r, e in events if isinstance(e, PlayEvent)]
    assert sum(r.timestamp == e.event_time_ms for r, e in on_time) > 1500
    assert all(r.timestamp >= e.event_time_ms for r, e in on_time)  # late ones are sent later
    assert max(r.timestamp for r in records) - epoch_millis(start) > 15 * 60 * 1000
    for record, _ in on_time:
        assert parse_payload(record.value, record.timestamp) != Rejection(REASON_FUTURE)

    # A replay keeps the time of sending, whatever the event times in the file.
    replay_topic = f"{topic}-replay"
    source = tmp_path / "events.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    before = time.time() * 1000
    run_produce(kafka_env, ProduceRequest(from_file=source, topic=replay_topic, progress=False))
    after = time.time() * 1000
    replayed = consume_all(kafka_env.bootstrap_servers, replay_topic, len(ROWS))
    assert len(replayed) == len(ROWS)
    assert all(before - 1000 <= r.timestamp <= after + 1000 for r in replayed)
