"""The speed layer under faults, each against a plain-Python expectation written here.

- backpressure: LAMBDA_ARCH_MAX_EVENTS_PER_BATCH caps every micro-batch; availableNow drains all;
- malformed records: quarantined with reason, raw payload, topic, partition and offset, while
  the stream and the views go on with the valid ones;
- session stitching on generated traffic against an independent stitcher (CONTRACT section 3);
- SIGKILL of a speed process in the middle of a micro-batch, then a rerun: no duplicate, no gap;
- a restarted in-memory broker (a new incarnation of the topic): read from its start, every
  post-restart event landed and counted, the records lost with the old one counted and alerted;
- a broker on s3:// storage restarted by kill -9: nothing lost, nothing counted twice.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pyarrow.dataset as pads
import pytest
from pyspark.sql import functions as F

from lambda_arch.batch.lake import (
    EVENTS_TABLE,
    QUARANTINE_TABLE,
    Lake,
    landed_prefix,
    read_play_events,
    read_quarantine,
)
from lambda_arch.common.config import Settings
from lambda_arch.ingest.generator import TrafficConfig, generate
from lambda_arch.ingest.incarnations import record_topic_ends
from lambda_arch.ingest.kafka_offsets import end_offsets
from lambda_arch.ingest.kafka_source import register_kafka_source
from lambda_arch.ingest.producer import ensure_topic, make_producer
from lambda_arch.ingest.schema import PlayEvent, Rejection, parse_payload
from lambda_arch.ingest.source_offsets import checkpoint_offsets, checkpoint_topic_id
from lambda_arch.quality.alerts import read_alerts
from lambda_arch.runtime.broker import EmbeddedBroker, free_port
from lambda_arch.speed.lag import measure_lag
from lambda_arch.speed.layer import (
    LANDING_STREAM,
    SpeedPaths,
    checkpoint_of,
    checkpoints_of,
    read_sessions_speed,
    read_trending_speed,
    read_view_speed,
    run_counts_speed,
    run_landing,
    run_sessions_speed,
    run_trending_speed,
)
from lambda_arch.speed.streaming import StreamReport
from lambda_arch.views.declarations import DEVICE_MIX, DISCOVERY, CountView, load_views_file
from tests.lambda_arch.common.test_storage import AWS_TEST_ENV, moto, s3_client  # noqa: F401

REPO = Path(__file__).resolve().parents[3]
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LATENESS = timedelta(minutes=10)  # the default allowed lateness (CONTRACT section 8)
SESSION_GAP = timedelta(minutes=30)  # CONTRACT section 3


# Plain-Python helpers ---------------------------------------------------------------------------


@dataclass
class Topic:
    """A test topic and every record sent to it: (partition, offset) -> value."""

    bootstrap: str
    name: str
    partitions: int
    records: dict[tuple[int, int], bytes | None] = field(default_factory=dict)

    def send(self, values: list[tuple[int, bytes | None]]) -> None:
        """Send (partition, value) pairs in order; offsets are counted here, per partition."""
        next_offset = Counter(p for p, _ in self.records)
        producer = make_producer(self.bootstrap)
        try:
            for partition, value in values:
                producer.send(
                    self.name, key=str(partition).encode(), value=value, partition=partition
                )
                self.records[(partition, next_offset[partition])] = value
                next_offset[partition] += 1
            producer.flush()
        finally:
            producer.close()
        assert end_offsets(self.bootstrap, self.name) == {
            p: next_offset[p] for p in range(self.partitions)
        }

    def parsed(self) -> dict[tuple[int, int], PlayEvent | Rejection]:
        return {position: parse_payload(value) for position, value in self.records.items()}

    def valid(self) -> dict[tuple[int, int], PlayEvent]:
        return {k: v for k, v in self.parsed().items() if isinstance(v, PlayEvent)}

    def rejected(self) -> dict[tuple[int, int], Rejection]:
        return {k: v for k, v in self.parsed().items() if isinstance(v, Rejection)}


def make_topic(bootstrap: str, partitions: int) -> Topic:
    name = f"test-faults-{uuid.uuid4().hex[:10]}"
    ensure_topic(bootstrap, name, partitions)
    return Topic(bootstrap, name, partitions)


def play(event_id: str, moment: datetime, **fields: Any) -> bytes:
    document = {
        "event_id": event_id,
        "event_type": "play_start",
        "event_time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "member_id": 7,
        "title_id": 42,
        "country": "US",
        **fields,
    }
    return json.dumps(document).encode()


def epoch_us(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def expected_trending(events: list[PlayEvent]) -> Counter:
    """Plays per (minute in epoch us, country, title_id): each play_start event_id once."""
    plays: dict[str, PlayEvent] = {}
    for e in events:
        if e.event_type == "play_start":
            plays.setdefault(e.event_id, e)
    return Counter(
        (epoch_us(e.event_time.replace(second=0, microsecond=0)), e.country, e.title_id)
        for e in plays.values()
    )


def trending_view(spark, paths: SpeedPaths) -> Counter:
    rows = (
        read_trending_speed(spark, paths)
        .select(F.unix_micros("minute").alias("m"), "country", "title_id", "plays")
        .collect()
    )
    view = Counter({(r["m"], r["country"], r["title_id"]): r["plays"] for r in rows})
    assert len(view) == len(rows), "a trending row appears twice"
    return view


def expected_view(view: CountView, events: list[PlayEvent]) -> Counter:
    """A count view in plain Python: events of its types per (minute, dimensions), each
    event_id once (the first copy)."""
    counted: dict[str, PlayEvent] = {}
    for e in events:
        if e.event_type in view.event_types:
            counted.setdefault(e.event_id, e)
    return Counter(
        (
            epoch_us(e.event_time.replace(second=0, microsecond=0)),
            *(getattr(e, d) for d in view.dimensions),
        )
        for e in counted.values()
    )


def view_counts(spark, paths: SpeedPaths, view: CountView) -> Counter:
    rows = (
        read_view_speed(spark, paths, view)
        .select(F.unix_micros("minute").alias("m"), *view.dimensions, "plays")
        .collect()
    )
    counts = Counter({(r["m"], *(r[d] for d in view.dimensions)): r["plays"] for r in rows})
    assert len(counts) == len(rows), f"a {view.name} row appears twice"
    return counts


# A view declared only in the SIGKILL test's home: two dimensions, non-default events.
KILL_VIEWS_TOML = """
[views.heartbeats]
dimensions = ["country", "device"]
events = ["play_heartbeat", "play_stop"]
form = "shares"
description = "Heartbeats and stops per device (a test view)."
"""


def speed_settings(
    home: Path, topic: Topic, max_events: int, database: str | None = None
) -> Settings:
    return Settings(
        LAMBDA_ARCH_HOME=str(home),
        KAFKA_BOOTSTRAP_SERVERS=topic.bootstrap,
        LAMBDA_ARCH_TOPIC=topic.name,
        LAMBDA_ARCH_MAX_EVENTS_PER_BATCH=max_events,
        # The counts query lands into the home's lake: a database of its own in the shared session.
        LAMBDA_ARCH_DATABASE=database or f"speed_{uuid.uuid4().hex[:10]}",
    )


def batch_of(report: StreamReport, partition: int, offset: int) -> int:
    """The micro-batch of a run that read (partition, offset)."""
    for batch in report.batches:
        start, end = batch.start_offsets or {}, batch.end_offsets or {}
        if start.get(partition, 0) <= offset < end.get(partition, 0):
            return batch.batch_id
    raise AssertionError(f"no batch of {report.name} read {partition}/{offset}")


# 1. Backpressure --------------------------------------------------------------------------------


def test_max_events_per_batch_caps_every_micro_batch_and_available_now_drains_all(
    spark, broker: EmbeddedBroker, env_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap = 40
    topic = make_topic(broker.bootstrap_servers, 3)
    # 130 play starts over about a minute (nothing can be late), partitions uneven 3:1:1.
    values = [
        (
            (0, 0, 0, 1, 2)[i % 5],
            play(f"bp-{i}", START + timedelta(milliseconds=500 * i), title_id=i % 7,
                 country=("US", "BR", "DE")[i % 3]),
        )
        for i in range(130)
    ]  # fmt: skip
    topic.send(values)
    monkeypatch.setenv("LAMBDA_ARCH_MAX_EVENTS_PER_BATCH", str(cap))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", topic.bootstrap)
    monkeypatch.setenv("LAMBDA_ARCH_TOPIC", topic.name)
    monkeypatch.setenv("LAMBDA_ARCH_DATABASE", f"cap_{uuid.uuid4().hex[:10]}")
    settings = Settings.from_env()
    assert settings.max_events_per_batch == cap
    paths = SpeedPaths.from_settings(settings)

    report = run_trending_speed(spark, settings, paths)

    sizes = [b.input_rows for b in report.batches if b.input_rows]
    # Admission control reads exactly the cap while more is waiting, then the rest.
    assert sizes == [cap] * (130 // cap) + [130 % cap], sizes
    assert max(sizes) <= cap and report.events_read == 130
    ends = end_offsets(topic.bootstrap, topic.name)
    assert ends == {0: 78, 1: 26, 2: 26}
    previous: dict[int, int] = dict.fromkeys(ends, 0)
    for batch in report.batches:
        start, end = batch.start_offsets or dict.fromkeys(ends, 0), batch.end_offsets or {}
        assert start == previous, (batch.batch_id, start, previous)  # no gap, no overlap
        assert sum(end[p] - start[p] for p in end) == batch.input_rows
        previous = end
    assert previous == ends == report.offsets  # drained: everything there at the start
    assert checkpoint_offsets(checkpoint_of(settings, "trending_speed")) == ends
    assert trending_view(spark, paths) == expected_trending(list(topic.valid().values()))


# 2. Malformed records ---------------------------------------------------------------------------


def malformed_round(r: int) -> list[bytes | None]:
    """Bad payloads of every kind, and a few good ones that look odd but are valid."""
    t = START + timedelta(minutes=r)
    good = dict(member_id=r, title_id=100 + r)
    return [
        b'{"event_id": "x", "event_type": ',  # bad JSON (cut off)
        b"\xff\xfe" + play(f"utf-{r}", t),  # not UTF-8
        json.dumps({"event_id": f"nt-{r}", "event_type": "play_start", "member_id": 1}).encode(),
        play(f"enum-{r}", t, device="toaster"),  # bad enum
        play(f"type-{r}", t, event_type="play_pause"),  # bad enum
        play(f"src-{r}", t, discovery_source="billboards"),  # bad enum
        play(f"mstr-{r}", t, member_id="7"),  # wrong type
        play(f"tflt-{r}", t, title_id=1.5),  # wrong type
        play(f"cnum-{r}", t, country=5),  # wrong type
        play(f"tbool-{r}", t, event_time=True),  # wrong type
        play(f"time-{r}", t, event_time="2026-13-01T00:00:00Z"),  # unparseable time
        play(f"neg-{r}", t, position_ms=-1),  # out of range
        play(f"lc-{r}", t, country="us"),  # not upper case
        b"[1, 2, 3]",  # not an object
        b"",  # empty
        None,  # a tombstone (null value)
        # Valid, though unusual: unknown extra field, epoch milliseconds, an explicit offset.
        play(f"extra-{r}", t, extra={"nested": [1]}, **good),
        play(f"ms-{r}", t, event_time=epoch_us(t) // 1000 + 1, **good),
        play(f"off-{r}", t, event_time=(t + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+02:00")),
    ]  # fmt: skip


def test_malformed_records_are_quarantined_with_reasons_while_the_stream_goes_on(
    spark, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    topic = make_topic(broker.bootstrap_servers, 2)
    values: list[tuple[int, bytes | None]] = []
    for r in range(3):
        bad = malformed_round(r)
        goods = [
            play(f"g{r}-{i}", START + timedelta(minutes=r, seconds=i), title_id=i % 4,
                 country=("US", "FR")[i % 2], event_type=("play_start", "play_heartbeat")[i % 3 == 2])
            for i in range(2 * len(bad))
        ]  # fmt: skip
        mixed = [v for pair in itertools.zip_longest(goods, bad, fillvalue=b"-") for v in pair]
        values += [(i % 2, v) for i, v in enumerate(mixed) if v != b"-"]
    topic.send(values)
    valid, rejected = topic.valid(), topic.rejected()
    assert len(rejected) == 3 * 16 and len(valid) == len(topic.records) - 3 * 16
    assert len({r.reason for r in rejected.values()}) >= 12  # a variety of reasons
    settings = speed_settings(tmp_path / "home", topic, max_events=60)
    lake = Lake.from_settings(settings)

    landing = run_landing(spark, settings, lake)

    assert landing.observed == {
        "landing.records": len(topic.records),
        "landing.valid": len(valid),
        "landing.quarantined": len(rejected),
        "landing.future": 0,  # of the quarantined: event_time in the future
    }
    # The bad records came in many different micro-batches, and every batch had good ones too.
    assert landing.events_read == len(topic.records) and landing.micro_batches >= 3
    bad_batches = {batch_of(landing, p, o) for p, o in rejected}
    assert len(bad_batches) >= 3, bad_batches
    assert bad_batches <= {batch_of(landing, p, o) for p, o in valid}

    quarantine = {
        (row.partition, row.offset): row
        for row in read_quarantine(spark, lake)
        .select("payload", "reason", "topic", "partition", "offset")
        .collect()
    }
    assert set(quarantine) == set(rejected)
    for position, rejection in rejected.items():
        row = quarantine[position]
        raw = topic.records[position]
        got = None if row.payload is None else bytes(row.payload)
        assert (got, row.reason, row.topic) == (raw, rejection.reason, topic.name), position

    landed = read_play_events(spark, lake).select(
        "event_id", "event_type", F.unix_micros("event_time").alias("t"), "member_id",
        "title_id", "country", "device", "discovery_source", "position_ms", "topic",
        "partition", "offset",
    ).collect()  # fmt: skip
    assert len(landed) == len(valid)
    assert {
        (r.partition, r.offset): (
            r.event_id, r.event_type, r.t, r.member_id, r.title_id, r.country, r.device,
            r.discovery_source, r.position_ms, r.topic,
        )
        for r in landed
    } == {
        position: (
            e.event_id, e.event_type, epoch_us(e.event_time), e.member_id, e.title_id, e.country,
            e.device, e.discovery_source, e.position_ms, topic.name,
        )
        for position, e in valid.items()
    }  # fmt: skip

    # The same run counted: past every bad record, exactly the valid plays.
    paths = SpeedPaths.from_settings(settings)
    assert landing.late_events == 0
    view = trending_view(spark, paths)
    assert view == expected_trending(list(valid.values()))
    assert sum(view.values()) == sum(e.event_type == "play_start" for e in valid.values()) > 50


# 3. Sessions against an independent stitcher -----------------------------------------------------


@dataclass(frozen=True)
class Session:
    member_id: int
    title_id: int
    start_us: int
    end_us: int
    events: int
    watched_ms: int


def oracle_sessions(events: list[PlayEvent]) -> list[Session]:
    """CONTRACT section 3, directly: per (member, title), events by time; a gap of 30 minutes
    or more starts a new session; watched_ms = max - min position (0 without positions)."""
    ordered = sorted(events, key=lambda e: (e.member_id, e.title_id, e.event_time))
    sessions: list[Session] = []
    for (member, title), group in itertools.groupby(
        ordered, key=lambda e: (e.member_id, e.title_id)
    ):
        run: list[PlayEvent] = []
        for e in group:
            if run and e.event_time - run[-1].event_time >= SESSION_GAP:
                sessions.append(_close(member, title, run))
                run = []
            run.append(e)
        sessions.append(_close(member, title, run))
    return sessions


def _close(member: int, title: int, run: list[PlayEvent]) -> Session:
    positions = [e.position_ms for e in run if e.position_ms is not None]
    return Session(
        member,
        title,
        epoch_us(run[0].event_time),
        epoch_us(run[-1].event_time),
        len(run),
        max(positions) - min(positions) if positions else 0,
    )


def closed_by(sessions: list[Session], watermark: datetime) -> set[Session]:
    """Sessions no accepted event can still change: any event that would extend one is older
    than the watermark (last event + gap <= watermark) and is dropped as late."""
    limit = epoch_us(watermark)
    gap = epoch_us(datetime(1970, 1, 1, tzinfo=UTC) + SESSION_GAP)
    for s in sessions:  # Spark's boundary differs by < 1 ms: stay clear of it
        assert abs(s.end_us + gap - limit) > 1_000, s
    return {s for s in sessions if s.end_us + gap <= limit}


def assert_nothing_late(values: list[bytes | None]) -> datetime:
    """Check that no first copy of an event is older than the latest event time before it minus
    the lateness (the watermark is never ahead of that, so no such event is dropped as late;
    only re-sent copies may be); returns the final watermark."""
    newest: datetime | None = None
    seen: set[str] = set()
    for value in values:
        event = parse_payload(value)
        if not isinstance(event, PlayEvent):
            continue
        if event.event_id not in seen:
            seen.add(event.event_id)
            assert newest is None or event.event_time >= newest - LATENESS, event
        newest = max(newest or event.event_time, event.event_time)
    assert newest is not None
    return newest - LATENESS


def test_sessions_speed_equals_an_independent_stitcher_on_generated_traffic(
    spark, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    config = TrafficConfig(
        seed=23,
        start=START,
        events_per_second=0.4,  # 3,000 records: about 3.5 hours of event time
        duplicate_rate=0.05,
        malformed_rate=0.03,
        members=6,
        titles=8,
    )
    generated = list(itertools.islice(generate(config), 3000))
    # One partition: the read order is the produced order, so the test can tell what is late.
    topic = make_topic(broker.bootstrap_servers, 1)
    settings = speed_settings(tmp_path / "home", topic, max_events=700)
    paths = SpeedPaths(str(tmp_path / "speed"))
    got: set[Session] = set()
    first_ids: dict[str, PlayEvent] = {}

    for half in (generated[:1700], generated[1700:]):
        topic.send([(0, r.value) for r in half])
        for record in half:
            event = parse_payload(record.value)
            if isinstance(event, PlayEvent):
                first_ids.setdefault(event.event_id, event)
        report = run_sessions_speed(spark, settings, paths)
        assert report.events_read == len(half) and report.micro_batches >= 2

        watermark = assert_nothing_late(list(topic.records.values()))
        assert report.watermark == watermark

        expected = closed_by(oracle_sessions(list(first_ids.values())), watermark)
        rows = read_sessions_speed(spark, paths).select(
            "member_id", "title_id", F.unix_micros("session_start").alias("s"),
            F.unix_micros("session_end").alias("e"), "events", "watched_ms",
        ).collect()  # fmt: skip
        emitted = [Session(*r) for r in rows]
        assert len(emitted) == len(set(emitted)), "a session was emitted twice"
        new = set(emitted) - got
        got = set(emitted)
        assert got == expected, (sorted(got - expected)[:5], sorted(expected - got)[:5])
        assert new, "this run closed no session: the test would prove nothing"

    # Sessions still open at the end (last event within 40 minutes of the newest) were not
    # emitted, and there were some of both kinds.
    everything = oracle_sessions(list(first_ids.values()))
    assert 30 <= len(got) < len(everything)


# 4. SIGKILL in the middle of a micro-batch -------------------------------------------------------

KILL_MAX_EVENTS = 100  # about six micro-batches of the 525 records
CHILD_CODE = (
    "import sys; from tests.lambda_arch.speed.test_layer_faults import child_main; "
    "child_main(sys.argv[1:])"
)


def child_main(argv: list[str]) -> None:
    """The speed process of the SIGKILL test: the counts query (landing and every count view);
    writes a JSON summary to argv[0] when it is done."""
    from lambda_arch.runtime.spark import build_session

    out = Path(argv[0])
    settings = Settings.from_env()
    spark = build_session(settings, app_name="speed-faults-child")
    register_kafka_source(spark)  # once, before the threads
    lake = Lake.from_settings(settings)
    paths = SpeedPaths.from_settings(settings)
    reports: dict[str, StreamReport] = {}
    errors: dict[str, str] = {}

    def run(name: str, query: Any) -> None:
        try:
            reports[name] = query()
        except BaseException:
            errors[name] = traceback.format_exc()

    run("counts", lambda: run_counts_speed(spark, settings, paths))
    summary: dict[str, Any] = {"errors": errors, "reports": {}}
    for name, report in reports.items():
        summary["reports"][name] = {
            "first_batch": report.batches[0].batch_id if report.batches else None,
            "start_offsets": {str(p): o for p, o in report.start_offsets.items()},
            "offsets": {str(p): o for p, o in report.offsets.items()},
            "events_read": report.events_read,
            "late_events": report.late_events,
        }
    if not errors:
        for key, frame in (("events", read_play_events), ("quarantine", read_quarantine)):
            rows = frame(spark, lake).select("partition", "offset").collect()
            summary[key] = [[r.partition, r.offset] for r in rows]
    out.write_text(json.dumps(summary))
    spark.stop()
    sys.exit(1 if errors else 0)


def start_child(
    home: Path, topic: Topic, out: Path, views: Path, database: str
) -> subprocess.Popen:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LAMBDA_ARCH_") and k not in ("KAFKA_BOOTSTRAP_SERVERS", "SPARK_REMOTE")
    }
    env.update(
        LAMBDA_ARCH_HOME=str(home),
        KAFKA_BOOTSTRAP_SERVERS=topic.bootstrap,
        LAMBDA_ARCH_TOPIC=topic.name,
        LAMBDA_ARCH_MAX_EVENTS_PER_BATCH=str(KILL_MAX_EVENTS),
        LAMBDA_ARCH_SPARK_MASTER="local[2]",
        LAMBDA_ARCH_SHUFFLE_PARTITIONS="2",
        LAMBDA_ARCH_VIEWS_FILE=str(views),
        LAMBDA_ARCH_DATABASE=database,
        PYTHONPATH=str(REPO),
    )
    with open(out.with_suffix(".log"), "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-c", CHILD_CODE, str(out)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the JVM and Python workers too
        )


DEDUP_KINDS = ("batch_id", "snapshot")


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the child, its process group and every descendant seen (by PID)."""
    try:
        family = [c.pid for c in psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for kill, target in ((os.killpg, process.pid), *((os.kill, pid) for pid in family)):
        with contextlib.suppress(ProcessLookupError):
            kill(target, signal.SIGKILL)
    process.wait(30)


def batch_ids(checkpoint: Path, folder: str) -> list[int]:
    path = checkpoint / folder
    return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit()) if path.is_dir() else []


