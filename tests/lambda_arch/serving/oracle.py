"""The plain-Python truth the serving tests compare against (CONTRACT section 3): valid events
once per event_id, the answers each layer's events give, and stores filled from plain plays for
the hourly roll-up tests. No Spark, no broker."""

from __future__ import annotations

import itertools
import random
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lambda_arch.ingest.schema import DISCOVERY_SOURCES, PlayEvent, parse_payload
from lambda_arch.serving import answers
from lambda_arch.serving.store import ServingStore, insert_speed, iso, load_batch_days
from lambda_arch.views.spec import DISCOVERY, TRENDING, VIEWS

GAP = timedelta(minutes=30)


def utc(hour: int, minute: int = 0, day: int = 2) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=UTC)


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
                        "session_start": iso(current[0].event_time),
                        "session_end": iso(current[-1].event_time),
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


def assert_rollups_agree(store: ServingStore) -> None:
    """Every hourly roll-up holds exactly the sums of its minute table, per (hour, country,
    key) and per (hour, key) over all countries, recomputed here in plain Python."""
    with closing(sqlite3.connect(store.path)) as connection:
        for spec in (TRENDING, DISCOVERY):
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


# Plain plays for the hourly roll-up: answers equal to the minutes it sums -------------------------


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
        load_batch_days(store, view, days, watermark)
        for half in halves:
            rows = [row for day in count_rows(half, view).values() for row in day]
            with store.writing() as connection:
                insert_speed(connection, VIEWS[view], rows)
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
            got = answers.trending(store, country=country, as_of=as_of, window=window, limit=limit)
            assert got["titles"] == oracle.trending(as_of, window, country, limit), where
        got = answers.discovery(store, country=country, as_of=as_of, window=window)
        assert got["sources"] == oracle.discovery(as_of, window, country), where
        compared += 3
    return compared
