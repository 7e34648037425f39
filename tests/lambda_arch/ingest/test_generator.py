"""The synthetic traffic: determinism, schema validity and the distributions the views rely on."""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import pytest

from lambda_arch.ingest.generator import (
    KIND_DUPLICATE,
    KIND_EVENT,
    KIND_LATE,
    KIND_MALFORMED,
    GeneratedRecord,
    TrafficConfig,
    generate,
)
from lambda_arch.ingest.schema import PlayEvent, Rejection, parse_payload

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SAMPLE = 40_000


def take(config: TrafficConfig, count: int) -> list[GeneratedRecord]:
    return list(itertools.islice(generate(config), count))


@pytest.fixture(scope="module")
def clean_sample() -> list[GeneratedRecord]:
    """A long stream without injected faults (a few hours of event time at 5 events/s)."""
    return take(TrafficConfig(seed=11, start=START, events_per_second=5.0), SAMPLE)


@pytest.fixture(scope="module")
def clean_events(clean_sample: list[GeneratedRecord]) -> list[PlayEvent]:
    events = [parse_payload(record.value) for record in clean_sample]
    assert all(isinstance(event, PlayEvent) for event in events)
    return events  # type: ignore[return-value]


def test_same_seed_same_bytes_and_different_seed_different_bytes() -> None:
    config = TrafficConfig(seed=7, start=START, duplicate_rate=0.05, malformed_rate=0.05)
    first = [(r.key, r.value) for r in take(config, 3_000)]
    second = [(r.key, r.value) for r in take(config, 3_000)]
    other = [(r.key, r.value) for r in take(TrafficConfig(seed=8, start=START), 3_000)]
    assert first == second
    assert first != other


def test_every_clean_record_is_a_valid_event_keyed_by_member(
    clean_sample: list[GeneratedRecord], clean_events: list[PlayEvent]
) -> None:
    assert {record.kind for record in clean_sample} == {KIND_EVENT}
    for record, event in zip(clean_sample, clean_events, strict=True):
        assert record.key == str(event.member_id).encode()
        assert event.event_time == record.event_time
    assert len({event.event_id for event in clean_events}) == len(clean_events)


def test_emit_clock_never_goes_back_and_follows_the_rate(
    clean_sample: list[GeneratedRecord],
) -> None:
    emits = [record.emit_time for record in clean_sample]
    assert all(a <= b for a, b in itertools.pairwise(emits))
    seconds = (emits[-1] - emits[0]).total_seconds()
    assert len(emits) / seconds == pytest.approx(5.0, rel=0.15)


