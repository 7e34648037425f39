"""The serving layer against an independent recomputation, on traffic landed from a real broker
through real Spark speed and batch runs: windows wholly in batch, wholly in speed and straddling
the batch watermark, before and after late events are absorbed; duplicates and malformed
records included. Also the merge rules on their own, the store's incremental refresh, and its
hourly roll-up against the minutes it sums (on and off the hour, across the batch watermark, after
a batch day is replaced or dropped, speed rows pruned, and in a store written before it existed)."""

from __future__ import annotations

import itertools
import json
import random
import sqlite3
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from lambda_arch.batch import layer as batch
from lambda_arch.batch.lake import Lake
from lambda_arch.common.config import Settings
from lambda_arch.ingest.generator import TrafficConfig, generate
from lambda_arch.ingest.producer import ensure_topic, make_producer
from lambda_arch.ingest.schema import DISCOVERY_SOURCES, PlayEvent, parse_payload
from lambda_arch.serving import store as serving
from lambda_arch.serving.store import ServingError, ServingStore, split_window
from lambda_arch.speed.layer import (
    run_discovery_speed,
    run_landing,
    run_sessions_speed,
    run_trending_speed,
)

START = datetime(2026, 3, 1, 21, 0, tzinfo=UTC)
END = datetime(2026, 3, 2, 4, 0, tzinfo=UTC)
DAY = date(2026, 3, 1)
MIDNIGHT = datetime(2026, 3, 2, tzinfo=UTC)  # the batch watermark once DAY is computed
GAP = timedelta(minutes=30)


def utc(hour: int, minute: int = 0, day: int = 2) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=UTC)


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


# The oracle: plain Python over the payloads, CONTRACT section 3 ----------------------------------


def clean(payloads: Iterable[bytes]) -> list[PlayEvent]:
    """Valid events, one per event_id (the earliest copy)."""
    events: dict[str, PlayEvent] = {}
    for payload in payloads:
        event = parse_payload(payload)
        if isinstance(event, PlayEvent):
            kept = events.get(event.event_id)
            if kept is None or event.event_time < kept.event_time:
                events[event.event_id] = event
    return list(events.values())


@dataclass
class Oracle:
    """What the serving layer must answer: batch events before the watermark, speed events
    from it on (each layer's own set of events)."""

    batch_events: list[PlayEvent]
    speed_events: list[PlayEvent]
    batch_watermark: datetime | None
    speed_watermark: datetime

    def _plays(self, start: datetime, end: datetime, country: str | None) -> list[PlayEvent]:
        cut = self.batch_watermark or start
        chosen = [e for e in self.batch_events if e.event_time < cut]
        chosen += [e for e in self.speed_events if e.event_time >= cut]
        return [
            e
            for e in chosen
            if e.event_type == "play_start"
            and start <= e.event_time.replace(second=0, microsecond=0) < end
            and (country is None or e.country == country)
        ]

    def trending(self, as_of: datetime, window: int, country: str | None, limit: int) -> list:
        end = as_of.replace(second=0, microsecond=0)
        plays = Counter(
            e.title_id for e in self._plays(end - timedelta(minutes=window), end, country)
        )
        ranked = sorted(plays.items(), key=lambda item: (-item[1], item[0]))[:limit]
        return [
            {"rank": n, "title_id": title, "plays": count}
            for n, (title, count) in enumerate(ranked, start=1)
        ]

    def discovery(self, as_of: datetime, window: int, country: str | None) -> list:
        end = as_of.replace(second=0, microsecond=0)
        plays = Counter(
            e.discovery_source for e in self._plays(end - timedelta(minutes=window), end, country)
        )
        total = sum(plays.values())
        return [
            {"discovery_source": source, "plays": count, "share": round(count / total, 4)}
            for source, count in sorted(plays.items(), key=lambda item: (-item[1], item[0]))
        ]

    def sessions(self, member: int) -> tuple[list[dict], list[dict]]:
        """(sessions that must be served, sessions that may be: closing at the watermark)."""
        cut = self.batch_watermark or datetime.min.replace(tzinfo=UTC)
        must, may = [], []
        for s in stitch(self.batch_events, member):
            if s["_end"] < cut:
                must.append(s)
        for s in stitch(self.speed_events, member):
            if s["_end"] < cut:
                continue
            closes = s["_end"] + GAP
            if closes < self.speed_watermark - timedelta(minutes=1):
                must.append(s)
            elif closes <= self.speed_watermark + timedelta(minutes=1):
                may.append(s)
        return must, may


