"""Kafka read rate: raw kafka-python against Spark through the `lambda_kafka` source.

Produces 200k play-event-sized records to 8 partitions on a fresh embedded broker, then measures
(median of 3) reading the whole topic with one plain kafka-python consumer and with a Spark batch
read of every column through the source. Goal: Spark >= 0.7 x raw.

    .venv/bin/python benchmarks/kafka_read.py [--records N] [--partitions P] [--master local[2]]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kafka import KafkaConsumer, TopicPartition

from lambda_arch.ingest.producer import ensure_topic, make_producer
from lambda_arch.runtime.broker import EmbeddedBroker, free_port

TOPIC = "bench-play-events"


def produce(bootstrap: str, records: int, partitions: int) -> None:
    ensure_topic(bootstrap, TOPIC, partitions)
    producer = make_producer(bootstrap)
    for i in range(records):
        event = {
            "event_id": f"e-{i:09d}",
            "event_type": "play_start" if i % 5 == 0 else "play_heartbeat",
            "event_time": 1_790_000_000_000 + i * 10,
            "member_id": i % 50_000,
            "title_id": i % 700,
            "country": "US",
            "device": "tv",
            "discovery_source": "trending_now",
            "position_ms": (i % 3600) * 1000,
        }
        producer.send(
            TOPIC,
            key=str(event["member_id"]).encode(),
            value=json.dumps(event, separators=(",", ":")).encode(),
        )
    producer.flush()
    producer.close()


def raw_read(bootstrap: str, records: int, check_crcs: bool) -> float:
    """Seconds for one kafka-python consumer to read every record (touching each value)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, check_crcs=check_crcs
    )
    try:
        started = time.perf_counter()
        tps = [TopicPartition(TOPIC, p) for p in sorted(consumer.partitions_for_topic(TOPIC))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        seen = size = 0
        while seen < records:
            for batch in consumer.poll(timeout_ms=1000, max_records=10_000).values():
                seen += len(batch)
                size += sum(len(r.value) for r in batch)
        return time.perf_counter() - started
    finally:
        consumer.close()


def spark_read(spark, bootstrap: str, records: int) -> float:
    """Seconds for a Spark batch read of all columns through the source."""
    started = time.perf_counter()
    row = (
        spark.read.format("lambda_kafka")
        .option("bootstrap.servers", bootstrap)
        .option("topic", TOPIC)
        .load()
        .selectExpr(
            "count(*) AS n",
            "sum(length(value)) AS v",
            "sum(length(key)) AS k",
            "max(offset) AS o",
            "max(timestamp) AS t",
            "count(DISTINCT topic, partition) AS p",
        )
        .collect()[0]
    )
    seconds = time.perf_counter() - started
    if row["n"] != records:
        raise SystemExit(f"Spark read {row['n']} records, expected {records}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--master", default="local[*]")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    # No console progress bars between the figures.
    os.environ.setdefault(
        "PYSPARK_SUBMIT_ARGS", "--conf spark.ui.showConsoleProgress=false pyspark-shell"
    )
    from lambda_arch.common.config import Settings
    from lambda_arch.ingest.kafka_options import _c_crc32c_available
    from lambda_arch.ingest.kafka_source import register_kafka_source
    from lambda_arch.runtime.spark import build_session

    with tempfile.TemporaryDirectory() as home, EmbeddedBroker(free_port()) as broker:
        bootstrap = broker.bootstrap_servers
        started = time.perf_counter()
        produce(bootstrap, args.records, args.partitions)
        print(
            f"produced {args.records:,} records to {args.partitions} partitions "
            f"in {time.perf_counter() - started:.1f} s"
        )

        spark = build_session(
            Settings(LAMBDA_ARCH_HOME=home, LAMBDA_ARCH_SPARK_MASTER=args.master),
            app_name="bench-kafka-read",
        )
        try:
            spark.sparkContext.setLogLevel("ERROR")
            register_kafka_source(spark)
            spark_read(spark, bootstrap, args.records)  # warm-up: JVM JIT and Python workers
            crcs = _c_crc32c_available()
            raw_default = [raw_read(bootstrap, args.records, True) for _ in range(args.repeats)]
            raw_same = [raw_read(bootstrap, args.records, crcs) for _ in range(args.repeats)]
            via_spark = [spark_read(spark, bootstrap, args.records) for _ in range(args.repeats)]
        finally:
            spark.stop()

    def rate(seconds: list[float]) -> float:
        return args.records / statistics.median(seconds)

    print(f"cpu_count: {os.cpu_count()}, spark master: {args.master}, C crc32c installed: {crcs}")
    print(
        f"raw kafka-python, default settings (check_crcs=True): {rate(raw_default):>10,.0f} rec/s"
    )
    print(
        f"raw kafka-python, the source's settings (check_crcs={crcs}): "
        f"{rate(raw_same):>10,.0f} rec/s"
    )
    print(f"spark via lambda_kafka (all columns):              {rate(via_spark):>10,.0f} rec/s")
    print(f"ratio spark / raw (same settings): {rate(via_spark) / rate(raw_same):.2f}")
    print(f"ratio spark / raw (default settings): {rate(via_spark) / rate(raw_default):.2f}")


if __name__ == "__main__":
    main()
