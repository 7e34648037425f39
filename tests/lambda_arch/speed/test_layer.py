"""The speed layer on a real broker and Spark, against a plain-Python model of its semantics.

`Model` replays the records of each micro-batch (the offsets come from the run's report) with the
contract's rules: the watermark is the latest event time seen minus the allowed lateness, an
event older than it when its micro-batch starts is late, a repeated event_id counts once. The
views are then recomputed with the reference functions of test_transforms.
"""

from __future__ import annotations

import itertools
import json
import shutil
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

import pytest

from lambda_arch.batch.lake import Lake, read_play_events, read_quarantine, write_landing_batch
from lambda_arch.common.config import Settings
from lambda_arch.ingest.generator import TrafficConfig, generate
from lambda_arch.ingest.kafka_offsets import end_offsets
from lambda_arch.ingest.producer import ensure_topic, make_producer
from lambda_arch.ingest.schema import REASON_FUTURE, PlayEvent, Rejection, parse_payload
from lambda_arch.ingest.source_offsets import checkpoint_offsets
from lambda_arch.runtime.broker import EmbeddedBroker
from lambda_arch.speed.lag import partition_lag
from lambda_arch.speed.layer import (
    SpeedPaths,
    SpeedStateError,
    checkpoint_of,
    parsed_stream,
    read_discovery_speed,
    read_sessions_speed,
    read_speed_state,
    read_trending_speed,
    read_view_speed,
    run_counts_speed,
    run_landing,
    run_sessions_speed,
    run_trending_speed,
    stream_sessions,
    stream_view,
)
from lambda_arch.speed.streaming import (
    StreamReport,
)
from lambda_arch.views.declarations import DEVICE_MIX, CountView, load_views_file
from tests.lambda_arch.views.test_transforms import (
    START,
    counts_of,
    event,
    micros,
    minute_of,
    ref_discovery,
    ref_sessions,
    ref_trending,
    sessions_of,
)

# A view declared only here: two dimensions, counting events other than play_start.
TEST_VIEWS_TOML = """
[views.stops_by_device]
dimensions = ["device", "title_id"]
events = ["play_stop", "play_heartbeat"]
form = "top"
description = "Stops and heartbeats per device and title (a test view)."
"""

LATENESS = timedelta(minutes=10)
SPARK_SESSION_GAP = timedelta(minutes=30) - timedelta(microseconds=1)


@dataclass
class KafkaTopic:
    """A test topic and every record sent to it as (partition, offset, payload)."""

    bootstrap: str
    name: str
    partitions: int
    records: list[tuple[int, int, bytes]] = field(default_factory=list)

    def send(self, payloads: list[tuple[bytes | None, bytes]]) -> None:
        """Send (key, value) pairs, partitioned by the member id in the key."""
        offsets = Counter(p for p, _, _ in self.records)
        producer = make_producer(self.bootstrap)
        try:
            for key, value in payloads:
                partition = int(key) % self.partitions if key and key.isdigit() else 0
                producer.send(self.name, key=key, value=value, partition=partition)
                self.records.append((partition, offsets[partition], value))
                offsets[partition] += 1
            producer.flush()
        finally:
            producer.close()


def new_topic(broker: EmbeddedBroker, name: str, partitions: int = 3) -> KafkaTopic:
    ensure_topic(broker.bootstrap_servers, name, partitions)
    return KafkaTopic(broker.bootstrap_servers, name, partitions)