def stitch(events: list[PlayEvent], member: int) -> list[dict]:
    by_title: dict[int, list[PlayEvent]] = defaultdict(list)
    for e in events:
        if e.member_id == member:
            by_title[e.title_id].append(e)
    found = []
    for title, group in by_title.items():
        group.sort(key=lambda e: e.event_time)
        current: list[PlayEvent] = []
        for e in [*group, None]:
            if current and (e is None or e.event_time - current[-1].event_time >= GAP):
                positions = [x.position_ms for x in current if x.position_ms is not None]
                found.append(
                    {
                        "title_id": title,
                        "session_start": serving.iso(current[0].event_time),
                        "session_end": serving.iso(current[-1].event_time),
                        "events": len(current),
                        "watched_ms": max(positions) - min(positions) if positions else 0,
                        "_end": current[-1].event_time,
                    }
                )
                current = []
            if e is not None:
                current.append(e)
    return found


def public(session: dict) -> dict:
    return {k: v for k, v in session.items() if not k.startswith("_")}


# The pipeline: real broker, real Spark, the layers' own functions ---------------------------------


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
        run_landing(self.spark, self.settings, self.lake)
        for run in (run_trending_speed, run_discovery_speed, run_sessions_speed):
            run(self.spark, self.settings)

    def compute(self, day: date) -> None:
        batch.compute_day(self.spark, self.lake, day)

    def refresh(self) -> list[serving.RefreshReport]:
        return [
            serving.refresh_view(self.settings, self.store, view, self.lake)
            for view in serving.VIEWS
        ]