def test_title_popularity_is_skewed(clean_events: list[PlayEvent]) -> None:
    plays = Counter(e.title_id for e in clean_events if e.event_type == "play_start")
    ranked = [count for _, count in plays.most_common()]
    top_share = sum(ranked[:10]) / sum(ranked)
    # Zipf-like: the top 10 of thousands of titles take a large share, the head beats the tail.
    assert top_share > 0.15
    assert ranked[0] > 10 * ranked[len(ranked) // 2]


def test_trending_titles_change_over_time() -> None:
    """Hype curves: in one stream, the top titles of the first and the sixth day differ."""
    config = TrafficConfig(seed=3, start=START, events_per_second=0.1)
    starts_by_day: dict[int, Counter[int]] = defaultdict(Counter)
    for record in generate(config):
        day = (record.emit_time - START).days
        if day > 5:
            break
        event = parse_payload(record.value)
        if isinstance(event, PlayEvent) and event.event_type == "play_start":
            starts_by_day[day][event.title_id] += 1
    first = {title for title, _ in starts_by_day[0].most_common(10)}
    overlaps = [len(first & {t for t, _ in starts_by_day[day].most_common(10)}) for day in range(6)]
    assert overlaps[0] == 10 and min(overlaps[1:]) <= 7


def test_countries_devices_and_sources_have_plausible_shares(
    clean_events: list[PlayEvent],
) -> None:
    countries = Counter(e.country for e in clean_events)
    assert 15 <= len(countries) <= 30
    assert countries.most_common(1)[0][0] == "US"
    devices = Counter(e.device for e in clean_events)
    assert devices.most_common(1)[0][0] == "tv"
    assert {"tv", "mobile", "web"} <= set(devices)
    sources = Counter(e.discovery_source for e in clean_events if e.event_type == "play_start")
    assert len(sources) >= 8
    assert max(sources.values()) / sum(sources.values()) < 0.6


def test_countries_have_different_tastes(clean_events: list[PlayEvent]) -> None:
    home: Counter[int] = Counter()
    abroad: Counter[int] = Counter()
    for event in clean_events:
        if event.event_type == "play_start":
            (home if event.country == "US" else abroad)[event.title_id] += 1
    us_top = {title for title, _ in home.most_common(10)}
    abroad_top = {title for title, _ in abroad.most_common(10)}
    assert len(us_top & abroad_top) <= 7


def test_sessions_are_start_heartbeats_stop_with_increasing_positions(
    clean_events: list[PlayEvent],
) -> None:
    by_pair: dict[tuple[int, int], list[PlayEvent]] = defaultdict(list)
    for event in clean_events:
        by_pair[(event.member_id, event.title_id)].append(event)
    gaps: list[float] = []
    complete = 0
    for events in by_pair.values():
        events.sort(key=lambda e: e.event_time)
        types = [e.event_type for e in events]
        if types[0] == "play_start" and types[-1] == "play_stop":
            complete += 1
        for before, after in itertools.pairwise(events):
            if before.event_type == "play_stop":
                continue  # a resume after a pause
            if before.position_ms is not None and after.position_ms is not None:
                assert after.position_ms >= before.position_ms
            if after.event_type == "play_heartbeat":
                gaps.append((after.event_time - before.event_time).total_seconds())
    assert complete > 100
    assert gaps and min(gaps) >= 30 and max(gaps) <= 60
    heartbeats = sum(e.event_type == "play_heartbeat" for e in clean_events)
    starts = sum(e.event_type == "play_start" for e in clean_events)
    assert heartbeats > 5 * starts  # sessions last minutes, with a heartbeat every 30-60 s


def test_some_sessions_pause_for_thirty_minutes_or_more(clean_events: list[PlayEvent]) -> None:
    by_pair: dict[tuple[int, int], list[datetime]] = defaultdict(list)
    for event in clean_events:
        by_pair[(event.member_id, event.title_id)].append(event.event_time)
    long_gaps = sum(
        1
        for times in by_pair.values()
        for a, b in itertools.pairwise(sorted(times))
        if b - a >= timedelta(minutes=30)
    )
    assert long_gaps >= 3


def test_fault_rates_are_within_tolerance() -> None:
    config = TrafficConfig(
        seed=5,
        start=START,
        events_per_second=5.0,
        duplicate_rate=0.04,
        late_rate=0.03,
        malformed_rate=0.02,
        allowed_lateness_min=10,
    )
    records = take(config, 60_000)
    # Late records are held back 10-70 minutes: count shares once that pipeline is full.
    steady = [r for r in records if r.emit_time > START + timedelta(minutes=75)]
    kinds = Counter(record.kind for record in steady)
    total = len(steady)
    assert kinds[KIND_DUPLICATE] / total == pytest.approx(0.04, abs=0.008)
    assert kinds[KIND_LATE] / total == pytest.approx(0.03, abs=0.008)
    assert kinds[KIND_MALFORMED] / total == pytest.approx(0.02, abs=0.006)

    seen: dict[str, bytes] = {}
    latest = START
    reasons: Counter[str] = Counter()
    for record in records:
        verdict = parse_payload(record.value)
        if record.kind == KIND_MALFORMED:
            assert isinstance(verdict, Rejection)
            reasons[verdict.reason.split(":")[0]] += 1
            continue
        assert isinstance(verdict, PlayEvent)
        if record.kind == KIND_DUPLICATE:
            assert seen[verdict.event_id] == record.value  # an exact re-send
        else:
            seen[verdict.event_id] = record.value
        if record.kind == KIND_LATE:
            assert latest - verdict.event_time > timedelta(minutes=10)
        latest = max(latest, verdict.event_time)
    assert len(reasons) >= 4  # malformed payloads break different rules


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="events_per_second"):
        generate(TrafficConfig(events_per_second=0))
    with pytest.raises(ValueError, match="duplicate_rate"):
        generate(TrafficConfig(duplicate_rate=1.5))
    with pytest.raises(ValueError, match=r"at most 0\.5"):
        generate(TrafficConfig(duplicate_rate=0.3, malformed_rate=0.3))


def test_epoch_millisecond_clients_exist_and_parse_to_the_same_instant(
    clean_sample: list[GeneratedRecord],
) -> None:
    epoch_records = [r for r in clean_sample if isinstance(json.loads(r.value)["event_time"], int)]
    assert 0 < len(epoch_records) < len(clean_sample) / 2
    for record in epoch_records[:100]:
        event = parse_payload(record.value)
        assert isinstance(event, PlayEvent) and event.event_time == record.event_time