def views_file(folder: Path, text: str = TEST_VIEWS_TOML) -> Path:
    """A views file declaring the test view (written into `folder`)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "views.toml"
    path.write_text(text, encoding="utf-8")
    return path


def ref_view(view: CountView, events: list[PlayEvent]) -> Counter:
    """A count view over events, in plain Python: plays per (minute, dimensions...)."""
    return Counter(
        (minute_of(e.event_time), *(getattr(e, d) for d in view.dimensions))
        for e in events
        if e.event_type in view.event_types
    )


def settings_for(
    home: Path, kafka: KafkaTopic, max_events: int, views: Path | None = None
) -> Settings:
    return Settings(
        LAMBDA_ARCH_VIEWS_FILE=str(views) if views else None,
        LAMBDA_ARCH_HOME=str(home),
        KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap,
        LAMBDA_ARCH_TOPIC=kafka.name,
        LAMBDA_ARCH_MAX_EVENTS_PER_BATCH=max_events,
        LAMBDA_ARCH_ALLOWED_LATENESS_MIN=int(LATENESS.total_seconds() // 60),
        # The counts query lands into the home's lake: a database of its own in the shared session.
        LAMBDA_ARCH_DATABASE=f"speed_{uuid.uuid4().hex[:10]}",
    )


def generated(count: int, *, seed: int, late_rate: float) -> list[tuple[bytes | None, bytes]]:
    """Generated records; 0.4 per second makes 400 records span about 18 minutes of event
    time, more than the allowed lateness."""
    config = TrafficConfig(
        seed=seed,
        start=START,
        events_per_second=0.4,
        duplicate_rate=0.08,
        late_rate=late_rate,
        malformed_rate=0.05,
        members=30,
        titles=10,
    )
    return [(r.key, r.value) for r in itertools.islice(generate(config), count)]


def keyed(payloads: list[bytes]) -> list[tuple[bytes | None, bytes]]:
    return [(str(json.loads(p)["member_id"]).encode(), p) for p in payloads]


@dataclass
class Model:
    """The speed layer's rules over the records of each micro-batch, in batch order."""

    max_seen: datetime | None = None
    seen: set[str] = field(default_factory=set)
    counted: list[PlayEvent] = field(default_factory=list)
    late: list[PlayEvent] = field(default_factory=list)

    @property
    def watermark(self) -> datetime | None:
        return None if self.max_seen is None else self.max_seen - LATENESS

    def apply(self, report: StreamReport, records: list[tuple[int, int, bytes]]) -> int:
        """Replay a run; returns the late events of this run."""
        late_before = len(self.late)
        for batch in report.batches:
            start, end = batch.start_offsets or {}, batch.end_offsets or {}
            watermark = self.watermark  # fixed for the whole micro-batch
            newest = self.max_seen
            for partition, offset, value in records:
                if not start.get(partition, 0) <= offset < end.get(partition, 0):
                    continue
                parsed = parse_payload(value)
                if isinstance(parsed, Rejection):
                    continue
                newest = max(newest or parsed.event_time, parsed.event_time)
                if watermark is not None and parsed.event_time < watermark:
                    self.late.append(parsed)
                elif parsed.event_id not in self.seen:
                    self.seen.add(parsed.event_id)
                    self.counted.append(parsed)
            self.max_seen = newest
        return len(self.late) - late_before


def check_report(report: StreamReport, kafka: KafkaTopic, max_events: int) -> None:
    """What every run's report must say about offsets, batches and metadata."""
    end = end_offsets(kafka.bootstrap, kafka.name)
    assert report.offsets == end
    assert partition_lag(end, {}, report.offsets) == dict.fromkeys(end, 0)
    assert report.events_read == sum(b.input_rows for b in report.batches)
    assert all(b.input_rows <= max_events for b in report.batches)
    assert report.micro_batches == len(report.batches)
    metadata = report.metadata()
    assert all(isinstance(v, int | float | str) for v in metadata.values()), metadata
    assert metadata["events_read"] == report.events_read
    assert json.loads(str(metadata["offsets"])) == {str(p): o for p, o in end.items()}


def rejected(records: list[tuple[int, int, bytes]]) -> int:
    return sum(isinstance(parse_payload(v), Rejection) for _, _, v in records)


def simulate_crash_after_last_data_batch(checkpoint: str, report: StreamReport) -> int:
    """Forget the commit of the last batch that read data (as if the process died after the
    batch wrote its output but before Spark committed it); returns that batch's rows."""
    last = max((b for b in report.batches if b.input_rows > 0), key=lambda b: b.batch_id)
    root = Path(checkpoint)
    for folder, first in (("commits", last.batch_id), ("offsets", last.batch_id + 1)):
        for entry in (root / folder).iterdir():
            if entry.name.isdigit() and int(entry.name) >= first:
                entry.unlink()
                (entry.parent / f".{entry.name}.crc").unlink(missing_ok=True)  # Hadoop's checksum
    return last.input_rows


