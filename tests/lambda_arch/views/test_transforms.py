"""The shared view logic on batch DataFrames, against a plain-Python recomputation.

The reference functions here (over `lambda_arch.ingest.schema.parse_payload` results) are the
independent definition of CONTRACT section 3 that test_speed.py also compares against.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lambda_arch.common.times import epoch_millis
from lambda_arch.ingest.generator import TrafficConfig, generate
from lambda_arch.ingest.schema import PlayEvent, Rejection, parse_payload
from lambda_arch.ingest.spark_schema import parse_events
from lambda_arch.views.transforms import (
    DISCOVERY_COLUMNS,
    SESSION_COLUMNS,
    TRENDING_COLUMNS,
    deduplicate,
    discovery_counts,
    quarantined,
    stitch_sessions,
    trending_counts,
    valid_events,
)

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
GAP = timedelta(minutes=30)


# Plain-Python reference ---------------------------------------------------------------------


def micros(moment: datetime) -> int:
    return epoch_millis(moment) * 1000 + moment.microsecond % 1000


def minute_of(moment: datetime) -> int:
    """Epoch microseconds of the minute an event time falls in."""
    return micros(moment.replace(second=0, microsecond=0))


def ref_trending(events: Iterable[PlayEvent]) -> Counter:
    return Counter(
        (minute_of(e.event_time), e.country, e.title_id)
        for e in events
        if e.event_type == "play_start"
    )


def ref_discovery(events: Iterable[PlayEvent]) -> Counter:
    return Counter(
        (minute_of(e.event_time), e.country, e.discovery_source)
        for e in events
        if e.event_type == "play_start"
    )


def ref_sessions(events: Iterable[PlayEvent]) -> list[tuple]:
    """(member, title, start us, end us, events, watched_ms): a gap >= 30 min splits."""
    by_key: dict[tuple[int, int], list[PlayEvent]] = defaultdict(list)
    for event in events:
        by_key[(event.member_id, event.title_id)].append(event)
    sessions = []
    for (member, title), group in by_key.items():
        group.sort(key=lambda e: e.event_time)
        current: list[PlayEvent] = [group[0]]
        for event in group[1:]:
            if event.event_time - current[-1].event_time >= GAP:
                sessions.append(_session(member, title, current))
                current = []
            current.append(event)
        sessions.append(_session(member, title, current))
    return sorted(sessions)


def _session(member: int, title: int, events: list[PlayEvent]) -> tuple:
    positions = [e.position_ms for e in events if e.position_ms is not None]
    watched = max(positions) - min(positions) if positions else 0
    return (
        member,
        title,
        micros(events[0].event_time),
        micros(events[-1].event_time),
        len(events),
        watched,
    )


def ref_dedup(records: Iterable[tuple[int, int, bytes]]) -> list[PlayEvent]:
    """Valid events of (partition, offset, payload) records, the earliest per event_id."""
    best: dict[str, tuple[Any, PlayEvent]] = {}
    for partition, offset, payload in records:
        event = parse_payload(payload)
        if isinstance(event, Rejection):
            continue
        rank = (event.event_time, partition, offset)
        if event.event_id not in best or rank < best[event.event_id][0]:
            best[event.event_id] = (rank, event)
    return [event for _, event in best.values()]


# Spark results as plain values ----------------------------------------------------------------


def counts_of(df: DataFrame) -> Counter:
    """A view DataFrame (minute, key..., plays) as a Counter keyed like the reference."""
    keys = [c for c in df.columns if c not in ("minute", "plays")]
    rows = df.select(F.unix_micros("minute").alias("m"), *keys, "plays").collect()
    result = Counter({(r["m"], *[r[k] for k in keys]): r["plays"] for r in rows})
    assert len(result) == len(rows), "a view row appears twice"
    return result


def sessions_of(df: DataFrame) -> list[tuple]:
    rows = df.select(
        "member_id",
        "title_id",
        F.unix_micros("session_start").alias("s"),
        F.unix_micros("session_end").alias("e"),
        "events",
        "watched_ms",
    ).collect()
    return sorted(tuple(r) for r in rows)


def event(
    event_id: str,
    moment: datetime,
    *,
    member: int = 1,
    title: int = 10,
    kind: str = "play_heartbeat",
    position: int | None = None,
    country: str = "US",
    source: str | None = None,
) -> bytes:
    document: dict[str, Any] = {
        "event_id": event_id,
        "event_type": kind,
        "event_time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "member_id": member,
        "title_id": title,
        "country": country,
    }
    if position is not None:
        document["position_ms"] = position
    if source is not None:
        document["discovery_source"] = source
    return json.dumps(document).encode()


def frame(spark, records: list[tuple[int, int, bytes]]) -> DataFrame:
    """(partition, offset, payload) records as a Kafka-like DataFrame, parsed."""
    rows = [("t", p, o, bytearray(v)) for p, o, v in records]
    raw = spark.createDataFrame(rows, "topic string, partition int, offset bigint, value binary")
    return parse_events(raw, "value")


# Tests ----------------------------------------------------------------------------------------


def gap_case() -> list[bytes]:
    """Sessions around the 30-minute boundary, positions present, partial and absent."""
    t = START
    return [
        # member 1: 29:59 keeps the session, 30:00 and 30:01 start new ones.
        event("a1", t, position=0),
        event("a2", t + timedelta(minutes=29, seconds=59), position=1_000),
        event("a3", t + timedelta(minutes=59, seconds=59)),
        event("a4", t + timedelta(minutes=90), position=5_000),
        # member 2, out of order: 29:59.999 keeps the session, then 30:00.000 splits it.
        event("b2", t + timedelta(minutes=29, seconds=59, milliseconds=999), member=2),
        event("b1", t, member=2, position=700),
        event("b3", t + timedelta(minutes=59, seconds=59, milliseconds=999), member=2),
        event("b4", t + timedelta(minutes=70), member=2, position=100),
        event("b5", t + timedelta(minutes=71), member=2, position=60_100),
        # member 2 on another title at the same times: its own sessions.
        event("c1", t + timedelta(minutes=1), member=2, title=11),
        event("c2", t + timedelta(minutes=31), member=2, title=11),
    ]


def test_sessions_split_at_exactly_30_minutes(spark) -> None:
    payloads = gap_case()
    records = [(0, i, v) for i, v in enumerate(payloads)]
    got = sessions_of(stitch_sessions(deduplicate(valid_events(frame(spark, records)))))
    expected = ref_sessions(ref_dedup(records))
    assert got == expected
    us = 1_000_000
    start = micros(START)
    # Spelled out, so that the reference itself is checked against the contract's words.
    assert [s for s in got if s[0] == 1] == [
        (1, 10, start, start + (29 * 60 + 59) * us, 2, 1_000),  # 29:59 gap: same session
        (1, 10, start + (59 * 60 + 59) * us, start + (59 * 60 + 59) * us, 1, 0),  # 30:00: new
        (1, 10, start + 90 * 60 * us, start + 90 * 60 * us, 1, 0),  # 30:01: new; one position
    ]
    assert [s[2:] for s in got if s[:2] == (2, 10)] == [
        (start, start + (29 * 60 + 59) * us + 999_000, 2, 0),  # one position only: 0
        (start + (59 * 60 + 59) * us + 999_000, start + 71 * 60 * us, 3, 60_000),
    ]
    assert list(stitch_sessions(valid_events(frame(spark, records))).columns) == list(
        SESSION_COLUMNS
    )


def test_deduplicate_keeps_the_earliest_copy(spark) -> None:
    t = START
    records = [
        (1, 5, event("x", t + timedelta(seconds=5), title=1, kind="play_start")),
        (0, 9, event("x", t, title=2, kind="play_start")),  # earliest time wins
        (2, 3, event("y", t, title=3, kind="play_start")),
        (1, 2, event("y", t, title=4, kind="play_start")),  # same time: lower partition wins
        (1, 1, event("y", t, title=5, kind="play_start")),  # ... then lower offset
        (0, 1, b'{"event_id": "z"}'),  # quarantined: not an event at all
    ]
    got = deduplicate(valid_events(frame(spark, records))).select("event_id", "title_id")
    assert sorted(tuple(r) for r in got.collect()) == [("x", 2), ("y", 5)]
    assert {e.event_id: e.title_id for e in ref_dedup(records)} == {"x": 2, "y": 5}


@pytest.fixture(scope="module")
def traffic() -> list[tuple[int, int, bytes]]:
    """Generated records with duplicates, late and malformed ones, on three partitions."""
    config = TrafficConfig(
        seed=5,
        start=START,
        events_per_second=1.0,
        duplicate_rate=0.08,
        late_rate=0.05,
        malformed_rate=0.06,
        members=40,
        titles=12,
    )
    offsets: Counter = Counter()
    records = []
    for record in itertools.islice(generate(config), 1_500):
        partition = int(record.key or b"0") % 3 if (record.key or b"").isdigit() else 0
        records.append((partition, offsets[partition], record.value))
        offsets[partition] += 1
    return records


def test_views_of_generated_traffic_match_the_reference(spark, traffic) -> None:
    parsed = frame(spark, traffic).cache()
    try:
        events = deduplicate(valid_events(parsed)).cache()
        reference = ref_dedup(traffic)
        assert len(reference) < len(traffic)  # duplicates and malformed records were there
        assert events.count() == len(reference)

        trending = trending_counts(events)
        assert tuple(trending.columns) == TRENDING_COLUMNS
        assert dict(trending.dtypes)["plays"] == "bigint"
        assert counts_of(trending) == ref_trending(reference)

        discovery = discovery_counts(events)
        assert tuple(discovery.columns) == DISCOVERY_COLUMNS
        assert counts_of(discovery) == ref_discovery(reference)

        assert sessions_of(stitch_sessions(events)) == ref_sessions(reference)

        rejected = [(p, o, v) for p, o, v in traffic if isinstance(parse_payload(v), Rejection)]
        bad = quarantined(parsed).select("partition", "offset", "payload", "reason").collect()
        assert sorted((r[0], r[1], bytes(r[2])) for r in bad) == sorted(rejected)
        assert {r[3] for r in bad} == {parse_payload(v).reason for _, _, v in rejected}
        assert valid_events(parsed).count() + len(bad) == len(traffic)
        events.unpersist()
    finally:
        parsed.unpersist()
