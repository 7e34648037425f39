"""Kafka lag: pure offset arithmetic, then against a real broker and a real Spark checkpoint."""

from __future__ import annotations

from pathlib import Path

from kafka import KafkaProducer

from lambda_arch.ingest.kafka_options import source_options
from lambda_arch.ingest.kafka_source import register_kafka_source
from lambda_arch.ingest.producer import ensure_topic
from lambda_arch.runtime.broker import EmbeddedBroker
from lambda_arch.speed.lag import QueryLag, TopicLag, measure_lag, partition_lag


def test_partition_lag_counts_from_the_checkpoint_or_the_earliest_offset() -> None:
    end = {0: 10, 1: 5, 2: 7}
    earliest = {0: 0, 1: 2, 2: 0}
    assert partition_lag(end, earliest, None) == {0: 10, 1: 3, 2: 7}
    assert partition_lag(end, earliest, {0: 4, 1: 1}) == {0: 6, 1: 3, 2: 7}
    # A checkpoint past the end (a reset broker without topic ids) is no negative lag: the run
    # reads (or fails on) the whole partition again.
    assert partition_lag(end, earliest, {0: 50, 1: 5, 2: 7}) == {0: 10, 1: 0, 2: 0}
    # A checkpoint of an older incarnation of the topic: everything on the broker is to read,
    # also where the new end has passed the old checkpoint (it was counted as 0 or 6 before).
    assert partition_lag(end, earliest, {0: 4, 1: 5, 2: 7}, renewed=True) == {0: 10, 1: 3, 2: 7}


def test_topic_lag_metadata_is_plain_numbers_per_partition() -> None:
    lag = TopicLag(
        "t",
        end={0: 10, 1: 4},
        earliest={0: 0, 1: 0},
        queries=[QueryLag("a", {0: 3, 1: 0}, True), QueryLag("b", {0: 1, 1: 4}, True)],
    )
    meta = lag.metadata()
    assert meta["lag_p0"] == 3 and meta["lag_p1"] == 4
    assert meta["lag_a"] == 3 and meta["lag_b"] == 5
    assert meta["max_lag"] == 5 and meta["end_offset_total"] == 14
    assert lag.has_new_data
    assert lag.signature == "0:10-1:4"
    idle = TopicLag("t", {0: 1}, {0: 0}, [QueryLag("a", {0: 0}, True)])
    assert not idle.has_new_data


def _produce(bootstrap: str, topic: str, count: int) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for i in range(count):
        producer.send(topic, key=str(i).encode(), value=b"{}")
    producer.flush()
    producer.close()


def test_measure_lag_follows_a_real_checkpoint(
    spark, broker: EmbeddedBroker, topic: str, tmp_path: Path
) -> None:
    ensure_topic(broker.bootstrap_servers, topic, 3)
    _produce(broker.bootstrap_servers, topic, 30)
    checkpoint = tmp_path / "checkpoint"
    checkpoints = {"copy": checkpoint}

    before = measure_lag(broker.bootstrap_servers, topic, checkpoints)
    assert before.queries[0].total == 30 and not before.queries[0].started

    register_kafka_source(spark)
    stream = (
        spark.readStream.format("lambda_kafka")
        .options(**source_options(broker.bootstrap_servers, topic))
        .load()
    )
    query = (
        stream.writeStream.format("parquet")
        .option("path", str(tmp_path / "out"))
        .option("checkpointLocation", str(checkpoint))
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()

    caught_up = measure_lag(broker.bootstrap_servers, topic, checkpoints)
    assert caught_up.queries[0].started and caught_up.queries[0].total == 0
    assert not caught_up.has_new_data

    _produce(broker.bootstrap_servers, topic, 7)
    behind = measure_lag(broker.bootstrap_servers, topic, checkpoints)
    assert behind.queries[0].total == 7
    assert sum(behind.end.values()) == 37
    assert behind.signature != caught_up.signature