def check_every_view(spark, paths: SpeedPaths, settings: Settings, model: Model) -> None:
    """Every count view (built-in and declared in the test's views file) is the model's."""
    assert settings.views_file is not None
    (declared,) = load_views_file(settings.views_file)
    assert counts_of(read_trending_speed(spark, paths)) == ref_trending(model.counted)
    assert counts_of(read_discovery_speed(spark, paths)) == ref_discovery(model.counted)
    for view in (DEVICE_MIX, declared):
        assert counts_of(read_view_speed(spark, paths, view)) == ref_view(view, model.counted)
    assert sum(ref_view(declared, model.counted).values()) > 0


def test_every_count_view_exactly_once_with_late_events_in_one_query(
    spark, broker: EmbeddedBroker, topic: str, tmp_path: Path
) -> None:
    kafka = new_topic(broker, topic)
    # 400 records: generated ones (the generator's own held-back records come out only after
    # 10+ minutes of event time) with 8 plays from an hour ago mixed into the last part.
    wave1 = generated(392, seed=3, late_rate=0.0)
    for i in range(8):
        old = event(
            f"old-{i}", START - timedelta(minutes=60 - i), member=i, title=1, kind="play_start"
        )
        wave1.insert(300 + 10 * i, (str(i).encode(), old))
    kafka.send(wave1)
    settings = settings_for(tmp_path / "home", kafka, 150, views_file(tmp_path / "conf"))
    paths = SpeedPaths(str(tmp_path / "speed"))
    trending_model = Model()

    # Run 1: several micro-batches (admission control), duplicates, malformed and late records,
    # one query for every count view.
    report = run_counts_speed(spark, settings, paths)
    assert report.name == "counts"
    check_report(report, kafka, 150)
    assert report.events_read == 400 and report.micro_batches >= 3
    late = trending_model.apply(report, kafka.records)
    assert late == 8  # the old plays arrive after the watermark moved past them
    assert report.late_events == late
    quarantined = rejected(kafka.records)
    assert report.observed == {
        "landing.records": 400,
        "landing.valid": 400 - quarantined,
        "landing.quarantined": quarantined,
        "landing.future": 0,
    }
    view = counts_of(read_trending_speed(spark, paths))
    assert view == ref_trending(trending_model.counted)
    assert report.watermark == trending_model.watermark
    state = read_speed_state(paths, "trending_speed")
    assert state is not None and state["offsets"] == {str(p): o for p, o in report.offsets.items()}
    assert datetime.fromisoformat(state["watermark"]) == trending_model.watermark
    for name in ("counts", "discovery_speed", "device_mix_speed", "stops_by_device_speed"):
        assert read_speed_state(paths, name)["offsets"] == state["offsets"]  # type: ignore[index]
    check_every_view(spark, paths, settings, trending_model)
    # One query, one checkpoint: the per-view names resolve to it.
    assert checkpoint_of(settings, "discovery_speed") == checkpoint_of(settings, "counts")
    assert not (tmp_path / "home" / "checkpoints" / "trending_speed").exists()

    # Run 2 without new data: nothing read, nothing changes, the watermark is still reported.
    again = run_counts_speed(spark, settings, paths)
    assert (again.micro_batches, again.events_read, again.late_events) == (0, 0, 0)
    assert again.offsets == report.offsets and again.watermark == report.watermark
    assert counts_of(read_trending_speed(spark, paths)) == view

    # A batch retried after a crash rewrites its own deltas: still counted once.
    checkpoint = checkpoint_of(settings, "trending_speed")
    rows = simulate_crash_after_last_data_batch(checkpoint, report)
    retried = run_counts_speed(spark, settings, paths)
    assert retried.events_read == rows and retried.micro_batches >= 1
    assert counts_of(read_trending_speed(spark, paths)) == view
    check_every_view(spark, paths, settings, trending_model)

    # Run 3: new data around the watermark: at it (counted), 1 ms older and older (late),
    # re-sent copies of counted events (duplicates) and new plays.
    watermark = trending_model.watermark
    assert watermark is not None
    newest = trending_model.max_seen
    assert newest is not None
    fresh = [e for e in trending_model.counted if e.event_time >= watermark][:5]
    assert fresh
    resent = [
        p
        for _, _, p in kafka.records
        if isinstance(parse_payload(p), PlayEvent) and parse_payload(p) in fresh
    ]
    wave3 = [
        event("at-watermark", watermark, member=1, title=901, kind="play_start"),
        event("1ms-late", watermark - timedelta(milliseconds=1), member=2, title=902, kind="play_start"),
        event("late-5m", watermark - timedelta(minutes=5), member=3, title=903, kind="play_start"),
        event("late-2h", watermark - timedelta(hours=2), member=4, title=903, kind="play_start"),
        *resent,
        *[
            event(f"new-{i}", newest + timedelta(seconds=i), member=i, title=904 + i % 3,
                  kind="play_start", country="BR", source="search")
            for i in range(20)
        ],
    ]  # fmt: skip
    kafka.send(keyed(wave3))
    third = run_counts_speed(spark, settings, paths)
    check_report(third, kafka, 150)
    assert third.events_read == len(wave3)
    assert third.late_events == trending_model.apply(third, kafka.records) == 3
    view = counts_of(read_trending_speed(spark, paths))
    assert view == ref_trending(trending_model.counted)
    titles = Counter(key[2] for key in view.elements())
    assert titles[901] == 1 and titles[902] == 0 and titles[903] == 0
    assert third.watermark == newest + timedelta(seconds=19) - LATENESS

    check_every_view(spark, paths, settings, trending_model)
    state = read_speed_state(paths, "discovery_speed")
    # The total counts the retried batch's late events twice (it read them twice).
    total = len(trending_model.late) + retried.late_events
    assert state is not None and state["late_events_total"] == total