@pytest.fixture(scope="module")
def pipeline(spark, broker, tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    home = tmp_path_factory.mktemp("serving")
    topic = f"test-{uuid.uuid4().hex[:12]}"
    ensure_topic(broker.bootstrap_servers, topic, 3)
    settings = Settings(
        LAMBDA_ARCH_HOME=str(home / "home"),
        KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
        LAMBDA_ARCH_TOPIC=topic,
        LAMBDA_ARCH_TOPIC_PARTITIONS="3",
        # One micro-batch per pass: the oracle counts an event late only where the test makes
        # it late (sent after a pass), never because a micro-batch of the backpressure limit
        # ended earlier on one Kafka partition than on another (test_speed covers that case).
        LAMBDA_ARCH_MAX_EVENTS_PER_BATCH="100000",
        LAMBDA_ARCH_DATABASE=f"serving_{uuid.uuid4().hex[:10]}",
    )
    return Pipeline(
        spark, settings, Lake.from_settings(settings), ServingStore.from_settings(settings)
    )


COUNTRIES = [None, "US", "BR"]
# (as-of, window): wholly batch, ending at the watermark, straddling it (short and long),
# wholly speed, an empty stretch before the traffic, and a time given with an offset.
GRID = [
    (utc(22, 30, day=1), 60),
    (MIDNIGHT, 60),
    (utc(0, 30), 90),
    (utc(3, 0), 600),
    (utc(2, 45), 45),
    (utc(12, 0, day=1), 60),
    (datetime.fromisoformat("2026-03-02T02:17:41+02:00"), 30),
]


def assert_answers_match(store: ServingStore, oracle: Oracle) -> int:
    """Every (country, as-of, window) of the grid, trending and discovery; sessions of every
    member. Returns how many answers were compared."""
    compared = 0
    for country, (as_of, window) in itertools.product(COUNTRIES, GRID):
        got = store.trending(country=country, as_of=as_of, window=window, limit=8)
        want = oracle.trending(as_of.astimezone(UTC), window, country, 8)
        assert got["titles"] == want, (country, as_of, window)
        assert got["as_of"] == serving.iso(as_of.astimezone(UTC).replace(second=0, microsecond=0))
        assert got["batch_watermark"] == serving.iso(oracle.batch_watermark)
        got = store.discovery(country=country, as_of=as_of, window=window)
        assert got["sources"] == oracle.discovery(as_of.astimezone(UTC), window, country)
        compared += 2
    members = {e.member_id for e in oracle.speed_events + oracle.batch_events}
    for member in sorted(members):
        served = store.sessions(member_id=member)["sessions"]
        must, may = oracle.sessions(member)
        for session in map(public, must):
            assert session in served, (member, session)
        allowed = [public(s) for s in must + may]
        assert all(session in allowed for session in served), member
        compared += 1
    assert_rollups_agree(store)
    return compared


def assert_rollups_agree(store: ServingStore) -> None:
    """Every hourly roll-up holds exactly the sums of its minute table, per (hour, country,
    key) and per (hour, key) over all countries, recomputed here in plain Python."""
    with closing(sqlite3.connect(store.path)) as connection:
        for spec in (serving.TRENDING, serving.DISCOVERY):
            for table in (spec.batch_store, spec.speed_store):
                want: Counter[tuple] = Counter()
                for minute, country, key, plays in connection.execute(
                    f"SELECT minute, country, {spec.key}, plays FROM {table}"
                ):
                    hour = minute // 3600 * 3600
                    want[(hour, country, key)] += plays
                    want[(hour, "*", key)] += plays
                got = connection.execute(
                    f"SELECT hour, country, {spec.key}, plays FROM {table}_hourly"
                ).fetchall()
                assert {(h, c, k): p for h, c, k, p in got} == dict(want), table
                assert len(got) == len(want), table


def test_serving_equals_an_independent_recomputation_before_and_after_late_data(
    pipeline: Pipeline,
) -> None:
    on_time = traffic()
    pipeline.send(on_time)
    pipeline.speed_pass()
    # Nothing computed in batch yet: every answer comes from the speed layer.
    pipeline.refresh()
    speed_watermark = pipeline.store.view_state("trending").speed_watermark
    assert speed_watermark is not None and speed_watermark > utc(3, 30)
    everything = clean(pipeline.sent)
    assert assert_answers_match(
        pipeline.store, Oracle(everything, everything, None, speed_watermark)
    )

    # The day before midnight is complete: batch before the watermark, speed after.
    pipeline.compute(DAY)
    reports = pipeline.refresh()
    assert [r.batch_days_loaded for r in reports] == [["2026-03-01"]] * 3
    assert all(r.batch_watermark == MIDNIGHT for r in reports)
    assert reports[0].speed_rows_pruned > 0  # speed buckets before midnight are gone
    assert pipeline.store.trending(as_of=utc(3, 0))["batch_watermark"] == "2026-03-02T00:00:00Z"
    assert assert_answers_match(
        pipeline.store, Oracle(everything, everything, MIDNIGHT, speed_watermark)
    )

    # Late plays land; the speed layer leaves them out, the computed day is stale but served.
    pipeline.send(LATE_RECORDS)
    pipeline.speed_pass()
    assert batch.stale_days(pipeline.lake, [DAY]) == [DAY]
    reports = pipeline.refresh()
    assert all(not r.batch_days_loaded for r in reports)
    assert assert_answers_match(
        pipeline.store, Oracle(everything, everything, MIDNIGHT, speed_watermark)
    )

    # The day is recomputed: the late plays before midnight are served, those after are not.
    pipeline.compute(DAY)
    reports = pipeline.refresh()
    assert [r.batch_days_loaded for r in reports] == [["2026-03-01"]] * 3
    with_late = clean(pipeline.sent)
    oracle = Oracle(with_late, everything, MIDNIGHT, speed_watermark)
    assert assert_answers_match(pipeline.store, oracle)
    # The grid does see the late plays (else the comparison above proves nothing about them).
    before_late = Oracle(everything, everything, MIDNIGHT, speed_watermark)
    assert oracle.trending(utc(22, 30, day=1), 60, "BR", 8) != before_late.trending(
        utc(22, 30, day=1), 60, "BR", 8
    )

    # A refresh with nothing new changes nothing and reads nothing.
    before = pipeline.store.trending(as_of=utc(3, 0), window=600)
    again = pipeline.refresh()
    assert all(not r.batch_days_loaded and r.speed_batches_read == 0 for r in again)
    assert pipeline.store.trending(as_of=utc(3, 0), window=600) == before
    assert not serving.pending_views(pipeline.settings, pipeline.store)


def test_concurrent_refreshes_add_each_micro_batch_once(pipeline: Pipeline, tmp_path: Path) -> None:
    """A sensor's run and `lambda-arch run` may refresh at the same time."""
    import threading

    served = served_pipeline(pipeline)
    store = ServingStore(tmp_path / "second.sqlite3")
    errors: list[BaseException] = []

    def refresh() -> None:
        try:
            for view in serving.VIEWS:
                serving.refresh_view(served.settings, store, view, served.lake)
        except BaseException as error:  # surfaced below, not lost in the thread
            errors.append(error)

    threads = [threading.Thread(target=refresh) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    for as_of, window in GRID:
        assert store.trending(as_of=as_of, window=window) == served.store.trending(
            as_of=as_of, window=window
        )
        assert store.discovery(as_of=as_of, window=window) == served.store.discovery(
            as_of=as_of, window=window
        )
    rows = {view: summary["rows"] for view, summary in served.store.summary().items()}
    assert rows == {view: summary["rows"] for view, summary in store.summary().items()}


def test_default_as_of_is_the_speed_watermark(pipeline: Pipeline) -> None:
    state = pipeline.store.view_state("trending")
    if state.speed_watermark is None:
        pytest.fail("the serving test above must run first (module order)")
    answer = pipeline.store.trending()
    assert answer["as_of"] == serving.iso(state.speed_watermark.replace(second=0, microsecond=0))
    assert answer["speed_watermark"] == serving.iso(state.speed_watermark)
    assert answer["window_minutes"] == 60 and answer["country"] is None


def test_the_split_follows_the_contract() -> None:
    wm = MIDNIGHT
    start, end = utc(23, 0, day=1), utc(1, 0)
    s = split_window(start, end, wm)
    assert (s.batch_from, s.batch_to, s.speed_from, s.speed_to) == (
        int(start.timestamp()),
        int(wm.timestamp()),
        int(wm.timestamp()),
        int(end.timestamp()),
    )
    # Wholly before or after the watermark, and no watermark at all.
    before = split_window(utc(20, 0, day=1), utc(21, 0, day=1), wm)
    assert before.speed_from == before.speed_to and before.batch_to > before.batch_from
    after = split_window(utc(2, 0), utc(3, 0), wm)
    assert after.batch_from == after.batch_to and after.speed_to > after.speed_from
    none = split_window(start, end, None)
    assert none.batch_from == none.batch_to and none.speed_from == int(start.timestamp())


def test_the_batch_watermark_is_the_end_of_the_contiguous_days() -> None:
    d = date(2026, 3, 1)
    days = [d, d + timedelta(days=1), d + timedelta(days=3)]
    assert serving.contiguous_watermark(d, days) == datetime(2026, 3, 3, tzinfo=UTC)
    assert serving.contiguous_watermark(d + timedelta(days=1), []) is None
    assert serving.contiguous_watermark(None, days) is None


# The hourly roll-up: answers equal to the minutes it sums -----------------------------------------

ROLL_COUNTRIES = ("US", "BR", "DE")


def plays_between(first: datetime, last: datetime, seed: int, count: int) -> list[PlayEvent]:
    """`count` plays at random seconds of [first, last) over a few titles, countries and
    sources (an hour holds several keys per country, a key several countries)."""
    rng = random.Random(seed)
    seconds = int((last - first).total_seconds())
    return [
        PlayEvent(
            event_id=f"{seed}-{n}",
            event_type="play_start",
            event_time=first + timedelta(seconds=rng.randrange(seconds)),
            member_id=rng.randrange(50),
            title_id=rng.randrange(8),
            country=rng.choice(ROLL_COUNTRIES),
            device="tv",
            discovery_source=rng.choice(DISCOVERY_SOURCES[:5]),
            position_ms=None,
        )
        for n in range(count)
    ]


def count_rows(events: Iterable[PlayEvent], view: str) -> dict[str, list[tuple]]:
    """A count view's store rows (minute, country, key, plays) per UTC date, as the batch
    layer writes them."""
    counts: Counter[tuple] = Counter()
    for e in events:
        minute = e.event_time.replace(second=0, microsecond=0)
        key = e.title_id if view == "trending" else e.discovery_source
        counts[(minute.date().isoformat(), int(minute.timestamp()), e.country, key)] += 1
    by_day: dict[str, list[tuple]] = defaultdict(list)
    for (dt, *row), plays in sorted(counts.items()):
        by_day[dt].append((*row, plays))
    return by_day


# Batch plays on two whole days; speed plays (other ones: the split decides which layer counts)
# from the middle of the second day on, so the speed table also holds rows before a watermark.
ROLL_BATCH = plays_between(utc(0, 0, day=1), utc(0, 0, day=3), seed=1, count=3000)
ROLL_SPEED = plays_between(utc(6, 0), utc(8, 0, day=3), seed=2, count=1500)
ROLL_WATERMARKS = {"none": None, "day-end": utc(0, 0, day=3), "off-the-hour": utc(17, 30)}
# As-of times on and off the hour (and with seconds), around both watermarks; windows shorter
# than, equal to and longer than an hour, and a day and more.
ROLL_AS_OF = [
    utc(23, 0, day=1),
    utc(0, 0),
    utc(12, 37) + timedelta(seconds=41),
    utc(17, 30),
    utc(18, 0),
    utc(19, 10),
    utc(1, 0, day=3),
    utc(7, 59, day=3),
]
ROLL_WINDOWS = [1, 59, 60, 61, 150, 1440, 2000]


def rolled_store(
    path: Path, batch_events: Sequence[PlayEvent], watermark: datetime | None
) -> ServingStore:
    """A store holding the plays' batch days (watermark as given) and ROLL_SPEED's speed rows,
    added as two micro-batches whose buckets overlap (the second adds to the first)."""
    store = ServingStore(path)
    halves = (ROLL_SPEED[::2], ROLL_SPEED[1::2])
    for view in ("trending", "discovery"):
        days = {dt: ("v1", rows) for dt, rows in count_rows(batch_events, view).items()}
        serving.load_batch_days(store, view, days, watermark)
        for half in halves:
            rows = [row for day in count_rows(half, view).values() for row in day]
            with store.writing() as connection:
                serving._insert_speed(connection, serving.VIEWS[view], rows)
    return store


def roll_oracle(batch_events: list[PlayEvent], watermark: datetime | None) -> Oracle:
    return Oracle(batch_events, ROLL_SPEED, watermark, utc(8, 0, day=3))


def assert_roll_answers(store: ServingStore, oracle: Oracle) -> int:
    """Trending (top 3 and all) and discovery over the roll-up grid equal the plain-Python sums
    of the plays; returns how many answers were compared."""
    compared = 0
    for country, as_of, window in itertools.product(
        [None, *ROLL_COUNTRIES[:2]], ROLL_AS_OF, ROLL_WINDOWS
    ):
        where = (country, as_of, window)
        for limit in (3, 1000):
            got = store.trending(country=country, as_of=as_of, window=window, limit=limit)
            assert got["titles"] == oracle.trending(as_of, window, country, limit), where
        got = store.discovery(country=country, as_of=as_of, window=window)
        assert got["sources"] == oracle.discovery(as_of, window, country), where
        compared += 3
    return compared


@pytest.mark.parametrize(
    ("first", "to", "hours"),
    [
        (utc(3, 0), utc(4, 0), [(utc(3, 0), utc(4, 0))]),  # one whole hour: roll-up only
        (utc(3, 1), utc(4, 0), []),  # less than an hour: minutes only
        (utc(3, 30), utc(4, 30), []),  # an hour across a boundary: no whole hour in it
        (utc(3, 59), utc(5, 1), [(utc(4, 0), utc(5, 0))]),
        (utc(3, 17), utc(3, 17, day=3), [(utc(4, 0), utc(3, 0, day=3))]),  # a day off the hour
        (utc(0, 0), utc(0, 0, day=3), [(utc(0, 0), utc(0, 0, day=3))]),  # a day on the hour
        (utc(3, 0), utc(3, 0), []),  # empty
    ],
)
def test_reads_cover_each_minute_of_a_range_once(
    first: datetime, to: datetime, hours: list[tuple[datetime, datetime]]
) -> None:
    first_s, to_s = int(first.timestamp()), int(to.timestamp())
    reads = serving.reads_of("trending_batch", first_s, to_s)
    assert [
        (serving._from_seconds(r.first), serving._from_seconds(r.to))
        for r in reads
        if r.column == "hour"
    ] == hours
    covered = []
    for read in reads:
        assert read.table == (
            "trending_batch_hourly" if read.column == "hour" else "trending_batch"
        )
        covered += range(read.first, read.to, 60)
    assert sorted(covered) == list(range(first_s, to_s, 60))


@pytest.mark.parametrize("watermark", ROLL_WATERMARKS.values(), ids=ROLL_WATERMARKS.keys())
def test_rollup_answers_equal_the_minutes(tmp_path: Path, watermark: datetime | None) -> None:
    store = rolled_store(tmp_path / "store.sqlite3", ROLL_BATCH, watermark)
    assert_rollups_agree(store)
    assert assert_roll_answers(store, roll_oracle(ROLL_BATCH, watermark)) == 3 * 3 * 8 * 7


def test_replacing_or_dropping_a_batch_day_updates_the_rollup(tmp_path: Path) -> None:
    watermark = utc(0, 0, day=3)
    store = rolled_store(tmp_path / "store.sqlite3", ROLL_BATCH, watermark)
    # Day 1 recomputed with other plays, none after noon: its afternoon hours must empty out.
    redone = plays_between(utc(0, 0, day=1), utc(12, 0, day=1), seed=3, count=800)
    second_day = [e for e in ROLL_BATCH if e.event_time >= utc(0, 0)]
    with store.writing() as connection:
        for view in ("trending", "discovery"):
            rows = count_rows(redone, view)["2026-03-01"]
            serving.replace_batch_day(connection, serving.VIEWS[view], "2026-03-01", "v2", rows)
    assert_rollups_agree(store)
    assert assert_roll_answers(store, roll_oracle(redone + second_day, watermark))
    # Day 2 lost its state in the lake (refresh_view drops it).
    with store.writing() as connection:
        for view in ("trending", "discovery"):
            serving.drop_batch_day(connection, serving.VIEWS[view], "2026-03-02")
    assert_rollups_agree(store)
    assert assert_roll_answers(store, roll_oracle(redone, watermark))
    assert store.batch_days("trending") == {"2026-03-01": "v2"}


def test_pruning_speed_rows_updates_the_rollup(tmp_path: Path) -> None:
    watermark = utc(17, 30)  # off the hour: the speed roll-up keeps a part of 17:00
    store = rolled_store(tmp_path / "store.sqlite3", ROLL_BATCH, watermark)
    with store.writing() as connection:
        pruned = [
            serving.prune_speed(connection, spec, int(watermark.timestamp()))
            for spec in (serving.TRENDING, serving.DISCOVERY)
        ]
    assert all(pruned)
    assert_rollups_agree(store)
    # The split never read speed rows before the watermark: the answers are unchanged.
    assert assert_roll_answers(store, roll_oracle(ROLL_BATCH, watermark))
    with store.writing() as connection:
        for spec in (serving.TRENDING, serving.DISCOVERY):
            serving.prune_speed(connection, spec, None)  # a rebuild of the speed layer
    assert_rollups_agree(store)
    assert store.row_counts("trending")["trending_speed"] == 0


def test_a_store_from_before_the_rollup_gets_it_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    watermark = utc(17, 30)
    rolled_store(path, ROLL_BATCH, watermark).close()
    # The older code's file: the same tables without the hourly ones, user_version 0.
    with closing(sqlite3.connect(path, isolation_level=None)) as old:
        for spec in (serving.TRENDING, serving.DISCOVERY):
            for table in (spec.batch_store, spec.speed_store):
                old.execute(f"DROP TABLE {table}_hourly")
        old.execute("PRAGMA user_version = 0")
    store = ServingStore(path)
    assert assert_roll_answers(store, roll_oracle(ROLL_BATCH, watermark))
    assert_rollups_agree(store)
    with closing(sqlite3.connect(path)) as upgraded:
        version = upgraded.execute("PRAGMA user_version").fetchone()[0]
        hourly = upgraded.execute("SELECT count(*) FROM trending_batch_hourly").fetchone()[0]
    assert version == serving.SCHEMA_VERSION and hourly > 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.trending(country="us"), "country"),
        (lambda s: s.trending(country="XX"), "country"),
        (lambda s: s.trending(window=0), "window"),
        (lambda s: s.trending(limit=0), "limit"),
        (lambda s: s.trending(limit=1001), "limit"),
        (lambda s: s.discovery(window=10**9), "window"),
        (lambda s: s.sessions(member_id=-1), "member_id"),
    ],
)
def test_bad_parameters_are_clear_errors(tmp_path: Path, call, message: str) -> None:
    with pytest.raises(ServingError, match=message):
        call(ServingStore(tmp_path / "store.sqlite3"))


