"""Producer rate: `lambda-arch produce` (generator + send) against a bare kafka-python loop.

On a fresh embedded broker, per round (median of --rounds):
- baseline: one KafkaProducer sending pre-generated payloads in a tight loop, then flush;
- product: `run_produce` as the CLI calls it (synthetic events generated on the fly, keyed,
  progress bar off), into its own topic.
Also prints the generator alone (records/s with no Kafka at all), so the cost is attributable.

    .venv/bin/python benchmarks/producer.py [--events 100000] [--rounds 3] [--partitions 8]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lambda_arch.common.config import Settings
from lambda_arch.ingest.generator import TrafficConfig, generate
from lambda_arch.ingest.producer import ProduceRequest, ensure_topic, make_producer, run_produce
from lambda_arch.runtime.broker import EmbeddedBroker, free_port

START = datetime(2026, 3, 1, tzinfo=UTC)


def generator_rate(events: int) -> float:
    began = time.perf_counter()
    for _ in itertools.islice(generate(TrafficConfig(seed=1, start=START)), events):
        pass
    return events / (time.perf_counter() - began)


def baseline_rate(bootstrap: str, topic: str, payloads: list[tuple[bytes | None, bytes]]) -> float:
    producer = make_producer(bootstrap)
    began = time.perf_counter()
    for key, value in payloads:
        producer.send(topic, key=key, value=value)
    producer.flush()
    seconds = time.perf_counter() - began
    producer.close()
    return len(payloads) / seconds


def product_rate(settings: Settings, topic: str, events: int) -> float:
    request = ProduceRequest(events=events, seed=1, start=START, topic=topic, progress=False)
    summary = run_produce(settings, request)
    assert summary.records == events, summary.describe()
    return summary.records / summary.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=8)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bench-producer-"))
    broker = EmbeddedBroker(free_port(), log_path=home / "broker.log")
    broker.start()
    try:
        settings = Settings(
            LAMBDA_ARCH_HOME=str(home),
            KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
            LAMBDA_ARCH_TOPIC_PARTITIONS=str(args.partitions),
        )
        payloads = [
            (r.key, r.value)
            for r in itertools.islice(generate(TrafficConfig(seed=1, start=START)), args.events)
        ]
        generator, baseline, product = [], [], []
        for round_no in range(args.rounds):
            generator.append(generator_rate(args.events))
            raw_topic = f"bench-raw-{round_no}"
            ensure_topic(broker.bootstrap_servers, raw_topic, args.partitions)
            baseline.append(baseline_rate(broker.bootstrap_servers, raw_topic, payloads))
            product.append(product_rate(settings, f"bench-produce-{round_no}", args.events))
    finally:
        broker.stop()

    def median(values: list[float]) -> float:
        return statistics.median(values)

    print(f"cores: {os.cpu_count()}  events per run: {args.events:,}  rounds: {args.rounds}")
    print(f"generator alone            : {median(generator):>9,.0f} events/s")
    print(f"kafka-python send loop     : {median(baseline):>9,.0f} events/s (baseline)")
    print(f"lambda-arch produce        : {median(product):>9,.0f} events/s")
    print(f"produce / baseline         : {median(product) / median(baseline):.2f}")


if __name__ == "__main__":
    main()