def in_flight(checkpoint: Path) -> int | None:
    """The batch planned (offsets/N) but not committed (no commits/N), if any."""
    offsets, commits = batch_ids(checkpoint, "offsets"), batch_ids(checkpoint, "commits")
    if offsets and offsets[-1] not in commits:
        return offsets[-1]
    return None


def log_tail(out: Path) -> str:
    path = out.with_suffix(".log")
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def staging_of(lake: Lake, batch_id: int) -> Path:
    """Where write_landing_batch stages a batch's files before publishing them."""
    tag = landed_prefix(batch_id, LANDING_STREAM).rstrip("-")
    return Path(lake.location(EVENTS_TABLE)) / "_staging" / tag


def lake_positions(table_dir: Path) -> Counter:
    """(partition, offset) of every row in a lake table's visible files (hidden folders such as
    _staging are skipped, as Spark and Hive skip them)."""
    dataset = pads.dataset(str(table_dir), format="parquet", partitioning="hive")
    table = dataset.to_table(columns=["partition", "offset"])
    return Counter(
        zip(table.column("partition").to_pylist(), table.column("offset").to_pylist(), strict=True)
    )


@pytest.mark.slow
@pytest.mark.timeout(600)  # two Spark processes of its own
def test_sigkill_mid_micro_batch_then_rerun_has_no_duplicate_and_no_gap(
    spark, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    topic = make_topic(broker.bootstrap_servers, 3)
    config = TrafficConfig(
        seed=5, start=START, events_per_second=10.0, duplicate_rate=0.05, malformed_rate=0.04,
        members=40, titles=12,
    )  # fmt: skip
    generated = list(itertools.islice(generate(config), 420))
    # Extra plays every few records, so that every micro-batch changes the trending view.
    values: list[tuple[int, bytes | None]] = []
    for i, record in enumerate(generated):
        values.append((i % 3, record.value))
        if i % 4 == 0:
            moment = START + timedelta(seconds=i // 6)
            values.append(((i // 4) % 3, play(f"k-{i}", moment, title_id=i % 9, member_id=i)))
    topic.send(values)
    valid, rejected = topic.valid(), topic.rejected()
    times = [e.event_time for e in valid.values()]
    assert max(times) - min(times) < LATENESS  # nothing can be late: the view is a plain count
    home = tmp_path / "home"
    settings = speed_settings(home, topic, KILL_MAX_EVENTS)
    lake = Lake.from_settings(settings)
    checkpoint = home / "checkpoints" / "counts"
    dedup_root = Path(SpeedPaths.from_settings(settings).dedup(settings).root)
    views = tmp_path / "views.toml"
    views.write_text(KILL_VIEWS_TOML, encoding="utf-8")

    # Run 1: killed with a micro-batch in flight (after 1+ committed ones) whose landing is
    # published and whose dedup state is written, before its view deltas and its commit: the
    # retry must not take its own ids for repeats.
    first = start_child(home, topic, tmp_path / "first.json", views, settings.database)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert first.poll() is None, (
                f"the speed process ended early:\n{log_tail(tmp_path / 'first.json')}"
            )
            assert time.monotonic() < deadline, "no micro-batch in flight within 240 s"
            batch = in_flight(checkpoint)
            if batch and any((dedup_root / f"{k}={batch}").is_dir() for k in DEDUP_KINDS):
                kill_tree(first)
                break
            time.sleep(0.005)
    finally:
        if first.poll() is None:
            kill_tree(first)
    assert first.returncode == -signal.SIGKILL
    # The state it died in: a planned batch without a commit, its dedup state written.
    offsets, commits = batch_ids(checkpoint, "offsets"), batch_ids(checkpoint, "commits")
    assert offsets[-1] == commits[-1] + 1 >= 1, (offsets, commits)
    killed, resume = offsets[-1], checkpoint_offsets(checkpoint)
    ends = end_offsets(topic.bootstrap, topic.name)
    assert resume and sum(resume.values()) < sum(ends.values())

    # Run 2: a new process on the same home runs the query to completion.
    second = start_child(home, topic, tmp_path / "second.json", views, settings.database)
    try:
        second.wait(300)
    finally:
        if second.poll() is None:
            kill_tree(second)
    summary = json.loads((tmp_path / "second.json").read_text()) if second.returncode == 0 else {}
    assert second.returncode == 0, f"{summary}\n{log_tail(tmp_path / 'second.json')}"
    report = summary["reports"]["counts"]
    # It resumed with the batch that was in flight, from the last committed offsets.
    assert report["first_batch"] == killed, report
    assert report["start_offsets"] == {str(p): o for p, o in resume.items()}
    assert report["offsets"] == {str(p): o for p, o in ends.items()}
    assert report["late_events"] == 0

    # The lake holds every valid record exactly once and every rejected one exactly once, in
    # the catalog (as the rerun's session sees it) and in the files.
    want_events, want_quarantine = Counter(list(valid)), Counter(list(rejected))
    assert Counter(tuple(p) for p in summary["events"]) == want_events
    assert Counter(tuple(p) for p in summary["quarantine"]) == want_quarantine
    assert not staging_of(lake, killed).exists()  # the retry cleaned up
    assert lake_positions(Path(lake.location(EVENTS_TABLE))) == want_events
    assert lake_positions(Path(lake.location(QUARANTINE_TABLE))) == want_quarantine

    # Every count view counts every event once: the retried batch replaced its own deltas.
    paths = SpeedPaths.from_settings(settings)
    assert trending_view(spark, paths) == expected_trending(list(valid.values()))
    (declared,) = load_views_file(views)
    for view in (DISCOVERY, DEVICE_MIX, declared):
        want = expected_view(view, list(valid.values()))
        assert view_counts(spark, paths, view) == want and sum(want.values()) > 0, view.name


# 5. A new incarnation of the topic (a restarted memory broker) ---------------------------------


@pytest.mark.timeout(600)  # restarts brokers; several speed runs
def test_a_restarted_memory_broker_is_read_from_its_start_and_its_loss_counted(
    spark, tmp_path: Path
) -> None:
    """Issue 12: after a restart of a memory broker the topic starts again at offset 0 under a
    new topic id. Once the new end passes the old checkpoints, the old code went on from them and
    never landed or counted the first records of every partition. Now every post-restart event
    is landed and counted, and what the old broker took with it is counted exactly."""
    port = free_port()
    name = f"test-loss-{uuid.uuid4().hex[:8]}"

    first = EmbeddedBroker(port, log_path=tmp_path / "broker-1.log").start()
    try:
        ensure_topic(first.bootstrap_servers, name, 2)
        topic = Topic(first.bootstrap_servers, name, 2)
        landed = [(i % 2, play(f"a{i}", START + timedelta(seconds=i), title_id=i % 3))
                  for i in range(120)]  # fmt: skip
        topic.send(landed)
        settings = speed_settings(tmp_path / "home", topic, max_events=1000)
        lake, paths = Lake.from_settings(settings), SpeedPaths.from_settings(settings)
        assert settings.fail_on_data_loss  # the default: retention gaps still fail runs
        assert run_trending_speed(spark, settings, paths).events_read == 120
        old_checkpoint = checkpoint_offsets(checkpoint_of(settings, "landing"))
        # Produced, acknowledged, never landed: lost with the broker. `up` records the end
        # offsets every few seconds and, marked final, as it stops its broker.
        record_topic_ends(settings.topic_ends_file, topic.bootstrap, name)
        topic.send([(i % 2, play(f"a{i}", START + timedelta(seconds=i))) for i in range(120, 160)])
        record_topic_ends(settings.topic_ends_file, topic.bootstrap, name, final=True)
    finally:
        first.stop()
    # The loss, recomputed from what was produced: per partition, produced - landed.
    produced = Counter(p for p, _ in topic.records)
    want_lost = {p: produced[p] - old_checkpoint[p] for p in (0, 1)}
    assert want_lost == {0: 20, 1: 20}

    second = EmbeddedBroker(port, log_path=tmp_path / "broker-2.log").start()  # memory lost
    try:
        ensure_topic(second.bootstrap_servers, name, 2)
        restarted = Topic(second.bootstrap_servers, name, 2)
        restarted.send(
            [(i % 2, play(f"b{i}", START + timedelta(minutes=3, seconds=i))) for i in range(200)]
        )
        end = end_offsets(second.bootstrap_servers, name)
        assert all(end[p] > old_checkpoint[p] for p in (0, 1))  # the new end passed the old
        lag = measure_lag(second.bootstrap_servers, name, checkpoints_of(settings))
        assert {q.query: q.total for q in lag.queries if q.started} == {"counts": 200}

        # One query lands and counts.
        trending = run_trending_speed(spark, settings, paths)
        for report in (trending,):
            assert report.events_read == 200
            loss = report.incarnation_loss
            assert loss is not None and loss.lost == want_lost, report.name
            assert (loss.total, loss.precision, loss.incarnations) == (40, "exact", 1)
            metadata = report.metadata()
            assert metadata["records_lost"] == 40 and metadata["records_lost_p0"] == 20
            assert metadata["records_lost_precision"] == "exact"
        # Every event of both incarnations that was landed before the restart or produced
        # after it is in the lake once, and counted once by the view.
        want = {f"a{i}" for i in range(120)} | {f"b{i}" for i in range(200)}
        events = [r.event_id for r in read_play_events(spark, lake).select("event_id").collect()]
        assert sorted(events) == sorted(want)
        valid = [v for k, v in topic.valid().items() if k in {(i % 2, i // 2) for i in range(120)}]
        assert trending_view(spark, paths) == expected_trending(
            valid + list(restarted.valid().values())
        )
        # One alert: records never landed are lost to both layers.
        alerts = read_alerts(settings.logs_dir / "alerts.jsonl")
        assert [(a["kind"], a["severity"], a["metadata"]["records_lost"]) for a in alerts] == [
            ("data_lost", "ERROR", 40)
        ]
        assert "40 records" in alerts[0]["message"] and name in alerts[0]["message"]
        # The next runs are on the new incarnation: nothing lost, nothing alerted again.
        assert run_landing(spark, settings, lake).incarnation_loss is None
        assert len(read_alerts(settings.logs_dir / "alerts.jsonl")) == 1
    finally:
        second.stop()


# 6. A durable broker: Tansu on s3:// storage ------------------------------------------------------


@pytest.mark.timeout(600)  # restarts brokers; several speed runs
def test_a_broker_on_s3_storage_restarted_by_kill_9_loses_nothing_and_counts_nothing_twice(
    spark,
    moto: str,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """LAMBDA_ARCH_BROKER_STORAGE=s3://BUCKET/ (here a moto_server bucket): the broker's kill -9
    and restart keep the topic, its id and its offsets; the speed runs go on exactly."""
    bucket = f"broker-{uuid.uuid4().hex[:8]}"
    s3_client(moto).create_bucket(Bucket=bucket)
    for variable in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(variable)  # only this moto_server's endpoint
    for variable, value in {
        **AWS_TEST_ENV,
        "AWS_ENDPOINT": moto,
        "AWS_ALLOW_HTTP": "true",
        "LAMBDA_ARCH_BROKER_STORAGE": f"s3://{bucket}/",
    }.items():
        monkeypatch.setenv(variable, value)
    storage = Settings().broker_storage  # as `up` reads it
    port = free_port()
    name = f"test-s3-{uuid.uuid4().hex[:8]}"

    first = EmbeddedBroker(port, storage, log_path=tmp_path / "broker-1.log").start()
    try:
        ensure_topic(first.bootstrap_servers, name, 2)
        topic = Topic(first.bootstrap_servers, name, 2)
        topic.send([(i % 2, play(f"s{i}", START + timedelta(seconds=i))) for i in range(100)])
        settings = speed_settings(tmp_path / "home", topic, max_events=500)
        lake, paths = Lake.from_settings(settings), SpeedPaths.from_settings(settings)
        assert run_landing(spark, settings, lake).events_read == 100
        topic.send([(i % 2, play(f"s{i}", START + timedelta(seconds=i))) for i in range(100, 160)])
        old_id = checkpoint_topic_id(checkpoint_of(settings, "landing"))
    finally:
        assert first.process is not None
        first.process.kill()  # no clean shutdown
        first.process.wait()

    second = EmbeddedBroker(port, storage, log_path=tmp_path / "broker-2.log").start()
    try:
        ensure_topic(second.bootstrap_servers, name, 2)  # exists: a no-op
        assert end_offsets(second.bootstrap_servers, name) == {0: 80, 1: 80}
        topic.send([(i % 2, play(f"s{i}", START + timedelta(seconds=i))) for i in range(160, 200)])
        report = run_landing(spark, settings, lake)
        assert report.events_read == 100 and report.incarnation_loss is None
        assert checkpoint_topic_id(checkpoint_of(settings, "landing")) == old_id
        events = [r.event_id for r in read_play_events(spark, lake).select("event_id").collect()]
        assert sorted(events) == sorted(f"s{i}" for i in range(200))
        assert trending_view(spark, paths) == expected_trending(list(topic.valid().values()))
    finally:
        second.stop()