def test_an_empty_store_answers_empty(tmp_path: Path) -> None:
    store = ServingStore(tmp_path / "store.sqlite3")
    answer = store.trending(as_of=utc(1, 0))
    assert answer == {
        "country": None,
        "as_of": "2026-03-02T01:00:00Z",
        "window_minutes": 60,
        "batch_watermark": None,
        "speed_watermark": None,
        "titles": [],
    }
    assert store.discovery(as_of=utc(1, 0))["sources"] == []
    assert store.sessions(member_id=1)["sessions"] == []


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("2026-03-01T12:00:00Z", datetime(2026, 3, 1, 12, tzinfo=UTC)),
        ("2026-03-01T14:00:00+02:00", datetime(2026, 3, 1, 12, tzinfo=UTC)),
        ("2026-03-01 12:00:00.5z", datetime(2026, 3, 1, 12, 0, 0, 500000, tzinfo=UTC)),
    ],
)
def test_times_parse_and_print_as_utc(text: str, want: datetime) -> None:
    assert serving.parse_iso(text) == want
    assert serving.parse_iso(serving.iso(want)) == want


@pytest.mark.parametrize("text", ["2026-03-01T12:00:00", "yesterday", "2026-02-30T00:00:00Z"])
def test_bad_times_are_clear_errors(text: str) -> None:
    with pytest.raises(ServingError, match=r"ISO-8601|offset"):
        serving.parse_iso(text)


