"""Test topics: records to produce (uneven partitions, null keys, headers, compression) and a
plain consumer to read them back (no group: Tansu joins groups slowly)."""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from lambda_arch.ingest.producer import ensure_topic, make_producer


def consume_all(
    bootstrap_servers: str, topic: str, expected: int, timeout_s: float = 30.0
) -> list[ConsumerRecord]:
    """Every record of topic from the beginning, once `expected` have arrived (or the timeout)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers, enable_auto_commit=False, group_id=None
    )
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        assignment = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assignment)
        consumer.seek_to_beginning(*assignment)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500, max_records=10_000).values():
                records.extend(batch)
        # A short extra poll catches records beyond `expected` (which a test should see).
        for batch in consumer.poll(timeout_ms=300).values():
            records.extend(batch)
        return records
    finally:
        consumer.close()


BASE_MS = 1_790_000_000_000  # record timestamps: BASE_MS + 10 * sequence number


@dataclass(frozen=True)
class Sent:
    partition: int
    key: bytes | None
    value: bytes
    timestamp_ms: int


def send(producer: KafkaProducer, topic: str, records: list[Sent]) -> None:
    for index, record in enumerate(records):
        headers = [("trace", f"t{index}".encode())] if index % 5 == 0 else None
        producer.send(
            topic,
            key=record.key,
            value=record.value,
            partition=record.partition,
            timestamp_ms=record.timestamp_ms,
            headers=headers,
        )
    producer.flush()


def make_records(count: int, partitions: int, first: int = 0) -> list[Sent]:
    """Uneven partitions (every third record to partition 0), some null keys, big and small values."""
    records = []
    for i in range(first, first + count):
        partition = 0 if i % 3 == 0 else i % partitions
        key = None if i % 11 == 0 else f"member-{i % 97}".encode()
        value = json.dumps({"seq": i, "pad": "x" * (i % 200)}).encode()
        records.append(Sent(partition, key, value, BASE_MS + 10 * i))
    return records


def produce(
    bootstrap: str, topic: str, records: list[Sent], compression: str | None = None
) -> None:
    if compression is None:
        producer = make_producer(bootstrap)
    else:
        producer = KafkaProducer(
            bootstrap_servers=bootstrap, compression_type=compression, linger_ms=20
        )
    try:
        send(producer, topic, records)
    finally:
        producer.close()


def by_partition(records: list[Sent]) -> dict[int, list[Sent]]:
    grouped: dict[int, list[Sent]] = defaultdict(list)
    for record in records:
        grouped[record.partition].append(record)
    return dict(grouped)


@dataclass
class Produced:
    topic: str
    records: list[Sent]

    @property
    def partitions(self) -> dict[int, list[Sent]]:
        return by_partition(self.records)

    @property
    def counts(self) -> dict[int, int]:
        return {p: len(rs) for p, rs in sorted(self.partitions.items())}


def produce_mixed_topic(bootstrap: str, prefix: str) -> Produced:
    """A new 4-partition topic: 1,200 plain records then 800 gzip-compressed ones."""
    topic = f"{prefix}-{uuid.uuid4().hex[:10]}"
    ensure_topic(bootstrap, topic, 4)
    records = make_records(2000, 4)
    produce(bootstrap, topic, records[:1200])
    produce(bootstrap, topic, records[1200:], compression="gzip")
    return Produced(topic, records)
