"""The batch layer against a plain-Python recomputation, on traffic landed from a real broker:
5% duplicates, 3% late events, 1% malformed, sessions across midnight, late data after a day
was first computed."""

from __future__ import annotations

import itertools
import json
import uuid
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from lambda_arch.batch import layer as batch
from lambda_arch.batch.lake import Lake
from lambda_arch.batch.layer import (
    CLEAN_TABLE,
    DISCOVERY_TABLE,
    SESSIONS_TABLE,
    TRENDING_TABLE,
    complete_days,
    compute_day,
    compute_days,
    read_batch_view,
    stale_days,
)
from lambda_arch.common.config import Settings
from lambda_arch.ingest.generator import GeneratedRecord, TrafficConfig, generate
from lambda_arch.ingest.producer import ensure_topic, make_producer
from lambda_arch.ingest.schema import PlayEvent, parse_payload
from lambda_arch.speed.layer import run_landing

START = datetime(2026, 3, 1, 21, 0, tzinfo=UTC)
FIRST_CUT = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)  # the first landing stops here
END = datetime(2026, 3, 4, 1, 0, tzinfo=UTC)
DAYS = [date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3)]
GAP = timedelta(minutes=30)
# A play on 2026-03-01 that arrives after that day was first computed.
LATE_PLAY = {
    "event_id": "late-after-compute",
    "event_type": "play_start",
    "event_time": "2026-03-01T23:40:00Z",
    "member_id": 3,
    "title_id": 7,
    "country": "BR",
    "discovery_source": "search",
    "position_ms": 0,
}


def traffic() -> list[GeneratedRecord]:
    config = TrafficConfig(
        seed=77,
        start=START,
        events_per_second=0.05,
        duplicate_rate=0.05,
        late_rate=0.03,
        malformed_rate=0.01,
        members=25,
        titles=40,
    )
    return list(itertools.takewhile(lambda r: r.emit_time < END, generate(config)))


# The oracle: plain Python over the same payloads, from CONTRACT section 3 -------------------------


def clean_events(payloads: list[bytes]) -> list[PlayEvent]:
    events: dict[str, PlayEvent] = {}
    for payload in payloads:
        event = parse_payload(payload)
        if isinstance(event, PlayEvent):
            earlier = events.get(event.event_id)
            if earlier is None or event.event_time < earlier.event_time:
                events[event.event_id] = event
    return list(events.values())


def on_day(moment: datetime, day: date) -> bool:
    return moment.astimezone(UTC).date() == day


def plays_by(events: list[PlayEvent], day: date, key: str) -> Counter[tuple]:
    return Counter(
        (
            e.event_time.replace(second=0, microsecond=0).replace(tzinfo=None),
            e.country,
            getattr(e, key),
        )
        for e in events
        if e.event_type == "play_start" and on_day(e.event_time, day)
    )


def sessions_ending(events: list[PlayEvent], day: date) -> set[tuple]:
    by_pair: dict[tuple[int, int], list[PlayEvent]] = defaultdict(list)
    for e in events:
        by_pair[(e.member_id, e.title_id)].append(e)
    found = set()
    for (member, title), group in by_pair.items():
        group.sort(key=lambda e: e.event_time)
        current: list[PlayEvent] = []
        for e in [*group, None]:
            if current and (e is None or e.event_time - current[-1].event_time >= GAP):
                positions = [x.position_ms for x in current if x.position_ms is not None]
                end = current[-1].event_time
                if on_day(end, day):
                    found.add(
                        (
                            member,
                            title,
                            current[0].event_time.replace(tzinfo=None),
                            end.replace(tzinfo=None),
                            len(current),
                            max(positions) - min(positions) if positions else 0,
                        )
                    )
                current = []
            if e is not None:
                current.append(e)
    return found


# What the batch tables hold ----------------------------------------------------------------------