# The HTTP API in a real server process, against the CLI's JSON ------------------------------------


def served_pipeline(pipeline: Pipeline) -> Pipeline:
    """The pipeline with data in the store, also when this test runs on its own."""
    if not pipeline.sent:
        pipeline.send(traffic())
        pipeline.speed_pass()
        pipeline.compute(DAY)
        pipeline.refresh()
    return pipeline


@pytest.fixture(scope="module")
def api_server(pipeline: Pipeline):
    """(base URL, pipeline): `lambda-arch serve` on a free port over the pipeline's home."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    from lambda_arch.runtime.broker import free_port

    served = served_pipeline(pipeline)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDA_ARCH_")}
    port = free_port()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "lambda-arch"), "serve", "--port", str(port)],
        env={**env, "LAMBDA_ARCH_HOME": str(served.settings.home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"lambda-arch serve did not start: {process.stderr.read()}")
            time.sleep(0.2)
    yield base, served
    process.terminate()
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert process.wait(timeout=20) in (0, -15)


@pytest.fixture
def api(api_server, monkeypatch: pytest.MonkeyPatch):
    """The server, with this process's settings pointed at the same home (for the CLI)."""
    import os

    for name in list(os.environ):
        if name.startswith("LAMBDA_ARCH_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LAMBDA_ARCH_HOME", str(api_server[1].settings.home))
    return api_server