def test_admission_control_gives_the_same_view(
    spark, broker: EmbeddedBroker, topic: str, tmp_path: Path
) -> None:
    """Small batches and one big batch agree (without late records, batching cannot matter)."""
    kafka = new_topic(broker, topic)
    kafka.send(generated(300, seed=8, late_rate=0.0))
    small = run_trending_speed(
        spark, settings_for(tmp_path / "a", kafka, 60), SpeedPaths(str(tmp_path / "speed-a"))
    )
    big = run_trending_speed(
        spark, settings_for(tmp_path / "b", kafka, 100_000), SpeedPaths(str(tmp_path / "speed-b"))
    )
    assert small.micro_batches >= 5 and max(b.input_rows for b in small.batches) <= 60
    assert [b.input_rows for b in big.batches if b.input_rows] == [300]
    model = Model()
    model.apply(big, kafka.records)
    view = counts_of(read_trending_speed(spark, str(tmp_path / "speed-a")))
    assert view == counts_of(read_trending_speed(spark, str(tmp_path / "speed-b")))
    assert view == ref_trending(model.counted) and sum(view.values()) > 0


def sessions_wave(t: datetime) -> list[bytes]:
    """Sessions around the 30-minute boundary, duplicates and out-of-order events."""
    return [
        event("a1", t, member=1, position=0),
        event("a2", t + timedelta(minutes=29, seconds=59), member=1, position=1_000),
        event("a2", t + timedelta(minutes=29, seconds=59), member=1, position=1_000),  # copy
        event("b2", t + timedelta(minutes=31), member=2, position=9_000),
        event("b1", t + timedelta(minutes=30), member=2, position=4_000),  # out of order
        event("a3", t + timedelta(minutes=59, seconds=59), member=1),  # exactly 30:00 later
        event("b3", t + timedelta(minutes=45), member=2, title=11),
        event("a4", t + timedelta(minutes=90), member=1, position=5_000),  # 30:01 later
        event("b4", t + timedelta(minutes=91), member=2),
        event("clock", t + timedelta(hours=3), member=3),  # closes every session above
    ]


def closed(model: Model, sessions: list[tuple]) -> list[tuple]:
    """Reference sessions that Spark has emitted: window end before its final watermark."""
    assert model.watermark is not None
    spark_watermark = micros(model.watermark) - 1_000  # Spark's: 1 ms below the contract's
    gap = SPARK_SESSION_GAP // timedelta(microseconds=1)
    for session in sessions:  # keep the test clear of the emission boundary
        assert abs(session[3] + gap - spark_watermark) > 1_000_000, session
    return [s for s in sessions if s[3] + gap < spark_watermark]


