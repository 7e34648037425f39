"""Reading one Kafka partition's offset range into Arrow batches (kafka-python only, no Spark)."""

from __future__ import annotations

import pytest
from pyspark.sql.datasource import InputPartition

from lambda_arch.ingest.kafka_options import SourceOptions
from lambda_arch.ingest.kafka_reader import (
    ARROW_SCHEMA,
    KafkaInputPartition,
    plan_partitions,
    read_partition,
)
from lambda_arch.runtime.broker import EmbeddedBroker
from tests.kafka_helpers import Produced, consume_all, produce_mixed_topic


@pytest.fixture(scope="module")
def produced(broker: EmbeddedBroker) -> Produced:
    return produce_mixed_topic(broker.bootstrap_servers, "test-reader")


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


def _split(topic: str, partition: int, start: int, end: int) -> KafkaInputPartition:
    return KafkaInputPartition(topic, partition, start, end)


def test_plan_partitions_skips_empty_ranges() -> None:
    planned = plan_partitions("t", {0: 0, 1: 5, 2: 7}, {0: 3, 1: 5, 2: 9, 3: 4})
    assert [(s.partition, s.start, s.end) for s in planned] == [(0, 0, 3), (2, 7, 9)]
    assert repr(planned[0]) == "KafkaInputPartition(t/0 [0, 3))"


def test_batches_have_the_schema_spark_expects(broker: EmbeddedBroker, produced: Produced) -> None:
    options = SourceOptions.parse(
        {"bootstrap.servers": broker.bootstrap_servers, "topic": produced.topic, "chunkRows": "100"}
    )
    batches = list(read_partition(options, _split(produced.topic, 1, 0, 250)))
    # chunkRows groups whole fetched record batches: more than one Arrow batch, every row once.
    assert len(batches) > 1
    assert all(b.schema == ARROW_SCHEMA for b in batches)
    offsets = [o for b in batches for o in b.column("offset").to_pylist()]
    assert offsets == list(range(250))
    assert {p for b in batches for p in b.column("partition").to_pylist()} == {1}