def get(url: str) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def cli_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    from lambda_arch.cli.main import main

    assert main([*args, "--json"]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out)


@pytest.mark.parametrize(
    ("path", "args"),
    [
        ("/trending", ["trending"]),
        (
            "/trending?country=US&window=600&as_of=2026-03-02T03:00:00Z&limit=3",
            [
                "trending",
                "--country",
                "US",
                "--window",
                "600",
                "--as-of",
                "2026-03-02T03:00:00Z",
                "--limit",
                "3",
            ],
        ),
        (
            "/discovery?window=90&as_of=2026-03-02T00:30:00%2B00:00",
            ["discovery", "--window", "90", "--as-of", "2026-03-02T00:30:00+00:00"],
        ),
        ("/sessions?member_id={member}", ["sessions", "--member", "{member}"]),
        (
            "/sessions?member_id={member}&title_id={title}",
            ["sessions", "--member", "{member}", "--title", "{title}"],
        ),
    ],
)
def test_http_bodies_equal_the_cli_json(
    api, path: str, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    base, served = api
    # A member and title with sessions on both sides of the batch watermark.
    member, title = (
        sqlite3.connect(served.store.path)
        .execute(
            "SELECT b.member_id, b.title_id FROM sessions_batch b JOIN sessions_speed s "
            "USING (member_id, title_id) ORDER BY 1, 2 LIMIT 1"
        )
        .fetchone()
    )
    path = path.format(member=member, title=title)
    args = [arg.format(member=member, title=title) for arg in args]
    status, body = get(base + path)
    assert status == 200
    assert body == cli_json(args, capsys)
    assert body.get("titles") or body.get("sources") or body.get("sessions")


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("/trending?country=us", "country"),
        ("/trending?country=XX", "country"),
        ("/trending?window=0", "window"),
        ("/trending?window=abc", "window"),
        ("/trending?limit=0", "limit"),
        ("/trending?as_of=noon", "ISO-8601"),
        ("/discovery?as_of=2026-03-01T12:00:00", "offset"),
        ("/sessions", "member_id"),
        ("/sessions?member_id=-4", "member_id"),
    ],
)
def test_bad_parameters_get_400_with_a_message(api, query: str, needle: str) -> None:
    base, _ = api
    status, body = get(base + query)
    assert status == 400
    assert set(body) == {"error"} and needle in body["error"]


