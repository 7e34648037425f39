"""Play-event traffic into Kafka: synthetic events or a replay of a CSV, JSON-lines or Parquet file.

Record timestamps (CONTRACT section 3): synthetic traffic runs an event clock (`--start`,
`--speedup`, and a density of DEFAULT_DENSITY event-seconds per record when unpaced), which may
run far ahead of the wall clock, so each synthetic record carries the event clock at its
emission as its Kafka timestamp: an on-time event its own event time, a late one the later
time it is sent at, a malformed one the clock. Otherwise the schema's rule against events
from the future (more than LAMBDA_ARCH_MAX_CLOCK_SKEW_MIN ahead of the record timestamp) would
quarantine the demo's 60x traffic. A replay (`--from`) keeps the time of sending.
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
import signal
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from types import FrameType
from typing import Any

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from lambda_arch.common.config import Settings
from lambda_arch.common.times import epoch_millis, format_time
from lambda_arch.runtime.broker import ServiceError, require_reachable, unreachable_message

DEFAULT_EVENTS = 10_000
# Event-time density when producing as fast as possible: records per second of the event clock.
DEFAULT_DENSITY = 100.0
_INTEGER = re.compile(r"^-?\d+$")
_INTEGER_FIELDS = ("member_id", "title_id", "position_ms", "event_time")


@dataclass(frozen=True)
class ProduceRequest:
    """What `lambda-arch produce` was asked to do."""

    events: int | None = None  # None: default count; 0: until interrupted
    rate: float | None = None  # records/s; None: as fast as possible
    seed: int | None = None
    from_file: Path | None = None
    start: datetime | None = None
    speedup: float = 1.0
    duplicate_rate: float = 0.0
    late_rate: float = 0.0
    malformed_rate: float = 0.0
    topic: str | None = None
    progress: bool = True


@dataclass
class ProduceSummary:
    """What was sent, for the closing line and for tests."""

    topic: str
    bootstrap_servers: str
    records: int = 0
    seconds: float = 0.0
    kinds: Counter[str] = field(default_factory=Counter)
    interrupted: bool = False

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        detail = ", ".join(f"{count:,} {kind}" for kind, count in sorted(self.kinds.items()))
        ending = " (interrupted)" if self.interrupted else ""
        return (
            f"produced {self.records:,} records ({detail or 'none'}) to {self.topic} at "
            f"{self.bootstrap_servers} in {self.seconds:.1f} s ({self.rate:,.0f} records/s){ending}"
        )


def _admin(bootstrap_servers: str) -> KafkaAdminClient:
    require_reachable(bootstrap_servers)
    try:
        return KafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="lambda-arch-admin")
    except KafkaError:
        raise ServiceError(unreachable_message(bootstrap_servers)) from None


def ensure_topic(
    bootstrap_servers: str, topic: str, partitions: int, replication_factor: int = 1
) -> int:
    """Create topic with that many partitions unless it exists; return its partition count."""
    admin = _admin(bootstrap_servers)
    try:
        if topic not in admin.list_topics():
            # Another producer or `up` may create it at the same moment.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(
                    [
                        NewTopic(
                            topic, num_partitions=partitions, replication_factor=replication_factor
                        )
                    ]
                )
        return topic_partitions(admin, topic)
    finally:
        admin.close()


def topic_partitions(admin: KafkaAdminClient, topic: str, timeout_s: float = 10.0) -> int:
    """Partition count of topic, waiting briefly for metadata after a creation."""
    deadline = time.monotonic() + timeout_s
    while True:
        described = admin.describe_topics([topic])
        partitions = described[0].get("partitions", []) if described else []
        if partitions or time.monotonic() > deadline:
            return len(partitions)
        time.sleep(0.1)


def make_producer(bootstrap_servers: str) -> KafkaProducer:
    """A producer tuned for throughput on loopback and safe defaults on a cluster."""
    require_reachable(bootstrap_servers)
    try:
        return KafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id="lambda-arch-producer",
            acks=1,
            linger_ms=20,
            batch_size=256 * 1024,
            max_request_size=4 * 1024 * 1024,
            retries=5,
        )
    except KafkaError:
        raise ServiceError(unreachable_message(bootstrap_servers)) from None


# Replay ----------------------------------------------------------------------------------------


def _key_of(document: Any) -> bytes | None:
    member_id = document.get("member_id") if isinstance(document, dict) else None
    return None if member_id is None else str(member_id).encode()


def _json_bytes(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def _csv_document(row: dict[str, str]) -> dict[str, Any]:
    # CSV holds text: integer columns become JSON integers when they look like integers, empty
    # cells are absent; anything else is sent as text so that the schema quarantines it.
    document: dict[str, Any] = {}
    for name, text in row.items():
        if name is None or text is None or text == "":
            continue
        document[name] = int(text) if name in _INTEGER_FIELDS and _INTEGER.match(text) else text
    return document


def _parquet_value(value: Any) -> Any:
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return format_time(aware)
    return value


def read_replay(path: Path) -> Iterator[tuple[bytes | None, bytes]]:
    """(key, value) pairs of a CSV, JSON-lines or Parquet file of event fields, in file order."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                document = _csv_document(row)
                yield _key_of(document), _json_bytes(document)
    elif suffix in (".jsonl", ".ndjson", ".json"):
        # Lines are sent as they are, so a malformed line reaches the quarantine unchanged.
        with path.open("rb") as handle:
            for line in handle:
                payload = line.rstrip(b"\r\n")
                if not payload.strip():
                    continue
                try:
                    key = _key_of(json.loads(payload))
                except ValueError:
                    key = None
                yield key, payload
    elif suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=10_000):
            for row in batch.to_pylist():
                document = {k: _parquet_value(v) for k, v in row.items() if v is not None}
                yield _key_of(document), _json_bytes(document)
    else:
        raise ServiceError(
            f"cannot tell the format of {path}: use a .csv, .jsonl (or .ndjson) or .parquet file"
        )