def batch_counts(spark, lake: Lake, table: str, day: date, key: str) -> Counter[tuple]:
    rows = read_batch_view(spark, lake, table, [day]).collect()
    return Counter({(r.minute, r.country, r[key]): r.plays for r in rows})


def batch_sessions(spark, lake: Lake, day: date) -> set[tuple]:
    rows = read_batch_view(spark, lake, SESSIONS_TABLE, [day]).collect()
    return {
        (r.member_id, r.title_id, r.session_start, r.session_end, r.events, r.watched_ms)
        for r in rows
    }


def assert_day_matches(spark, lake: Lake, day: date, payloads: list[bytes]) -> None:
    events = clean_events(payloads)
    clean = read_batch_view(spark, lake, CLEAN_TABLE, [day])
    want_ids = sorted(e.event_id for e in events if on_day(e.event_time, day))
    assert sorted(r.event_id for r in clean.select("event_id").collect()) == want_ids
    assert batch_counts(spark, lake, TRENDING_TABLE, day, "title_id") == plays_by(
        events, day, "title_id"
    )
    assert batch_counts(spark, lake, DISCOVERY_TABLE, day, "discovery_source") == plays_by(
        events, day, "discovery_source"
    )
    assert batch_sessions(spark, lake, day) == sessions_ending(events, day)


# Tests -------------------------------------------------------------------------------------------


@pytest.fixture
def landing(spark, broker, topic: str, tmp_path: Path):
    """(settings, lake, send, land): a topic, a lake of this test's own, and the landing query."""
    ensure_topic(broker.bootstrap_servers, topic, 3)
    settings = Settings(
        LAMBDA_ARCH_HOME=str(tmp_path / "home"),
        KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
        LAMBDA_ARCH_TOPIC=topic,
        LAMBDA_ARCH_TOPIC_PARTITIONS="3",
        LAMBDA_ARCH_MAX_EVENTS_PER_BATCH="4000",
    )
    lake = Lake(str(tmp_path / "warehouse"), f"batch_{uuid.uuid4().hex[:10]}")
    producer = make_producer(broker.bootstrap_servers)

    def send(records: list[tuple[bytes | None, bytes]]) -> None:
        for key, value in records:
            producer.send(topic, key=key, value=value)
        producer.flush()

    def land():
        return run_landing(spark, settings, lake)

    yield settings, lake, send, land
    producer.close()


def test_batch_views_equal_a_plain_python_recomputation_including_late_data(spark, landing) -> None:
    settings, lake, send, land = landing
    records = traffic()
    kinds = Counter(r.kind for r in records)
    assert kinds["duplicate"] > 100 and kinds["late"] > 100 and kinds["malformed"] > 20
    first = [r for r in records if r.emit_time < FIRST_CUT]
    rest = records[len(first) :]

    send([(r.key, r.value) for r in first])
    land()
    compute_day(spark, lake, DAYS[0])
    assert_day_matches(spark, lake, DAYS[0], [r.value for r in first])
    assert stale_days(lake, [DAYS[0]]) == []

    # The rest of the traffic, and a play for day 1 long after its end: day 1 becomes stale.
    late = json.dumps(LATE_PLAY).encode()
    send([(r.key, r.value) for r in rest] + [(b"3", late)])
    report = land()
    assert report.watermark == max(
        r.event_time for r in records if r.event_time is not None
    ) - timedelta(minutes=settings.allowed_lateness_min)
    assert stale_days(lake, DAYS[:1]) == [DAYS[0]]
    assert batch.missing_days(lake, DAYS) == DAYS[1:]

    compute_days(spark, lake, DAYS, lock_dir=settings.home / "locks")
    payloads = [r.value for r in records] + [late]
    for day in DAYS:
        assert_day_matches(spark, lake, day, payloads)
    assert stale_days(lake, DAYS) == [] and batch.missing_days(lake, DAYS) == []
    assert batch.batch_watermark(lake, DAYS[0], DAYS[-1]) == datetime(2026, 3, 4, tzinfo=UTC)
    trending = read_batch_view(spark, lake, TRENDING_TABLE, DAYS[:1])
    assert trending.where("title_id = 7 AND country = 'BR'").count() >= 1

    # Sessions across midnight exist in this traffic and come out whole on their end day.
    crossing = [s for s in batch_sessions(spark, lake, DAYS[1]) if s[2].date() < DAYS[1]]
    assert crossing, "the traffic should hold sessions that cross midnight"

    # A rerun of a day writes the same rows and records the same signature.
    before = {
        t: sorted(read_batch_view(spark, lake, t, DAYS[1:2]).collect()) for t in batch.BATCH_VIEWS
    }
    signature = batch.read_day_state(lake, CLEAN_TABLE, DAYS[1])["signature"]
    compute_day(spark, lake, DAYS[1])
    after = {
        t: sorted(read_batch_view(spark, lake, t, DAYS[1:2]).collect()) for t in batch.BATCH_VIEWS
    }
    assert after == before
    assert batch.read_day_state(lake, CLEAN_TABLE, DAYS[1])["signature"] == signature