def test_health_and_openapi(api) -> None:
    base, _ = api
    status, health = get(f"{base}/health")
    assert status == 200 and health["status"] == "ok"
    assert health["views"]["trending"]["batch_watermark"] == "2026-03-02T00:00:00Z"
    status, spec = get(f"{base}/openapi.json")
    assert status == 200
    assert {"/trending", "/discovery", "/sessions", "/health"} <= set(spec["paths"])
    import urllib.request

    with urllib.request.urlopen(f"{base}/docs", timeout=10) as page:
        assert page.status == 200 and b"swagger" in page.read().lower()


def test_serve_refuses_a_port_in_use(api, capsys: pytest.CaptureFixture[str]) -> None:
    from lambda_arch.cli.main import main

    base, _ = api
    port = base.rsplit(":", 1)[1]
    assert main(["serve", "--port", port]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already in use" in err


def test_committed_batches_reach_past_the_commit_log_retention(tmp_path: Path) -> None:
    """Spark keeps only the last ~100 entries of a commit log; every batch folder up to the
    newest commit is complete, the folder still being written (no commit yet) is not."""
    from lambda_arch.speed import layer as speed

    settings = Settings(
        LAMBDA_ARCH_HOME=str(tmp_path / "home"), LAMBDA_ARCH_WAREHOUSE=str(tmp_path / "lake")
    )
    commits = Path(speed.checkpoint_of(settings, speed.TRENDING)) / "commits"
    commits.mkdir(parents=True)
    for batch_id in range(152, 253):
        (commits / str(batch_id)).write_text("v1\n")
    (commits / ".252.crc").write_text("")
    table = Path(speed.SpeedPaths.from_settings(settings).table(speed.TRENDING))
    for batch_id in range(254):
        (table / f"batch_id={batch_id}").mkdir(parents=True)
    assert serving.committed_batches(settings, speed.TRENDING) == list(range(253))
    assert serving.committed_batches(settings, speed.SESSIONS) == []