def test_sessions_speed_closes_sessions_once(
    spark, broker: EmbeddedBroker, topic: str, tmp_path: Path
) -> None:
    kafka = new_topic(broker, topic, partitions=2)
    kafka.send([*keyed(sessions_wave(START)), (b"9", b"not json")])
    settings = settings_for(tmp_path / "home", kafka, max_events=4)
    paths = SpeedPaths(str(tmp_path / "speed"))
    model = Model()

    first = run_sessions_speed(spark, settings, paths)
    check_report(first, kafka, 4)
    assert first.micro_batches >= 3 and first.observed["input.quarantined"] == 1
    assert first.late_events == model.apply(first, kafka.records) == 0
    got = sessions_of(read_sessions_speed(spark, paths))
    assert got == closed(model, ref_sessions(model.counted))
    start = micros(START)
    assert [s[2:] for s in got if s[0] == 1] == [
        (start, start + 1799 * 1_000_000, 2, 1_000),  # a1 + a2 (29:59 gap, copy dropped)
        (start + 3599 * 1_000_000, start + 3599 * 1_000_000, 1, 0),  # a3: 30:00 gap
        (start + 5400 * 1_000_000, start + 5400 * 1_000_000, 1, 0),  # a4: 30:01 gap
    ]
    assert not [s for s in got if s[0] == 3]  # the clock's own session is still open

    again = run_sessions_speed(spark, settings, paths)
    assert again.events_read == 0
    assert sessions_of(read_sessions_speed(spark, paths)) == got

    # A late event that would have joined member 1's sessions is dropped; a later clock
    # closes member 3's session.
    t = START
    kafka.send(
        keyed(
            [
                event("a-late", t + timedelta(minutes=45), member=1),
                event("c2", t + timedelta(hours=3, minutes=5), member=3, position=10),
                event("clock2", t + timedelta(hours=5), member=4),
            ]
        )
    )
    third = run_sessions_speed(spark, settings, paths)
    assert third.late_events == model.apply(third, kafka.records) == 1
    got = sessions_of(read_sessions_speed(spark, paths))
    assert got == closed(model, ref_sessions(model.counted))
    assert [s[4] for s in got if s[0] == 3] == [2]


def test_a_continuous_sessions_query_closes_sessions_as_the_availablenow_one(
    spark, broker: EmbeddedBroker, topic: str, tmp_path: Path
) -> None:
    """views_stream_job's sessions step: the sessions query as a continuous query publishes
    each micro-batch, and closes exactly the sessions of the independent stitcher."""
    kafka = new_topic(broker, topic, partitions=2)
    kafka.send(keyed(sessions_wave(START)))
    settings = settings_for(tmp_path / "home", kafka, max_events=4).model_copy(
        update={"sessions_trigger_s": 0.5}
    )
    paths = SpeedPaths(str(tmp_path / "speed"))
    published: list[StreamReport] = []
    total = len(kafka.records)

    report = stream_sessions(
        spark,
        settings,
        stream_s=120,
        on_batch=published.append,
        # Every record read, then a micro-batch without data: the one that moves the watermark
        # past the last batch's events and emits the sessions it closes.
        stop_early=lambda: (
            sum(b.events_read for b in published) >= total and published[-1].events_read == 0
        ),
        paths=paths,
    )
    assert report.events_read == total == sum(b.events_read for b in published)
    assert report.micro_batches >= 3  # admission control: 4 records per micro-batch
    model = Model()
    assert model.apply(report, kafka.records) == 0
    got = sessions_of(read_sessions_speed(spark, paths))
    assert got and got == closed(model, ref_sessions(model.counted))
    state = read_speed_state(paths, "sessions_speed")
    assert state is not None and state["offsets"] == {str(p): o for p, o in report.offsets.items()}


def test_new_checkpoint_over_old_output_is_refused(
    spark, broker: EmbeddedBroker, topic: str, tmp_path: Path
) -> None:
    kafka = new_topic(broker, topic, partitions=1)
    paths = SpeedPaths(str(tmp_path / "speed"))
    (tmp_path / "speed" / "trending_speed" / "batch_id=0").mkdir(parents=True)
    with pytest.raises(SpeedStateError, match="delete both"):
        run_trending_speed(spark, settings_for(tmp_path / "home", kafka, 10), paths)


