"""The direct Kafka source (`lambda_kafka`) on a real Tansu broker and Spark (offsets: see
test_kafka_offsets)."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka import KafkaProducer
from pyspark.sql.datasource import InputPartition

from lambda_arch.ingest.kafka_offsets import (
    KafkaDataLossError,
    end_offsets,
)
from lambda_arch.ingest.kafka_source import (
    SourceOptions,
    admit,
    checkpoint_offsets,
    pending_data_loss,
    read_partition,
    register_kafka_source,
    resume_offsets,
    source_options,
)
from lambda_arch.ingest.producer import ensure_topic, make_producer
from lambda_arch.runtime.broker import EmbeddedBroker, free_port
from tests.kafka_helpers import consume_all

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


@pytest.fixture(scope="module")
def produced(broker: EmbeddedBroker) -> Produced:
    """A 4-partition topic: 1,200 plain records then 800 gzip-compressed ones."""
    topic = f"test-src-{uuid.uuid4().hex[:10]}"
    ensure_topic(broker.bootstrap_servers, topic, 4)
    records = make_records(2000, 4)
    produce(broker.bootstrap_servers, topic, records[:1200])
    produce(broker.bootstrap_servers, topic, records[1200:], compression="gzip")
    return Produced(topic, records)


@pytest.fixture(scope="module")
def kafka_spark(spark):
    register_kafka_source(spark)
    return spark


def rows_of(df) -> dict[int, list[tuple]]:
    """(offset, key, value, timestamp ms) per partition, in offset order."""
    rows = df.selectExpr(
        "partition", "offset", "key", "value", "unix_millis(timestamp) AS ts", "topic"
    ).collect()
    grouped: dict[int, list[tuple]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: (r["partition"], r["offset"])):
        grouped[row["partition"]].append(
            (row["offset"], row["key"] and bytes(row["key"]), bytes(row["value"]), row["ts"])
        )
    return dict(grouped)


def expected_rows(records: dict[int, list[Sent]], ranges: dict[int, tuple[int, int]] | None = None):
    expected = {}
    for partition, sent in sorted(records.items()):
        lo, hi = (ranges or {}).get(partition, (0, len(sent)))
        if lo < hi:
            expected[partition] = [
                (offset, sent[offset].key, sent[offset].value, sent[offset].timestamp_ms)
                for offset in range(lo, hi)
            ]
    return expected


# Decoding (kafka-python only; offsets are tested in test_kafka_offsets) -----------------------


def test_read_partition_decodes_like_kafka_python(
    broker: EmbeddedBroker, produced: Produced
) -> None:
    """The columnar decoder (plain and gzip batches, headers, null keys) against ConsumerRecords."""
    bootstrap = broker.bootstrap_servers
    reference = consume_all(bootstrap, produced.topic, len(produced.records))
    options = SourceOptions.parse({"bootstrap.servers": bootstrap, "topic": produced.topic})
    for partition, count in produced.counts.items():
        split = _split(produced.topic, partition, 3, count - 2)
        batches = list(read_partition(options, split))
        got = [
            (o, k, v, t.value // 1000)
            for b in batches
            for o, k, v, t in zip(
                b.column("offset").to_pylist(),
                b.column("key").to_pylist(),
                b.column("value").to_pylist(),
                b.column("timestamp"),
                strict=True,
            )
        ]
        want = [
            (r.offset, r.key, r.value, r.timestamp)
            for r in sorted(reference, key=lambda r: r.offset)
            if r.partition == partition and 3 <= r.offset < count - 2
        ]
        assert got == want
    assert list(read_partition(options, InputPartition(None))) == []


def _split(topic: str, partition: int, start: int, end: int):
    from lambda_arch.ingest.kafka_source import KafkaInputPartition

    return KafkaInputPartition(topic, partition, start, end)


# Pure planning logic -----------------------------------------------------------------------------


def test_admit_caps_batches_in_proportion_to_backlog() -> None:
    start = {0: 0, 1: 100, 2: 50}
    end = {0: 600, 1: 400, 2: 50}
    capped = admit(start, end, 300)
    assert sum(capped[p] - start[p] for p in end) == 300
    assert capped == {0: 200, 1: 200, 2: 50}  # 600:300 backlog -> 200:100
    assert admit(start, end, 10_000) == end
    assert admit(start, end, None) == end
    assert admit({}, {0: 5}, 3) == {0: 5}  # a new partition's start defaults to its end
    odd = admit({0: 0, 1: 0, 2: 0}, {0: 1, 1: 1, 2: 1}, 2)
    assert sum(odd.values()) == 2


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match=r"bootstrap\.servers"):
        SourceOptions.parse({"topic": "t"})
    with pytest.raises(ValueError, match="maxEventsPerBatch"):
        SourceOptions.parse({"bootstrap.servers": "h:1", "topic": "t", "maxEventsPerBatch": "0"})
    with pytest.raises(ValueError, match="startingOffsets"):
        SourceOptions.parse({"bootstrap.servers": "h:1", "topic": "t", "startingOffsets": "{x"})
    options = SourceOptions.parse(
        source_options(
            "h:1", "t", max_events_per_batch=7, startingOffsets={0: 3}, failOnDataLoss=False
        )
    )
    assert options.max_events_per_batch == 7
    assert options.starting_offsets == {0: 3}
    assert options.fail_on_data_loss is False


# Batch reads through Spark -----------------------------------------------------------------------


def load(spark, bootstrap: str, topic: str, **options: object):
    return (
        spark.read.format("lambda_kafka")
        .options(**source_options(bootstrap, topic, **options))
        .load()
    )


def test_batch_read_returns_exactly_the_produced_records(
    kafka_spark, broker: EmbeddedBroker, produced: Produced
) -> None:
    df = load(kafka_spark, broker.bootstrap_servers, produced.topic)
    assert df.schema.simpleString() == (
        "struct<key:binary,value:binary,topic:string,partition:int,offset:bigint,timestamp:timestamp>"
    )
    assert df.rdd.getNumPartitions() == 4  # one input partition per Kafka partition
    assert rows_of(df) == expected_rows(produced.partitions)
    assert {r["topic"] for r in df.select("topic").distinct().collect()} == {produced.topic}


def test_batch_read_by_offset_range(
    kafka_spark, broker: EmbeddedBroker, produced: Produced
) -> None:
    counts = produced.counts
    df = load(
        kafka_spark,
        broker.bootstrap_servers,
        produced.topic,
        startingOffsets={0: 10, 1: -2, 2: 100, 3: counts[3]},
        endingOffsets={0: 20, 1: 5, 2: -1, 3: -1},
    )
    ranges = {0: (10, 20), 1: (0, 5), 2: (100, counts[2]), 3: (counts[3], counts[3])}
    assert rows_of(df) == expected_rows(produced.partitions, ranges)


def test_batch_read_by_time_range(kafka_spark, broker: EmbeddedBroker, produced: Produced) -> None:
    lo, hi = BASE_MS + 10 * 450 + 5, BASE_MS + 10 * 1300
    df = load(
        kafka_spark,
        broker.bootstrap_servers,
        produced.topic,
        startingTimestamp=lo,
        endingTimestamp=hi,
    )
    ranges = {
        p: (
            next(i for i, r in enumerate(rs) if r.timestamp_ms >= lo),
            next(i for i, r in enumerate(rs) if r.timestamp_ms >= hi),
        )
        for p, rs in produced.partitions.items()
    }
    got = rows_of(df)
    assert got == expected_rows(produced.partitions, ranges)
    assert sum(len(v) for v in got.values()) == sum(
        1 for r in produced.records if lo <= r.timestamp_ms < hi
    )


def test_batch_read_of_an_empty_topic(kafka_spark, broker: EmbeddedBroker, topic: str) -> None:
    ensure_topic(broker.bootstrap_servers, topic, 2)
    assert load(kafka_spark, broker.bootstrap_servers, topic).count() == 0


# Streaming --------------------------------------------------------------------------------------


def run_available_now(spark, bootstrap: str, topic: str, checkpoint: Path, out: Path, **options):
    """One `trigger(availableNow=True)` run into a Parquet folder; returns the query."""
    query = (
        spark.readStream.format("lambda_kafka")
        .options(**source_options(bootstrap, topic, **options))
        .load()
        .writeStream.format("parquet")
        .option("checkpointLocation", str(checkpoint))
        .option("path", str(out))
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination(timeout=120)
    return query


def batch_sizes(query) -> list[int]:
    return [p["numInputRows"] for p in query.recentProgress if p["numInputRows"]]


def test_streaming_available_now_exactly_once_with_admission_control(
    kafka_spark, broker: EmbeddedBroker, topic: str, tmp_path: Path
) -> None:
    bootstrap = broker.bootstrap_servers
    ensure_topic(bootstrap, topic, 3)
    first = make_records(1500, 3)
    produce(bootstrap, topic, first)
    checkpoint, out = tmp_path / "checkpoint", tmp_path / "out"

    query = run_available_now(
        kafka_spark, bootstrap, topic, checkpoint, out, max_events_per_batch=400
    )
    sizes = batch_sizes(query)
    assert sum(sizes) == 1500 and len(sizes) > 1 and max(sizes) <= 400, sizes
    assert checkpoint_offsets(checkpoint) == {p: len(rs) for p, rs in by_partition(first).items()}

    second = make_records(700, 3, first=1500)
    produce(bootstrap, topic, second)
    query = run_available_now(
        kafka_spark, bootstrap, topic, checkpoint, out, max_events_per_batch=400
    )
    sizes = batch_sizes(query)
    assert sum(sizes) == 700 and max(sizes) <= 400, sizes

    lake = kafka_spark.read.parquet(str(out))
    assert lake.count() == 2200
    assert lake.select("partition", "offset").distinct().count() == 2200
    seqs = {json.loads(bytes(r["value"]))["seq"] for r in lake.select("value").collect()}
    assert seqs == set(range(2200))

    # Nothing new: a third run reads nothing.
    query = run_available_now(kafka_spark, bootstrap, topic, checkpoint, out)
    assert sum(batch_sizes(query)) == 0


def test_data_loss_after_a_broker_restart(kafka_spark, tmp_path: Path) -> None:
    """A restarted in-memory broker: the checkpoint points beyond the topic's new end."""
    port = free_port()
    topic = f"test-loss-{uuid.uuid4().hex[:8]}"
    checkpoint, out = tmp_path / "checkpoint", tmp_path / "out"
    first = EmbeddedBroker(port).start()
    try:
        ensure_topic(first.bootstrap_servers, topic, 2)
        produce(first.bootstrap_servers, topic, make_records(300, 2))
        run_available_now(kafka_spark, first.bootstrap_servers, topic, checkpoint, out)
        resume = checkpoint_offsets(checkpoint)
        assert resume is not None and sum(resume.values()) == 300
    finally:
        first.stop()

    second = EmbeddedBroker(port).start()  # same address, memory storage lost
    try:
        bootstrap = second.bootstrap_servers
        ensure_topic(bootstrap, topic, 2)
        produce(bootstrap, topic, make_records(40, 2, first=300))
        end = end_offsets(bootstrap, topic)

        gaps = pending_data_loss(checkpoint, bootstrap, topic)
        assert [(g.partition, g.checkpoint, g.end, g.kind) for g in gaps] == [
            (p, resume[p], end[p], "reset") for p in (0, 1)
        ]
        with pytest.raises(KafkaDataLossError, match=f"topic '{topic}' partition 0"):
            resume_offsets(SourceOptions.parse(source_options(bootstrap, topic)), resume)

        with pytest.raises(Exception) as failure:
            run_available_now(kafka_spark, bootstrap, topic, checkpoint, out)
        message = str(failure.value)
        for text in (
            f"topic '{topic}' partition 0",
            f"offset {resume[0]}",
            f"end offset is {end[0]}",
        ):
            assert text in message, message
        assert "failOnDataLoss=false" in message
        assert checkpoint_offsets(checkpoint) == resume  # nothing was committed

        query = run_available_now(
            kafka_spark, bootstrap, topic, checkpoint, out, failOnDataLoss=False
        )
        assert sum(batch_sizes(query)) == 40
        assert checkpoint_offsets(checkpoint) == end
        assert pending_data_loss(checkpoint, bootstrap, topic) == []
        lake = kafka_spark.read.parquet(str(out))
        assert lake.count() == 340
    finally:
        second.stop()


def test_streaming_starting_offsets_latest_reads_only_new_records(
    kafka_spark, broker: EmbeddedBroker, topic: str, tmp_path: Path
) -> None:
    bootstrap = broker.bootstrap_servers
    ensure_topic(bootstrap, topic, 2)
    produce(bootstrap, topic, make_records(100, 2))
    checkpoint, out = tmp_path / "checkpoint", tmp_path / "out"
    query = run_available_now(
        kafka_spark, bootstrap, topic, checkpoint, out, startingOffsets="latest"
    )
    assert sum(batch_sizes(query)) == 0
    produce(bootstrap, topic, make_records(30, 2, first=100))
    query = run_available_now(
        kafka_spark, bootstrap, topic, checkpoint, out, startingOffsets="latest"
    )
    assert sum(batch_sizes(query)) == 30
