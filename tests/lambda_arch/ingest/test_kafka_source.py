"""The direct Kafka source (`lambda_kafka`) on a real Tansu broker and Spark (offsets: see
test_kafka_offsets)."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from lambda_arch.ingest.kafka_offsets import (
    KafkaDataLossError,
    end_offsets,
)
from lambda_arch.ingest.kafka_options import SourceOptions, source_options
from lambda_arch.ingest.kafka_source import register_kafka_source
from lambda_arch.ingest.producer import ensure_topic
from lambda_arch.ingest.source_offsets import (
    checkpoint_offsets,
    checkpoint_topic_id,
    pending_data_loss,
    resume_offsets,
)
from lambda_arch.runtime.broker import EmbeddedBroker, free_port
from tests.kafka_helpers import (
    BASE_MS,
    Produced,
    Sent,
    by_partition,
    make_records,
    produce,
    produce_mixed_topic,
)


@pytest.fixture(scope="module")
def produced(broker: EmbeddedBroker) -> Produced:
    return produce_mixed_topic(broker.bootstrap_servers, "test-src")


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


@pytest.mark.timeout(600)  # restarts a broker
def test_a_restarted_broker_is_a_new_incarnation_read_from_its_start(
    kafka_spark, tmp_path: Path
) -> None:
    """A restarted in-memory broker starts the topic again at offset 0 under a new topic id:
    the source reads it from its start, also once the new end has passed the checkpoint (the
    old code went on from the checkpoint there and skipped the first records)."""
    port = free_port()
    topic = f"test-loss-{uuid.uuid4().hex[:8]}"
    checkpoint, out = tmp_path / "checkpoint", tmp_path / "out"
    first = EmbeddedBroker(port).start()
    try:
        ensure_topic(first.bootstrap_servers, topic, 2)
        produce(first.bootstrap_servers, topic, make_records(300, 2))
        run_available_now(kafka_spark, first.bootstrap_servers, topic, checkpoint, out)
        resume = checkpoint_offsets(checkpoint)
        old_id = checkpoint_topic_id(checkpoint)
        assert resume is not None and sum(resume.values()) == 300
        assert old_id is not None  # Tansu reports topic ids (Metadata v10+)
    finally:
        first.stop()

    second = EmbeddedBroker(port).start()  # same address, memory storage lost
    try:
        bootstrap = second.bootstrap_servers
        ensure_topic(bootstrap, topic, 2)
        produce(bootstrap, topic, make_records(400, 2, first=300))
        end = end_offsets(bootstrap, topic)
        assert all(end[p] > resume[p] for p in (0, 1))  # the new end passed the checkpoint
        options = SourceOptions.parse(source_options(bootstrap, topic))
        # Offsets alone cannot tell: without the topic id they look like a live topic ...
        assert resume_offsets(options, resume) == (resume, {0: 0, 1: 0}, end)
        # ... with it, the new incarnation is read from its earliest offsets, and that is no gap.
        assert resume_offsets(options, resume, topic_id=old_id)[0] == {0: 0, 1: 0}
        assert pending_data_loss(checkpoint, bootstrap, topic) == []

        # failOnDataLoss keeps its default (true): nothing fell out of retention on this topic.
        query = run_available_now(kafka_spark, bootstrap, topic, checkpoint, out)
        assert sum(batch_sizes(query)) == 400
        assert checkpoint_offsets(checkpoint) == end
        assert checkpoint_topic_id(checkpoint) not in (None, old_id)
        seqs = [json.loads(r.value)["seq"] for r in kafka_spark.read.parquet(str(out)).collect()]
        assert sorted(seqs) == list(range(700))  # every record of both incarnations, once
        assert (
            sum(batch_sizes(run_available_now(kafka_spark, bootstrap, topic, checkpoint, out))) == 0
        )

        # A checkpoint beyond the end without a topic id (a broker without ids) is still a gap.
        with pytest.raises(KafkaDataLossError, match=f"topic '{topic}' partition 0"):
            resume_offsets(options, {0: 10_000, 1: 0})
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