def test_a_home_of_the_per_view_queries_is_refused_with_what_to_reset(
    spark, broker: EmbeddedBroker, topic: str, tmp_path: Path
) -> None:
    """Checkpoints of the old trending/discovery queries: the counts query would restart batch
    ids under their folders (double counts); the error names what to remove."""
    kafka = new_topic(broker, topic, partitions=1)
    settings = settings_for(tmp_path / "home", kafka, 10)
    (settings.checkpoints_dir / "trending_speed" / "offsets").mkdir(parents=True)
    with pytest.raises(SpeedStateError, match=r"older version.*trending_speed"):
        run_counts_speed(spark, settings, SpeedPaths(str(tmp_path / "speed")))


def test_landing_keeps_every_record_once(
    spark, broker: EmbeddedBroker, topic: str, tmp_path: Path
) -> None:
    kafka = new_topic(broker, topic, partitions=2)
    kafka.send(generated(120, seed=4, late_rate=0.0))
    settings = settings_for(tmp_path / "home", kafka, max_events=50)
    lake = Lake.from_settings(settings)
    bad = rejected(kafka.records)
    assert bad > 0

    report = run_landing(spark, settings, lake)
    check_report(report, kafka, 50)
    assert report.micro_batches >= 3
    assert report.observed == {
        "landing.records": 120,
        "landing.valid": 120 - bad,
        "landing.quarantined": bad,
        "landing.future": 0,
    }
    # Raw means raw: duplicates stay (the batch layer deduplicates).
    assert read_play_events(spark, lake).count() == 120 - bad
    assert read_quarantine(spark, lake).count() == bad

    again = run_landing(spark, settings, lake)
    assert again.events_read == 0 and read_play_events(spark, lake).count() == 120 - bad

    # Another home over the same lake: a new counts checkpoint would land everything again.
    other = settings_for(tmp_path / "other-home", kafka, 50)
    with pytest.raises(SpeedStateError, match="holds landed batches"):
        run_counts_speed(spark, other, SpeedPaths(str(tmp_path / "other-speed")), lake=lake)


def test_a_home_whose_landing_was_a_query_of_its_own_is_handed_over_once(
    spark, broker: EmbeddedBroker, topic: str, tmp_path: Path
) -> None:
    """A home of the previous version: `checkpoints/landing` had landed the topic, the counts
    query starts afresh. What the old landing landed is not landed again; everything is
    counted; the hand-over ends once the counts query has passed the old offsets. A landing
    behind what was counted is refused (those records would never reach the lake)."""
    kafka = new_topic(broker, topic, partitions=2)
    kafka.send(generated(60, seed=8, late_rate=0.0))
    settings = settings_for(tmp_path / "home", kafka, max_events=1000)
    lake = Lake.from_settings(settings)
    # The old version's landing query: the same source and lake writer, its own checkpoint,
    # landed files without a stream id.
    checkpoints = settings.checkpoints_dir
    lake.ensure_tables(spark)
    old_landing = (
        parsed_stream(spark, settings)
        .writeStream.foreachBatch(partial(write_landing_batch, lake=lake))
        .option("checkpointLocation", str(checkpoints / "landing"))
        .trigger(availableNow=True)
        .start()
    )
    old_landing.awaitTermination(120)
    assert checkpoint_offsets(checkpoints / "landing") == end_offsets(kafka.bootstrap, kafka.name)
    speed_root = Path(SpeedPaths.from_settings(settings).root)
    kafka.send(generated(40, seed=9, late_rate=0.0))

    report = run_counts_speed(spark, settings)
    assert report.events_read == 100  # counted from the start
    landed = read_play_events(spark, lake).select("partition", "offset").collect()
    quarantined = read_quarantine(spark, lake).select("partition", "offset").collect()
    positions = [(r.partition, r.offset) for r in [*landed, *quarantined]]
    assert sorted(positions) == sorted((p, o) for p, o, _ in kafka.records)  # each once
    model = Model()
    model.apply(report, kafka.records)
    assert counts_of(read_trending_speed(spark, SpeedPaths.from_settings(settings))) == (
        ref_trending(model.counted)
    )
    handover = speed_root / "_state" / "landing_handover.json"
    assert handover.exists() and (checkpoints / "landing" / "handed_over").exists()
    run_counts_speed(spark, settings)  # past the old offsets: the hand-over ends
    assert not handover.exists()

    # Counted beyond what the old landing landed: refused, with one line that says why.
    behind = settings_for(tmp_path / "behind", kafka, max_events=1000)
    assert run_counts_speed(spark, behind).events_read == 100
    shutil.copytree(checkpoints / "landing", behind.checkpoints_dir / "landing")
    (behind.checkpoints_dir / "landing" / "handed_over").unlink()
    with pytest.raises(SpeedStateError, match=r"landing query .* is behind its counts query"):
        run_counts_speed(spark, behind)