def test_an_empty_day_empties_its_partition_and_only_its_own(spark, landing) -> None:
    settings, lake, send, land = landing
    plays = [
        {**LATE_PLAY, "event_id": f"p{i}", "event_time": f"2026-03-0{d}T10:0{i}:00Z"}
        for d in (1, 2)
        for i in range(3)
    ]
    send([(b"3", json.dumps(p).encode()) for p in plays])
    land()
    compute_days(spark, lake, DAYS[:2], lock_dir=settings.home / "locks")
    assert read_batch_view(spark, lake, TRENDING_TABLE, DAYS[:2]).count() == 6
    # Day 3 has no events: computing it writes empty partitions and leaves days 1-2 alone.
    results = compute_day(spark, lake, DAYS[2])
    assert {r.table: r.rows for r in results} == dict.fromkeys(batch.BATCH_VIEWS, 0)
    assert read_batch_view(spark, lake, TRENDING_TABLE, DAYS[:2]).count() == 6


def test_complete_days_follow_the_landing_watermark() -> None:
    start = date(2026, 3, 1)
    assert complete_days(start, None) == []
    assert complete_days(start, datetime(2026, 3, 1, 23, 59, tzinfo=UTC)) == []
    assert complete_days(start, datetime(2026, 3, 2, 0, 0, tzinfo=UTC)) == [start]
    assert complete_days(start, datetime(2026, 3, 4, 12, 0, tzinfo=UTC)) == [
        date(2026, 3, 1),
        date(2026, 3, 2),
        date(2026, 3, 3),
    ]
    assert complete_days(date(2026, 3, 5), datetime(2026, 3, 4, 12, 0, tzinfo=UTC)) == []


def test_bad_partition_keys_and_tables_are_clear_errors(spark, tmp_path: Path) -> None:
    with pytest.raises(batch.BatchError, match="not a yyyy-MM-dd date"):
        batch.parse_day("2026-13-01")
    lake = Lake(str(tmp_path / "warehouse"), f"batch_{uuid.uuid4().hex[:10]}")
    with pytest.raises(batch.BatchError, match="unknown batch tables"):
        compute_day(spark, lake, DAYS[0], ["trending_bach"])


def _plays(day: int, minutes: range, title: int = 7) -> list[tuple[bytes, bytes]]:
    return [
        (
            b"3",
            json.dumps(
                {
                    **LATE_PLAY,
                    "event_id": f"d{day}-{minute}-{title}",
                    "event_time": f"2026-03-0{day}T10:{minute:02d}:00Z",
                    "title_id": title,
                }
            ).encode(),
        )
        for minute in minutes
    ]


def _served(lake: Lake, table: str, days: list[date]) -> dict[str, list[tuple]]:
    """What a pyarrow reader (the serving refresh) reads of each day: the state's version."""
    rows = {}
    for day in days:
        _, table_rows = batch.read_day_rows(lake, table, day, ["title_id", "plays"])
        rows[day.isoformat()] = sorted((r["title_id"], r["plays"]) for r in table_rows.to_pylist())
    return rows