# Sending ---------------------------------------------------------------------------------------

# (kind, key, value, Kafka timestamp in epoch ms or None for the time of sending)
Outgoing = tuple[str, bytes | None, bytes, int | None]


def _synthetic(request: ProduceRequest, allowed_lateness_min: int) -> Iterator[Outgoing]:
    from lambda_arch.ingest.generator import TrafficConfig, generate

    density = (request.rate or DEFAULT_DENSITY) / request.speedup
    config = TrafficConfig(
        seed=request.seed,
        start=request.start,
        events_per_second=density,
        duplicate_rate=request.duplicate_rate,
        late_rate=request.late_rate,
        malformed_rate=request.malformed_rate,
        allowed_lateness_min=allowed_lateness_min,
    )
    for record in generate(config):
        yield record.kind, record.key, record.value, epoch_millis(record.emit_time)


def _replayed(path: Path) -> Iterator[Outgoing]:
    for key, value in read_replay(path):
        yield "replayed", key, value, None


class _Stop(Exception):
    """SIGTERM arrived: stop sending, flush what was sent, report."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def send_records(
    producer: KafkaProducer,
    topic: str,
    records: Iterable[Outgoing],
    *,
    summary: ProduceSummary,
    rate: float | None = None,
    total: int | None = None,
    progress: bool = False,
) -> ProduceSummary:
    """Send (kind, key, value, timestamp_ms) records at a steady rate (or as fast as possible)
    and flush; a None timestamp is the time of sending (the producer's clock)."""
    from tqdm import tqdm

    failures: list[BaseException] = []
    bar = tqdm(
        total=total,
        unit="ev",
        unit_scale=True,
        disable=not progress,
        mininterval=0.5,
        smoothing=0.1,
    )
    started = time.monotonic()
    try:
        for index, (kind, key, value, timestamp_ms) in enumerate(records):
            if rate is not None:
                # Pace against the schedule, not the previous send, so the rate stays steady.
                ahead = started + index / rate - time.monotonic()
                if ahead > 0.001:
                    time.sleep(ahead)
            producer.send(topic, key=key, value=value, timestamp_ms=timestamp_ms).add_errback(
                failures.append
            )
            summary.records += 1
            summary.kinds[kind] += 1
            if index % 256 == 255:
                bar.update(256)
                if failures:
                    break
    except (KeyboardInterrupt, _Stop):
        summary.interrupted = True
    finally:
        producer.flush()
        summary.seconds = time.monotonic() - started
        bar.update(summary.records - bar.n)
        bar.close()
    if failures:
        raise ServiceError(f"{len(failures)} records could not be sent to {topic}: {failures[0]}")
    return summary


def run_produce(settings: Settings, request: ProduceRequest) -> ProduceSummary:
    """`lambda-arch produce`: make sure the topic exists, then send the requested records."""
    topic = request.topic or settings.topic
    bootstrap = settings.bootstrap_servers
    ensure_topic(bootstrap, topic, settings.topic_partitions)
    if request.from_file is not None:
        records: Iterable[Outgoing] = _replayed(request.from_file)
        limit = request.events or None
    else:
        records = _synthetic(request, settings.allowed_lateness_min)
        limit = DEFAULT_EVENTS if request.events is None else (request.events or None)
    if limit is not None:
        records = islice(records, limit)
    producer = make_producer(bootstrap)
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        summary = send_records(
            producer,
            topic,
            records,
            summary=ProduceSummary(topic=topic, bootstrap_servers=bootstrap),
            rate=request.rate,
            total=limit,
            progress=request.progress,
        )
    except KafkaError as error:
        raise ServiceError(f"sending to {topic} at {bootstrap} failed: {error}") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        producer.close(timeout=10)
    record_produced_ends(settings, topic)
    return summary


def record_produced_ends(settings: Settings, topic: str) -> None:
    """Record the topic's end offsets once the records are acknowledged: if the broker loses
    them before they are landed, the next speed run can count them
    (lambda_arch.ingest.incarnations). Best effort: producing succeeded either way."""
    from lambda_arch.ingest.incarnations import record_topic_ends
    from lambda_arch.ingest.kafka_offsets import KafkaOffsetsError

    with contextlib.suppress(KafkaError, KafkaOffsetsError, OSError):
        record_topic_ends(settings.topic_ends_file, settings.bootstrap_servers, topic)