def test_stream_view_serves_as_it_goes_and_hands_over_to_available_now(
    spark, broker: EmbeddedBroker, topic: str, tmp_path: Path
) -> None:
    """A continuous trending query: every micro-batch is published while it runs, an
    availableNow run of the same view meanwhile returns once the stream has passed the topic's
    end offsets (it never waits for the stream to end), and the counts are the model's."""
    kafka = new_topic(broker, topic)
    kafka.send(generated(200, seed=5, late_rate=0.0))
    settings = settings_for(tmp_path / "home", kafka, max_events=150).model_copy(
        update={"speed_trigger_s": 0.5}
    )
    paths = SpeedPaths(str(tmp_path / "speed"))
    published: list[StreamReport] = []
    outcome: list[StreamReport | BaseException] = []
    finished = threading.Event()

    def stream() -> None:
        try:
            outcome.append(
                stream_view(
                    spark,
                    settings,
                    "trending_speed",
                    stream_s=300,  # ends when the test has seen what it needs
                    on_batch=published.append,
                    stop_early=finished.is_set,
                    paths=paths,
                )
            )
        except BaseException as error:
            outcome.append(error)

    def events_published() -> int:
        return sum(batch.events_read for batch in published)

    def wait_for(events: int) -> None:
        deadline = time.monotonic() + 120
        while events_published() < events and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.2)
        assert events_published() >= events, (events_published(), outcome)

    thread = threading.Thread(target=stream)
    thread.start()
    wait_for(200)
    state = read_speed_state(paths, "trending_speed")  # saved before on_batch is called
    assert state is not None and sum(state["offsets"].values()) >= 150

    kafka.send(generated(100, seed=6, late_rate=0.0))
    handed_over = run_trending_speed(spark, settings, paths)
    assert thread.is_alive(), "the availableNow run waited for the stream to end"
    assert handed_over.caught_up_by_holder and handed_over.events_read == 0
    assert handed_over.offsets == end_offsets(kafka.bootstrap, kafka.name)
    assert handed_over.metadata()["caught_up_by"]
    wait_for(300)
    assert thread.is_alive(), "the stream ended before it was told to"
    finished.set()
    thread.join(90)
    assert not thread.is_alive()
    report = outcome[-1]
    assert isinstance(report, StreamReport), report
    check_report(report, kafka, 150)
    assert report.events_read == 300 == events_published()
    assert [b.batch_id for b in report.batches] == [
        b.batch_id for p in published for b in p.batches
    ]
    model = Model()
    model.apply(report, kafka.records)
    assert counts_of(read_trending_speed(spark, paths)) == ref_trending(model.counted)
    assert report.watermark == model.watermark

    # The lock is free again: a plain availableNow run, with nothing new to read.
    after = run_trending_speed(spark, settings, paths)
    assert not after.caught_up_by_holder and after.events_read == 0
    assert after.offsets == report.offsets