def _versions(lake: Lake, table: str, day: date) -> list[str]:
    folder = Path(lake.location(table)) / f"dt={day.isoformat()}"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_a_failed_recompute_keeps_each_days_previous_rows_and_state(
    spark, landing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recompute writes aside and swaps only once it has succeeded: a Spark job that fails
    (a UDF raising in the view's plan), or a write that fails while committing (day 3's folder
    is taken by a file), leaves every day's previous rows, for Spark and pyarrow readers, and its
    state as they were; the next run replaces them and deletes what the failures left."""
    from pyspark.sql import functions as F

    settings, lake, send, land = landing
    locks = settings.home / "locks"
    send(_plays(1, range(3)) + _plays(2, range(3)))
    land()
    compute_days(spark, lake, DAYS[:2], lock_dir=locks)

    def spark_rows() -> list[tuple]:
        frame = read_batch_view(spark, lake, TRENDING_TABLE, DAYS[:2])
        return sorted((r.dt, r.minute, r.title_id, r.plays) for r in frame.collect())

    def states() -> list[dict | None]:
        return [batch.read_day_state(lake, TRENDING_TABLE, day) for day in DAYS[:2]]

    before, state_before = spark_rows(), states()
    served_before = _served(lake, TRENDING_TABLE, DAYS[:2])
    assert len(before) == 6 and all(state_before)
    # New plays on every day: a successful recompute would change each of them.
    send(_plays(1, range(3, 5)) + _plays(2, range(3, 5)) + _plays(3, range(2)))
    land()
    compute_days(spark, lake, DAYS, [CLEAN_TABLE], lock_dir=locks)

    def raising(title_id: int) -> int:
        raise RuntimeError(f"injected failure at title {title_id}")

    counts = batch.count_deltas

    def failing_counts(events, view):
        return counts(events, view).withColumn("title_id", F.udf(raising, "bigint")("title_id"))

    monkeypatch.setattr(batch, "count_deltas", failing_counts)
    with pytest.raises(Exception, match="injected failure"):
        compute_days(spark, lake, DAYS[:2], [TRENDING_TABLE], lock_dir=locks)
    monkeypatch.undo()
    assert spark_rows() == before
    assert states() == state_before
    assert _served(lake, TRENDING_TABLE, DAYS[:2]) == served_before

    # Day 3's folder name is taken by a file: the job's commit fails after its tasks wrote
    # every day (and may have moved days 1-2 in aside) but before any swap.
    blocker = Path(lake.location(TRENDING_TABLE)) / f"dt={DAYS[2].isoformat()}"
    blocker.write_text("not a folder")
    with pytest.raises(Exception):  # noqa: B017 - Spark's wrapper of the commit's IOException
        compute_days(spark, lake, DAYS, [TRENDING_TABLE], lock_dir=locks)
    assert spark_rows() == before
    assert states() == state_before
    assert _served(lake, TRENDING_TABLE, DAYS[:2]) == served_before
    assert batch.read_day_state(lake, TRENDING_TABLE, DAYS[2]) is None

    blocker.unlink()
    results = compute_days(spark, lake, DAYS, [TRENDING_TABLE], lock_dir=locks)
    assert [r.rows for r in results] == [5, 5, 2]
    after = spark_rows()
    assert len(after) == 10 and after != before
    assert _served(lake, TRENDING_TABLE, DAYS[:2]) == {
        day: sorted((t, p) for d, _, t, p in after if d == day)
        for day in ("2026-03-01", "2026-03-02")
    }
    # One folder per day: the state's version; the previous ones and every aside folder the
    # failed attempts left are gone.
    for day, result in zip(DAYS, results, strict=True):
        assert _versions(lake, TRENDING_TABLE, day) == [f"v={result.version}"]
        assert batch.read_day_state(lake, TRENDING_TABLE, day)["version"] == result.version
