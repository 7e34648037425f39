"""The real pipeline the serving tests run on: a topic of the test broker, the speed and batch
layers' own functions on the test SparkSession, and the traffic sent through them."""

from __future__ import annotations

import itertools
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

from lambda_arch.batch import layer as batch
from lambda_arch.batch.lake import Lake
from lambda_arch.common.config import Settings
from lambda_arch.ingest.generator import TrafficConfig, generate
from lambda_arch.ingest.producer import ensure_topic, make_producer
from lambda_arch.runtime.broker import EmbeddedBroker
from lambda_arch.serving.refresh import RefreshReport, refresh_view
from lambda_arch.serving.store import ServingStore
from lambda_arch.speed.layer import (
    run_landing,
    run_sessions_speed,
)
from tests.lambda_arch.serving.oracle import utc

START = datetime(2026, 3, 1, 21, 0, tzinfo=UTC)
END = datetime(2026, 3, 2, 4, 0, tzinfo=UTC)
DAY = date(2026, 3, 1)
MIDNIGHT = datetime(2026, 3, 2, tzinfo=UTC)  # the batch watermark once DAY is computed


def late_play(n: int, moment: datetime, title: int, country: str = "US") -> bytes:
    return json.dumps(
        {
            "event_id": f"late-{n}",
            "event_type": "play_start",
            "event_time": moment.isoformat().replace("+00:00", "Z"),
            "member_id": 900 + n % 3,
            "title_id": title,
            "country": country,
            "discovery_source": "search",
            "position_ms": 1000 * n,
        }
    ).encode()


# Late plays, sent after the speed layer's watermark has passed them: five on the computed day
# (the batch layer absorbs them once it recomputes the day), two after midnight (the speed
# layer never counts them; the day they fall on is not complete). One is sent twice.
LATE = [
    late_play(0, utc(22, 5, day=1), 3),
    late_play(1, utc(22, 6, day=1), 3, "BR"),
    late_play(2, utc(23, 30, day=1), 5),
    late_play(3, utc(23, 31, day=1), 5),
    late_play(4, utc(23, 59, day=1), 5, "BR"),
    late_play(5, utc(0, 20), 3),
    late_play(6, utc(1, 10), 5),
]
LATE_RECORDS = [*LATE, LATE[2]]


def traffic() -> list[bytes]:
    """On-time generated traffic (5% duplicates, 1% malformed) from 21:00 to 04:00."""
    config = TrafficConfig(
        seed=5,
        start=START,
        events_per_second=0.08,
        duplicate_rate=0.05,
        malformed_rate=0.01,
        members=30,
        titles=12,
    )
    return [
        record.value
        for record in itertools.takewhile(lambda r: r.emit_time < END, generate(config))
    ]


@dataclass
class Pipeline:
    spark: object
    settings: Settings
    lake: Lake
    store: ServingStore
    sent: list[bytes] = field(default_factory=list)

    def send(self, payloads: list[bytes]) -> None:
        producer = make_producer(self.settings.bootstrap_servers)
        for payload in payloads:
            producer.send(self.settings.topic, value=payload)
        producer.flush()
        producer.close()
        self.sent += payloads

    def speed_pass(self) -> None:
        # The counts query lands and counts every view; sessions are the second query.
        run_landing(self.spark, self.settings, self.lake)
        run_sessions_speed(self.spark, self.settings)

    def compute(self, day: date) -> None:
        batch.compute_day(self.spark, self.lake, day)

    def refresh(self) -> list[RefreshReport]:
        # Every view the store serves: the built-in count views (device_mix too) and sessions.
        return [
            refresh_view(self.settings, self.store, view, self.lake) for view in self.store.specs
        ]


def new_pipeline(
    spark: object, broker: EmbeddedBroker, home: Path, partitions: int = 3, **variables: str
) -> Pipeline:
    """An empty pipeline of its own: a new topic, LAMBDA_ARCH_HOME under `home`, a new database
    in the shared metastore, an empty store; `variables` override the settings below."""
    topic = f"test-{uuid.uuid4().hex[:12]}"
    ensure_topic(broker.bootstrap_servers, topic, partitions)
    defaults = dict(
        LAMBDA_ARCH_HOME=str(home / "home"),
        KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
        LAMBDA_ARCH_TOPIC=topic,
        LAMBDA_ARCH_TOPIC_PARTITIONS=str(partitions),
        # One micro-batch per pass: the oracle counts an event late only where the test makes
        # it late (sent after a pass), never because a micro-batch of the backpressure limit
        # ended earlier on one Kafka partition than on another (test_speed covers that case).
        LAMBDA_ARCH_MAX_EVENTS_PER_BATCH="100000",
        LAMBDA_ARCH_DATABASE=f"serving_{uuid.uuid4().hex[:10]}",
    )
    settings = Settings(**{**defaults, **variables})
    return Pipeline(
        spark, settings, Lake.from_settings(settings), ServingStore.from_settings(settings)
    )


def served_pipeline(spark: object, broker: EmbeddedBroker, home: Path) -> Pipeline:
    """A new pipeline whose store serves DAY from the batch layer and the rest from the speed
    layer: the on-time traffic landed by one speed pass, DAY computed, every view refreshed."""
    pipeline = new_pipeline(spark, broker, home)
    pipeline.send(traffic())
    pipeline.speed_pass()
    pipeline.compute(DAY)
    pipeline.refresh()
    return pipeline
