"""Speed-layer rate: the whole layer (the counts query, which lands and counts every view, and
the sessions query) against a raw kafka-python read of the same topic, in the same run.

On a fresh embedded broker, produces N generated play events (default 1,000,000) to an
8-partition topic once (not timed in the figures), starts one SparkSession (JVM start timed
apart and excluded), then per repeat (fresh checkpoints, speed tables and lake database):
- raw: one kafka-python consumer, manual assignment of every partition, from the beginning
  to the end offsets, counting records and value bytes (no decoding); fetch sizes and CRC
  checking as the `lambda_kafka` source uses them;
- speed layer: `run_counts_speed` (parse, quarantine, land, late and repeated events out,
  every built-in count view: one read of the topic) and `run_sessions_speed`, one after the
  other in this process, as the speed job runs them, each over the whole topic;
- one more view: `run_counts_speed` again on a fresh home with one more declared view
  (EXTRA_VIEW): its extra time over the plain counts query is the marginal cost of a view.

Printed: each rate, the ratios to the raw read and the core count. Goals on 2 cores (issue 13):
whole layer / raw >= 0.35; counts (landing + views) / raw >= 0.45; one more view <= 10% more
time.

    .venv/bin/python benchmarks/speed_layer.py [--events 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kafka import KafkaConsumer, TopicPartition

from lambda_arch.common.config import Settings
from lambda_arch.ingest.generator import TrafficConfig, generate
from lambda_arch.ingest.kafka_offsets import end_offsets
from lambda_arch.ingest.kafka_options import DEFAULT_CHUNK_ROWS, _c_crc32c_available
from lambda_arch.ingest.producer import ensure_topic, make_producer
from lambda_arch.runtime.broker import EmbeddedBroker, free_port

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from lambda_arch.speed.streaming import StreamReport

TOPIC = "bench-speed-events"
WARMUP_TOPIC = "bench-speed-warmup"
START = datetime(2026, 3, 1, tzinfo=UTC)
QUERIES = ("counts", "sessions")
EXTRA = "counts+1 view"
EXTRA_VIEW = """
[views.title_by_device]
dimensions = ["title_id", "device"]
form = "top"
description = "Plays per title and device (a benchmark view)."
"""
# The fetch settings of lambda_kafka's read path (kafka_reader._read_range).
SOURCE_FETCH = {
    "max_partition_fetch_bytes": 8 * 1024 * 1024,
    "fetch_max_bytes": 64 * 1024 * 1024,
    "fetch_max_wait_ms": 100,
}


@dataclass(frozen=True)
class SpeedRun:
    """Seconds and micro-batches of the queries of one repeat (and of the counts query with
    one more view, EXTRA)."""

    seconds: dict[str, float]
    batches: dict[str, int]
    slowest_batch_s: dict[str, float]

    @property
    def total_s(self) -> float:
        return sum(self.seconds[name] for name in QUERIES)


def produce(bootstrap: str, topic: str, events: int, partitions: int) -> float:
    """Send `events` generated records (keyed by member) to a new topic; returns seconds."""
    ensure_topic(bootstrap, topic, partitions)
    started = time.perf_counter()
    producer = make_producer(bootstrap)
    send = producer.send
    for record in itertools.islice(generate(TrafficConfig(seed=1, start=START)), events):
        send(topic, key=record.key, value=record.value)
    producer.flush()
    producer.close()
    return time.perf_counter() - started


def raw_read(bootstrap: str, topic: str, check_crcs: bool) -> tuple[float, int, int]:
    """(seconds, records, value bytes) for one kafka-python consumer to read the whole topic."""
    ends = end_offsets(bootstrap, topic)  # Fetch high watermarks: exact on Tansu and Kafka
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        check_crcs=check_crcs,
        metrics_enabled=False,
        **SOURCE_FETCH,
    )
    try:
        started = time.perf_counter()
        tps = [TopicPartition(topic, p) for p in sorted(ends)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        left = {tp for tp in tps if ends[tp.partition] > 0}
        records = size = 0
        while left:
            for tp, batch in consumer.poll(timeout_ms=1000, max_records=DEFAULT_CHUNK_ROWS).items():
                records += len(batch)
                size += sum(len(r.value) for r in batch)
                if batch[-1].offset + 1 >= ends[tp.partition]:
                    left.discard(tp)
        return time.perf_counter() - started, records, size
    finally:
        consumer.close()


def speed_run(
    spark: SparkSession, settings: Settings, events: int, extra: Settings | None = None
) -> SpeedRun:
    """The counts and the sessions query one after another over the whole topic; with
    `extra` (a fresh home with one more declared view) the counts query once more."""
    from lambda_arch.speed.layer import run_counts_speed, run_sessions_speed

    runs = {
        "counts": lambda: run_counts_speed(spark, settings),
        "sessions": lambda: run_sessions_speed(spark, settings),
    }
    if extra is not None:
        runs[EXTRA] = lambda: run_counts_speed(spark, extra)
    seconds, batches, slowest = {}, {}, {}
    for name, run in runs.items():
        started = time.perf_counter()
        report: StreamReport = run()
        seconds[name] = time.perf_counter() - started
        if report.events_read != events:
            raise SystemExit(f"{name} read {report.events_read:,} events, expected {events:,}")
        batches[name] = report.micro_batches
        slowest[name] = max((b.duration_ms for b in report.batches), default=0) / 1000
    return SpeedRun(seconds, batches, slowest)


def run_settings(
    home: Path, bootstrap: str, topic: str, max_events: int | None, views_file: Path | None = None
) -> Settings:
    """Settings of one repeat: its own home (checkpoints, speed tables, lake folder and
    database)."""
    values = {
        "LAMBDA_ARCH_HOME": str(home),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "LAMBDA_ARCH_TOPIC": topic,
        "LAMBDA_ARCH_WAREHOUSE": str(home / "warehouse"),
        "LAMBDA_ARCH_DATABASE": f"bench_{home.name.replace('-', '_')}",
    }
    if views_file is not None:
        values["LAMBDA_ARCH_VIEWS_FILE"] = str(views_file)
    if max_events is not None:
        values["LAMBDA_ARCH_MAX_EVENTS_PER_BATCH"] = str(max_events)
    return Settings(**values)


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events to produce")
    parser.add_argument("--partitions", type=int, default=8, help="topic partitions")
    parser.add_argument("--repeats", type=int, default=3, help="measured repeats (median)")
    parser.add_argument("--master", default=None, help="Spark master (default: the settings')")
    parser.add_argument(
        "--max-events-per-batch",
        type=int,
        default=None,
        help="LAMBDA_ARCH_MAX_EVENTS_PER_BATCH (default: the settings' default)",
    )
    parser.add_argument(
        "--warmup-events",
        type=int,
        default=20_000,
        help="events of an unmeasured first pass of both queries (JIT, Python workers); 0 for none",
    )
    args = parser.parse_args()

    # No console progress bars between the figures.
    os.environ.setdefault(
        "PYSPARK_SUBMIT_ARGS", "--conf spark.ui.showConsoleProgress=false pyspark-shell"
    )
    from lambda_arch.runtime.spark import build_session

    base = Path(tempfile.mkdtemp(prefix="bench-speed-"))
    broker = EmbeddedBroker(free_port(), log_path=base / "broker.log")
    broker.start()
    try:
        bootstrap = broker.bootstrap_servers
        print(f"{load()} before producing", flush=True)
        seconds = produce(bootstrap, TOPIC, args.events, args.partitions)
        print(
            f"produced {args.events:,} generated events to {args.partitions} partitions in "
            f"{seconds:.1f} s ({args.events / seconds:,.0f}/s; not part of the figures)",
            flush=True,
        )
        if args.warmup_events:
            produce(bootstrap, WARMUP_TOPIC, args.warmup_events, args.partitions)

        session_settings = run_settings(base / "session", bootstrap, TOPIC, None)
        if args.master:
            session_settings = session_settings.model_copy(update={"spark_master": args.master})
        master = session_settings.spark_master
        started = time.perf_counter()
        spark = build_session(session_settings, app_name="bench-speed-layer")
        spark.sparkContext.setLogLevel("ERROR")
        jvm_s = time.perf_counter() - started
        print(f"SparkSession ({master}) started in {jvm_s:.1f} s (excluded)", flush=True)
        crcs = _c_crc32c_available()
        try:
            if args.warmup_events:
                warm = run_settings(base / "warmup", bootstrap, WARMUP_TOPIC, None)
                started = time.perf_counter()
                speed_run(spark, warm, args.warmup_events)
                print(
                    f"warm-up: {args.warmup_events:,} events through both queries in "
                    f"{time.perf_counter() - started:.1f} s (excluded)",
                    flush=True,
                )
            raws: list[tuple[float, int, int]] = []
            speeds: list[SpeedRun] = []
            max_events = args.max_events_per_batch
            for repeat in range(args.repeats):
                before = load()
                raws.append(raw_read(bootstrap, TOPIC, crcs))
                settings = run_settings(base / f"r{repeat}", bootstrap, TOPIC, max_events)
                views_file = base / "views.toml"
                views_file.write_text(EXTRA_VIEW, encoding="utf-8")
                extra = run_settings(
                    base / f"r{repeat}-extra", bootstrap, TOPIC, max_events, views_file
                )
                speeds.append(speed_run(spark, settings, args.events, extra))
                raw_s, records, size = raws[-1]
                if records != args.events:
                    raise SystemExit(f"raw read {records:,} records, expected {args.events:,}")
                run = speeds[-1]
                parts = "  ".join(
                    f"{name} {run.seconds[name]:.1f} s/{run.batches[name]} batches"
                    for name in (*QUERIES, EXTRA)
                )
                print(
                    f"repeat {repeat + 1}: {before} before; raw {raw_s:.1f} s "
                    f"({size / raw_s / 1e6:.1f} MB/s); {parts}; total {run.total_s:.1f} s; "
                    f"{load()} after",
                    flush=True,
                )
            per_batch = settings.max_events_per_batch
        finally:
            spark.stop()
    finally:
        broker.stop()
        shutil.rmtree(base, ignore_errors=True)

    n = args.events

    def rates(seconds: list[float], factor: int = 1) -> tuple[float, float, float]:
        values = [factor * n / s for s in seconds]
        return statistics.median(values), min(values), max(values)

    def line(label: str, figures: tuple[float, float, float]) -> str:
        median, low, high = figures
        return f"{label:<44}{median:>10,.0f} events/s  (min {low:,.0f}, max {high:,.0f})"

    raw = rates([r[0] for r in raws])
    whole = rates([s.total_s for s in speeds])
    counts = rates([s.seconds["counts"] for s in speeds])
    print()
    print(
        f"cores (os.cpu_count): {os.cpu_count()}  spark master: {master}  events: {n:,}  "
        f"partitions: {args.partitions}  repeats: {args.repeats}"
    )
    print(
        f"max events per batch: {per_batch:,}  raw read: fetch sizes of the source "
        f"(max_partition_fetch_bytes 8 MiB, fetch_max_bytes 64 MiB, fetch_max_wait_ms 100), "
        f"check_crcs={crcs}, poll max_records {DEFAULT_CHUNK_ROWS:,}"
    )
    print(line("raw kafka-python read (bytes off the broker)", raw))
    for name in (*QUERIES, EXTRA):
        print(line(f"  {name} query alone", rates([s.seconds[name] for s in speeds])))
    print(line("whole speed layer: N / (counts + sessions)", whole))
    print(f"ratio whole speed layer / raw: {whole[0] / raw[0]:.2f}  (goal >= 0.35)")
    print(f"ratio counts (landing + every view) / raw: {counts[0] / raw[0]:.2f}  (goal >= 0.45)")
    extra_share = statistics.median(s.seconds[EXTRA] / s.seconds["counts"] - 1 for s in speeds)
    print(
        f"one more declared view: {100 * extra_share:+.1f}% time of the counts query (goal <= 10%)"
    )


if __name__ == "__main__":
    main()