def test_an_event_from_the_future_moves_no_watermark(
    spark, broker: EmbeddedBroker, topic: str, tmp_path: Path
) -> None:
    """CONTRACT section 3: one play stamped months ahead of its Kafka record timestamp, early
    among on-time plays, is quarantined (speed and landing alike) and changes no on-time count:
    the view equals the plain-Python count of the on-time plays. (Before the rule, Spark's
    global watermark jumped to the future play and every later micro-batch was dropped as late.)
    """
    kafka = new_topic(broker, topic)
    on_time = [
        (
            START + timedelta(seconds=20 * n),
            event(f"p{n}", START + timedelta(seconds=20 * n), member=n % 9, title=n % 4,
                  kind="play_start", country=("US", "BR")[n % 2]),
        )
        for n in range(120)
    ]  # fmt: skip
    future_time = START + timedelta(days=120)
    future = event("from-the-future", future_time, member=3, title=99, kind="play_start")
    # Each record carries its event time as Kafka timestamp (a simulated clock, as `produce`
    # sends); the future play comes with the time of its neighbours, 4 months behind its stamp.
    records = [(moment, payload) for moment, payload in on_time]
    records.insert(10, (on_time[10][0], future))
    producer = make_producer(kafka.bootstrap)
    try:
        for moment, payload in records:
            stamp = int(moment.timestamp() * 1000)
            producer.send(kafka.name, key=b"1", value=payload, partition=0, timestamp_ms=stamp)
        producer.flush()
    finally:
        producer.close()
    kafka.records += [(0, offset, payload) for offset, (_, payload) in enumerate(records)]
    # The plain-Python verdicts with the record timestamps: only the future play is rejected.
    verdicts = [parse_payload(p, int(m.timestamp() * 1000)) for m, p in records]
    assert [v for v in verdicts if isinstance(v, Rejection)] == [Rejection(REASON_FUTURE)]
    assert isinstance(parse_payload(future), PlayEvent)  # valid but for its record timestamp

    settings = settings_for(tmp_path / "home", kafka, max_events=20)
    paths = SpeedPaths(str(tmp_path / "speed"))
    report = run_trending_speed(spark, settings, paths)
    assert report.events_read == 121 and report.micro_batches >= 6
    assert report.observed == {
        "landing.records": 121,
        "landing.valid": 120,
        "landing.quarantined": 1,
        "landing.future": 1,
    }
    assert report.late_events == 0
    on_time_events = [v for v in verdicts if isinstance(v, PlayEvent)]
    assert counts_of(read_trending_speed(spark, paths)) == ref_trending(on_time_events)
    newest = on_time[-1][0]
    state = read_speed_state(paths, "trending_speed")
    assert state is not None
    assert datetime.fromisoformat(state["max_event_time"]) == newest
    assert report.watermark == newest - LATENESS

    # The same query quarantined it with its reason, and landed every on-time play as valid.
    lake = Lake.from_settings(settings)
    rows = read_quarantine(spark, lake).select("reason", "offset").collect()
    assert [(r["reason"], r["offset"]) for r in rows] == [(REASON_FUTURE, 10)]
    assert read_play_events(spark, lake).count() == 120


def test_a_query_that_never_committed_counts_the_old_incarnations_it_never_read(
    tmp_path: Path,
) -> None:
    """Seen in the fault campaign: `up` (memory broker) killed before the landing's first
    micro-batch committed; the next start found a new topic, a ledger with the old incarnation's
    3,000 records, and a checkpoint without a topic id, and reported no loss at all."""
    from lambda_arch.ingest.incarnations import record_ends
    from lambda_arch.ingest.kafka_offsets import TopicBounds
    from lambda_arch.speed.layer import pending_incarnation_loss

    settings = Settings(LAMBDA_ARCH_HOME=str(tmp_path / "home"))
    record_ends(settings.topic_ends_file, settings.topic, "old", {0: 1_200, 1: 1_800}, final=True)
    record_ends(settings.topic_ends_file, settings.topic, "new", {0: 0, 1: 0})
    bounds = TopicBounds(earliest={0: 0, 1: 0}, end={0: 0, 1: 0}, topic_id="new")
    never_committed = tmp_path / "checkpoint"
    never_committed.mkdir()
    loss = pending_incarnation_loss(settings, str(never_committed), bounds)
    assert loss is not None and loss.total == 3_000 and loss.previous_id == "old"
    # The current incarnation alone in the ledger: nothing lost.
    fresh = Settings(LAMBDA_ARCH_HOME=str(tmp_path / "fresh"))
    record_ends(fresh.topic_ends_file, fresh.topic, "new", {0: 5})
    assert pending_incarnation_loss(fresh, str(never_committed), bounds) is None
