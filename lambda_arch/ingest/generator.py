"""Synthetic play events (CONTRACT section 2) for the producer, demos, benchmarks and tests.

The model, all in event time (the generator never looks at the wall clock):
- a catalog of titles with Zipf popularity; each title is released at some time (most before the
  start, some during the run, series get a new season every few months) and then follows a hype
  curve that rises within hours and decays over days, so the trending titles keep changing;
- about 20 countries with different shares (US largest), device mixes and tastes (genre
  affinities, local originals that are hits at home);
- members with a home country, a primary device and a client profile (a few old clients send
  epoch-millisecond times, omit device or position, or add unknown fields);
- viewing sessions per (member, title): `play_start`, a `play_heartbeat` every 30-60 s with the
  playback position, `play_stop`; lognormal lengths from a minute to 2.5 h, capped by the title's
  runtime; a few sessions pause (some for 30+ minutes) and resume via continue watching;
- session arrivals are Poisson, scaled so the stream has `events_per_second` records per second
  of event time; the stream starts in steady state (sessions already in progress at the start
  send heartbeats without their earlier play_start);
- on top of that: exact re-sends (duplicates), events held back past the allowed lateness, and
  malformed payloads with a variety of reasons.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import json
import math
import random
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from operator import mul
from typing import Any

from lambda_arch.common.times import epoch_millis, format_time, from_epoch_millis
from lambda_arch.ingest.schema import DEVICES

KIND_EVENT = "event"
KIND_DUPLICATE = "duplicate"
KIND_LATE = "late"
KIND_MALFORMED = "malformed"

PLAY_START = "play_start"
PLAY_HEARTBEAT = "play_heartbeat"
PLAY_STOP = "play_stop"

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

# Heartbeats: a per-session base interval plus a little jitter, always within [30 s, 60 s].
HEARTBEAT_BASE_MIN_MS = 30 * SECOND_MS
HEARTBEAT_BASE_SPAN_MS = 25 * SECOND_MS
HEARTBEAT_JITTER_MS = 5 * SECOND_MS
MEAN_HEARTBEAT_MS = HEARTBEAT_BASE_MIN_MS + (HEARTBEAT_BASE_SPAN_MS + HEARTBEAT_JITTER_MS) / 2
# Heartbeats per ms averaged over sessions: E[1 / interval], larger than 1 / E[interval].
HEARTBEATS_PER_MS = (
    math.log(
        (HEARTBEAT_BASE_MIN_MS + HEARTBEAT_BASE_SPAN_MS + HEARTBEAT_JITTER_MS / 2)
        / (HEARTBEAT_BASE_MIN_MS + HEARTBEAT_JITTER_MS / 2)
    )
    / HEARTBEAT_BASE_SPAN_MS
)
# A stop comes at least this long after the previous event (clients debounce).
MIN_STOP_GAP_MS = SECOND_MS

# Watched time per session: lognormal, median 20 min, clipped to [1 min, 150 min].
WATCH_MEDIAN_MS = 20 * MINUTE_MS
WATCH_SIGMA = 0.9
MIN_WATCH_MS = MINUTE_MS
MAX_WATCH_MS = 150 * MINUTE_MS
# Pauses: some sessions stop and resume later; long pauses (>= 30 min) split the session.
PAUSE_SHARE = 0.05
PAUSE_MIN_WATCH_MS = 8 * MINUTE_MS
SHORT_PAUSE_SHARE = 0.35
LONG_PAUSE_MIN_MS = 30 * MINUTE_MS + 30 * SECOND_MS
LONG_PAUSE_MEAN_EXTRA_MS = 40 * MINUTE_MS
LONG_PAUSE_MAX_MS = 4 * HOUR_MS
RESUME_DEVICE_SWITCH = 0.3
OMIT_SOURCE_SHARE = 0.015

# Titles: popularity = zipf base * (catalog floor + hype(age since release or season start)).
ZIPF_EXPONENT = 1.05
CATALOG_FLOOR = 0.15
SERIES_SHARE = 0.55
RELEASED_BEFORE_START = 0.85
CATALOG_AGE_MAX_MS = 180 * DAY_MS
RELEASE_HORIZON_MS = 60 * DAY_MS
SEASON_CYCLE_MIN_MS = 60 * DAY_MS
SEASON_CYCLE_MAX_MS = 365 * DAY_MS
FRESH_AGE_MS = 7 * DAY_MS
# Popularity tables are recomputed this often (event time): hype moves over hours, not seconds.
REFRESH_MS = 5 * MINUTE_MS
GENRES = 12
US_ORIGIN_SHARE = 0.55
HOME_BOOST = 5.0
ABROAD_FACTOR = 0.4
BREAKOUT_SHARE = 0.15

# Steady state at the start: sessions in progress send their next heartbeat within a minute.
WARM_WINDOW_MS = 60 * SECOND_MS
# Duplicates are re-sent after a lognormal delay (median 10 s), late events after the allowed
# lateness plus up to an hour.
DUPLICATE_MEDIAN_DELAY_MS = 10 * SECOND_MS
DUPLICATE_DELAY_SIGMA = 1.5
DUPLICATE_MAX_DELAY_MS = 15 * MINUTE_MS
LATE_EXTRA_MAX_MS = HOUR_MS
LATE_MARGIN_MS = SECOND_MS

# (country, share of members in percent); the shares are rough but the US is the largest.
COUNTRY_SHARES: tuple[tuple[str, float], ...] = (
    ("US", 27.0),
    ("BR", 8.0),
    ("GB", 7.0),
    ("MX", 6.0),
    ("IN", 6.0),
    ("DE", 5.0),
    ("FR", 5.0),
    ("CA", 4.5),
    ("JP", 4.0),
    ("KR", 3.5),
    ("ES", 3.5),
    ("IT", 3.0),
    ("AU", 2.5),
    ("TR", 2.0),
    ("AR", 2.0),
    ("PL", 2.0),
    ("NL", 2.0),
    ("PH", 2.0),
    ("ID", 2.0),
    ("SE", 1.5),
)
MOBILE_FIRST: frozenset[str] = frozenset({"IN", "PH", "ID", "BR", "MX", "TR"})
# Device weights, in the order of schema.DEVICES (tv, mobile, web, tablet, console, other).
DEVICE_WEIGHTS: tuple[float, ...] = (44, 24, 13, 10, 7, 2)
MOBILE_FIRST_DEVICE_WEIGHTS: tuple[float, ...] = (25, 50, 10, 8, 5, 2)
# Discovery sources of a new session: fresh titles come from the promoted rows, the back
# catalog from recommendations and continue watching.
FRESH_SOURCE_WEIGHTS: dict[str, float] = {
    "because_you_watched": 16,
    "trending_now": 16,
    "continue_watching": 6,
    "top_10": 14,
    "search": 12,
    "my_list": 8,
    "new_releases": 16,
    "genre_row": 5,
    "billboard": 6,
    "other": 1,
}
CATALOG_SOURCE_WEIGHTS: dict[str, float] = {
    "because_you_watched": 30,
    "trending_now": 6,
    "continue_watching": 20,
    "top_10": 5,
    "search": 14,
    "my_list": 11,
    "new_releases": 2,
    "genre_row": 9,
    "billboard": 1.5,
    "other": 1.5,
}
CONTINUE_WATCHING = "continue_watching"
# Client profiles (per member, out of 256): old clients that send epoch-ms times, omit the
# device or the position, or send an extra field the schema does not know.
EPOCH_MS_CLIENTS = 12
NO_DEVICE_CLIENTS = 5
NO_POSITION_CLIENTS = 4
EXTRA_FIELD_CLIENTS = 8
EXTRA_FIELD = ',"app_version":"8.112.0"'

_MASK64 = (1 << 64) - 1
_UUID_VERSION_CLEAR = ~((0xF << 76) | (0x3 << 62))
_UUID_VERSION_SET = (0x4 << 76) | (0x2 << 62)


@dataclass(frozen=True)
class TrafficConfig:
    """What traffic to generate; rates are shares of all emitted records."""

    seed: int | None = None  # same seed + same start -> byte-identical records
    start: datetime | None = (
        None  # event clock start (aware UTC); None -> now, floored to the second
    )
    events_per_second: float = 100.0  # records per second of the event clock
    duplicate_rate: float = 0.0  # re-sends of an earlier record (same event_id, same bytes)
    late_rate: float = 0.0  # events emitted more than allowed_lateness_min behind the clock
    malformed_rate: float = 0.0  # extra records that break a schema rule
    allowed_lateness_min: int = 10
    members: int = 50_000
    titles: int = 2_000


@dataclass(frozen=True, slots=True)
class GeneratedRecord:
    """One Kafka record: key and value as sent, plus what the generator knows about it."""

    key: bytes | None  # member_id as ASCII text; None for some malformed records
    value: bytes  # the JSON payload as UTF-8 bytes
    kind: str  # "event" | "duplicate" | "late" | "malformed"
    event_time: datetime | None  # the event's time (None for malformed)
    emit_time: datetime  # the event clock when the record is emitted (non-decreasing)


def generate(config: TrafficConfig) -> Iterator[GeneratedRecord]:
    """An infinite stream of records in emit order; raises ValueError for a bad config."""
    _check(config)
    return _stream(config)


def _check(config: TrafficConfig) -> None:
    if not (config.events_per_second > 0 and math.isfinite(config.events_per_second)):
        raise ValueError("events_per_second must be a positive number")
    for name in ("duplicate_rate", "late_rate", "malformed_rate"):
        rate = getattr(config, name)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"{name} must be in [0, 1)")
    extra = config.duplicate_rate + config.malformed_rate
    # Each base event carries at most one duplicate or malformed sibling.
    if extra > 0.5:
        raise ValueError("duplicate_rate + malformed_rate must be at most 0.5")
    if config.late_rate > 1.0 - extra:
        raise ValueError("late_rate must be at most 1 - duplicate_rate - malformed_rate")
    if config.allowed_lateness_min < 0:
        raise ValueError("allowed_lateness_min must be >= 0")
    if config.members < 1 or config.titles < 1:
        raise ValueError("members and titles must be >= 1")


def _start_of(config: TrafficConfig) -> datetime:
    if config.start is None:
        return datetime.now(UTC).replace(microsecond=0)
    start = config.start
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    # Whole milliseconds, like every event time the generator writes.
    return from_epoch_millis(epoch_millis(start))


def _mix64(value: int) -> int:
    """splitmix64: member attributes as a pure function of (seed, member), no table needed."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def _cumulative(weights: Any) -> list[float]:
    return list(accumulate(float(w) for w in weights))


def _pick(rng: random.Random, cumulative: list[float]) -> int:
    index = bisect_right(cumulative, rng.random() * cumulative[-1])
    return min(index, len(cumulative) - 1)


def _runtime(rng: random.Random, series: bool) -> int:
    """Runtime of an episode (series) or a movie, in ms."""
    if series:
        return rng.randint(22, 60) * MINUTE_MS
    return rng.randint(80, 150) * MINUTE_MS


def _plan(rng: random.Random, runtime: int, source: str) -> tuple[int, int, int, int]:
    """(start position, watched ms, pause point in watched ms, pause length) of a session."""
    start = int(runtime * rng.uniform(0.05, 0.85)) if source == CONTINUE_WATCHING else 0
    watch = int(rng.lognormvariate(math.log(WATCH_MEDIAN_MS), WATCH_SIGMA))
    watch = max(MIN_WATCH_MS, min(watch, MAX_WATCH_MS, runtime - start))
    pause_at = pause_ms = 0
    if watch >= PAUSE_MIN_WATCH_MS and rng.random() < PAUSE_SHARE:
        pause_at = int(watch * rng.uniform(0.2, 0.8))
        if rng.random() < SHORT_PAUSE_SHARE:
            pause_ms = rng.randint(2 * MINUTE_MS, 25 * MINUTE_MS)
        else:
            extra = rng.expovariate(1.0 / LONG_PAUSE_MEAN_EXTRA_MS)
            pause_ms = int(min(LONG_PAUSE_MIN_MS + extra, LONG_PAUSE_MAX_MS))
    return start, watch, pause_at, pause_ms


def _normal_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _clipped_watch(cap_ms: float) -> tuple[float, float]:
    """(E[watch], P(watch >= pause threshold)) of max(MIN, min(lognormal, cap)), in closed form."""
    mu = math.log(WATCH_MEDIAN_MS)
    sigma = WATCH_SIGMA
    low = MIN_WATCH_MS
    high = max(min(cap_ms, MAX_WATCH_MS), low)
    z_low = (math.log(low) - mu) / sigma
    z_high = (math.log(high) - mu) / sigma
    middle = math.exp(mu + sigma * sigma / 2) * (
        _normal_cdf(z_high - sigma) - _normal_cdf(z_low - sigma)
    )
    mean = low * _normal_cdf(z_low) + middle + high * (1.0 - _normal_cdf(z_high))
    if high < PAUSE_MIN_WATCH_MS:
        return mean, 0.0
    return mean, 1.0 - _normal_cdf((math.log(PAUSE_MIN_WATCH_MS) - mu) / sigma)


@functools.cache
def _session_expectation(runtime_ms: int, continue_watching: bool) -> tuple[float, float]:
    """(records per session, emitting ms per session) of `_plan` for one runtime and source kind.

    The arrival rate follows from it, so that the stream has the configured density; it is
    exact in expectation (not sampled), so the density does not depend on the seed.
    """
    if continue_watching:
        # Start positions are uniform over [5 %, 85 %] of the runtime: midpoint rule over it.
        steps = 32
        watch = pause = 0.0
        for step in range(steps):
            share = 0.05 + 0.8 * (step + 0.5) / steps
            mean, pause_share = _clipped_watch(runtime_ms * (1.0 - share))
            watch += mean / steps
            pause += pause_share / steps
    else:
        watch, pause = _clipped_watch(runtime_ms)
    segments = 1.0 + PAUSE_SHARE * pause
    # Per segment: start, stop, and the renewal count of heartbeats strictly inside it.
    events = segments * 1.5 + watch * HEARTBEATS_PER_MS
    return events, watch


class _Session:
    """One viewing session of a member on a title; mutable state stepped by the event heap."""

    __slots__ = (
        "country",
        "device",
        "fixed",
        "gap_ms",
        "key",
        "member_id",
        "next_position",
        "next_type",
        "pair",
        "pause_ms",
        "profile",
        "segment_end",
        "source",
        "title_id",
        "watch_end",
    )

    def __init__(self) -> None:
        self.country = ""
        self.device = ""
        self.fixed = ""
        self.gap_ms = 0
        self.key = b""
        self.member_id = 0
        self.next_position = 0
        self.next_type = PLAY_START
        self.pair = 0
        self.pause_ms = 0
        self.profile = 0
        self.segment_end = 0
        self.source: str | None = None
        self.title_id = 0
        self.watch_end = 0

    def refresh_fixed(self) -> None:
        """The payload fields that do not change between events, pre-rendered once."""
        profile = self.profile
        parts = [f',"member_id":{self.member_id},"title_id":{self.title_id}']
        parts.append(f',"country":"{self.country}"')
        if not profile & _NO_DEVICE:
            parts.append(f',"device":"{self.device}"')
        if self.source is not None:
            parts.append(f',"discovery_source":"{self.source}"')
        if profile & _EXTRA_FIELD:
            parts.append(EXTRA_FIELD)
        self.fixed = "".join(parts)


_EPOCH_MS = 1
_NO_DEVICE = 2
_NO_POSITION = 4
_EXTRA_FIELD = 8


class _World:
    """The static catalog, countries and members, and the popularity tables of the moment."""

    def __init__(self, config: TrafficConfig, rng: random.Random, start_ms: int) -> None:
        self.rng = rng
        self.start_ms = start_ms
        self.members = config.members
        self.titles = config.titles
        self.countries = [code for code, _ in COUNTRY_SHARES]
        self.country_cumulative = _cumulative(share for _, share in COUNTRY_SHARES)
        self.device_cumulative = [
            _cumulative(MOBILE_FIRST_DEVICE_WEIGHTS if code in MOBILE_FIRST else DEVICE_WEIGHTS)
            for code in self.countries
        ]
        self.sources = list(CATALOG_SOURCE_WEIGHTS)
        self.fresh_source_cumulative = _cumulative(FRESH_SOURCE_WEIGHTS[s] for s in self.sources)
        self.catalog_source_cumulative = _cumulative(
            CATALOG_SOURCE_WEIGHTS[s] for s in self.sources
        )
        self.member_salt = rng.getrandbits(64)
        # Member ids are scattered over [1, members] so heavy viewers are not all low ids.
        stride = rng.randrange(self.members // 3 + 1, self.members + 2) | 1
        while math.gcd(stride, self.members) != 1:
            stride += 2
        self.member_stride = stride
        self.member_offset = rng.randrange(self.members)
        self.member_cache: dict[int, tuple[int, int, int]] = {}
        self._build_titles(rng, start_ms)
        self.bucket = -1
        self.weights: list[float] = []
        self.fresh: list[bool] = []
        self.tables: list[list[float]] = []
        self.events_per_session = 1.0
        self.emitting_per_session = 0.0
        self.refresh(start_ms)

    def _build_titles(self, rng: random.Random, start_ms: int) -> None:
        count = self.titles
        ranks = list(range(1, count + 1))
        rng.shuffle(ranks)
        self.base = [rank**-ZIPF_EXPONENT for rank in ranks]
        self.runtime: list[int] = []
        self.release: list[int] = []
        self.cycle: list[int] = []
        self.peak: list[float] = []
        self.rise: list[float] = []
        self.decay: list[float] = []
        genres: list[int] = []
        origins: list[int] = []
        breakout: list[bool] = []
        non_us = _cumulative(share for _, share in COUNTRY_SHARES[1:])
        for _ in range(count):
            series = rng.random() < SERIES_SHARE
            self.runtime.append(_runtime(rng, series))
            if series:
                self.cycle.append(rng.randint(SEASON_CYCLE_MIN_MS, SEASON_CYCLE_MAX_MS))
            else:
                self.cycle.append(0)
            if rng.random() < RELEASED_BEFORE_START:
                self.release.append(start_ms - rng.randrange(CATALOG_AGE_MAX_MS))
            else:
                self.release.append(start_ms + rng.randrange(RELEASE_HORIZON_MS))
            self.peak.append(rng.lognormvariate(0.0, 0.5))
            self.rise.append(rng.uniform(2, 10) * HOUR_MS)
            self.decay.append(rng.uniform(1, 6) * DAY_MS)
            genres.append(rng.randrange(GENRES))
            origins.append(0 if rng.random() < US_ORIGIN_SHARE else 1 + _pick(rng, non_us))
            breakout.append(rng.random() < BREAKOUT_SHARE)
        # Expected records and emitting time of a session, by whether the title is fresh (the
        # source mix, hence the share of continue-watching sessions, differs).
        self.session_events: dict[bool, list[float]] = {}
        self.session_emitting: dict[bool, list[float]] = {}
        for fresh, weights in ((True, FRESH_SOURCE_WEIGHTS), (False, CATALOG_SOURCE_WEIGHTS)):
            resumed = weights[CONTINUE_WATCHING] / sum(weights.values())
            events = []
            emitting = []
            for runtime in self.runtime:
                new_events, new_ms = _session_expectation(runtime, False)
                resumed_events, resumed_ms = _session_expectation(runtime, True)
                events.append((1 - resumed) * new_events + resumed * resumed_events)
                emitting.append((1 - resumed) * new_ms + resumed * resumed_ms)
            self.session_events[fresh] = events
            self.session_emitting[fresh] = emitting
        # Country tastes: genre affinities, and local originals that are hits at home.
        self.boost: list[list[float]] = []
        for country in range(len(self.countries)):
            affinity = [rng.lognormvariate(0.0, 0.5) for _ in range(GENRES)]
            row = []
            for title in range(count):
                factor = affinity[genres[title]]
                origin = origins[title]
                if origin == country and origin != 0:
                    factor *= HOME_BOOST
                elif origin != 0 and not breakout[title]:
                    factor *= ABROAD_FACTOR
                row.append(factor)
            self.boost.append(row)

    def refresh(self, now_ms: int) -> None:
        """Recompute title popularity when the event clock enters a new refresh bucket."""
        bucket = (now_ms - self.start_ms) // REFRESH_MS
        if bucket == self.bucket:
            return
        self.bucket = bucket
        exp = math.exp
        weights = []
        fresh = []
        for title in range(self.titles):
            age = now_ms - self.release[title]
            if age < 0:
                weights.append(0.0)
                fresh.append(False)
                continue
            cycle = self.cycle[title]
            if cycle:
                age %= cycle
            hype = self.peak[title] * (1.0 - exp(-age / self.rise[title]))
            hype *= exp(-age / self.decay[title])
            weights.append(self.base[title] * (CATALOG_FLOOR + hype))
            fresh.append(age < FRESH_AGE_MS)
        if not any(weights):
            # Nothing released yet (a tiny catalog): fall back to the static popularity.
            weights = list(self.base)
        self.weights = weights
        self.fresh = fresh
        # Per country: the cumulative table to sample titles from, and the expected records and
        # emitting time of a session there; members are spread over countries by share.
        events = [
            w * (self.session_events[True][t] if fresh[t] else self.session_events[False][t])
            for t, w in enumerate(weights)
        ]
        emitting = [
            w * (self.session_emitting[True][t] if fresh[t] else self.session_emitting[False][t])
            for t, w in enumerate(weights)
        ]
        self.tables = []
        expected_events = expected_emitting = 0.0
        for (_, share), boost in zip(COUNTRY_SHARES, self.boost, strict=True):
            table = list(accumulate(map(mul, weights, boost)))
            self.tables.append(table)
            total = table[-1] or 1.0
            expected_events += share * sum(map(mul, events, boost)) / total
            expected_emitting += share * sum(map(mul, emitting, boost)) / total
        shares = self.country_cumulative[-1]
        self.events_per_session = expected_events / shares
        self.emitting_per_session = expected_emitting / shares

    def pick_title(self, country: int) -> int:
        return _pick(self.rng, self.tables[country])

    def pick_member(self) -> int:
        # Heavy-tailed activity: low indices watch much more than high ones.
        index = int(self.members * self.rng.random() ** 1.3)
        return (index * self.member_stride + self.member_offset) % self.members + 1

    def member_profile(self, member_id: int) -> tuple[int, int, int]:
        """(country index, primary device index, client profile bits) of a member."""
        cached = self.member_cache.get(member_id)
        if cached is not None:
            return cached
        bits = _mix64(self.member_salt ^ member_id)
        country = bisect_right(self.country_cumulative, (bits & 0xFFFFFF) / 0x1000000 * 100.0)
        country = min(country, len(self.countries) - 1)
        devices = self.device_cumulative[country]
        device = bisect_right(devices, ((bits >> 24) & 0xFFFFFF) / 0x1000000 * devices[-1])
        device = min(device, len(DEVICES) - 1)
        profile = 0
        if (bits >> 48) & 0xFF < EPOCH_MS_CLIENTS:
            profile |= _EPOCH_MS
        if (bits >> 56) & 0xFF < NO_DEVICE_CLIENTS:
            profile |= _NO_DEVICE
        if ((bits >> 48) & 0xFF) >= 256 - NO_POSITION_CLIENTS:
            profile |= _NO_POSITION
        if ((bits >> 56) & 0xFF) >= 256 - EXTRA_FIELD_CLIENTS:
            profile |= _EXTRA_FIELD
        result = (country, device, profile)
        self.member_cache[member_id] = result
        return result

    def pick_source(self, title: int) -> str:
        table = (
            self.fresh_source_cumulative if self.fresh[title] else self.catalog_source_cumulative
        )
        return self.sources[_pick(self.rng, table)]

    def plan(self, title: int, source: str) -> tuple[int, int, int, int]:
        """(start position, watched ms, pause point in watched ms, pause length) of a session."""
        return _plan(self.rng, self.runtime[title], source)

    def new_session(
        self, active: set[int], member_id: int, title: int, source: str
    ) -> _Session | None:
        """A session object for (member, title), or None when that pair is already playing."""
        title_id = title + 1
        pair = member_id * (self.titles + 1) + title_id
        if pair in active:
            return None
        country, device, profile = self.member_profile(member_id)
        session = _Session()
        session.pair = pair
        session.member_id = member_id
        session.title_id = title_id
        session.key = str(member_id).encode("ascii")
        session.country = self.countries[country]
        session.device = DEVICES[device]
        session.profile = profile
        session.source = None if self.rng.random() < OMIT_SOURCE_SHARE else source
        session.gap_ms = HEARTBEAT_BASE_MIN_MS + int(self.rng.random() * HEARTBEAT_BASE_SPAN_MS)
        session.refresh_fixed()
        return session

    def other_device(self, country_code: str) -> str:
        country = self.countries.index(country_code)
        return DEVICES[_pick(self.rng, self.device_cumulative[country])]


class _Marker:
    """A heap entry that is not a session: the next arrival of a new or warm session."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


def _malformed(rng: random.Random, document: dict[str, Any]) -> tuple[bytes | None, bytes]:
    """A payload that breaks one rule, modelled on a real event (a buggy or hostile client)."""
    member_id: int = document["member_id"]
    title_id: int = document["title_id"]
    country: str = document["country"]
    position: int = document["position_ms"]
    event_time: str | int = document["event_time"]
    key: bytes | None = str(member_id).encode("ascii")
    choice = rng.randrange(16)
    if choice == 0:
        # Cut in transit: a prefix of a JSON object is never valid JSON.
        text = json.dumps(document, separators=(",", ":")).encode()
        return key, text[: rng.randrange(1, len(text) - 1)]
    if choice == 1:
        # A Latin-1 client: the bytes are not UTF-8.
        text = json.dumps(document, separators=(",", ":"))[:-1]
        return key, text.encode() + ',"note":"t\xe9l\xe9"}'.encode("latin-1")
    if choice == 2:
        # Repeated key: ambiguous, so invalid JSON.
        text = json.dumps(document, separators=(",", ":"))[:-1]
        return key, (text + f',"title_id":{title_id + 1}}}').encode()
    if choice == 3:
        return None, b""
    if choice == 4:
        return None, json.dumps([document], separators=(",", ":")).encode()
    if choice in (5, 6):
        field = rng.choice(("event_id", "event_type", "event_time", "member_id", "title_id"))
        if rng.random() < 0.3:
            document[field] = None  # null counts as missing
        else:
            del document[field]
    elif choice == 7:
        field = rng.choice(("member_id", "title_id", "position_ms", "event_id"))
        document[field] = str(document[field]) if field != "event_id" else 12345
    elif choice == 8:
        document[rng.choice(("title_id", "position_ms"))] = position + 0.5
    elif choice == 9:
        field, value = rng.choice(
            (
                ("event_type", "play_pause"),
                ("event_type", "PLAY_START"),
                ("device", "smart_fridge"),
                ("discovery_source", "homepage"),
            )
        )
        document[field] = value
    elif choice == 10:
        document["event_time"] = rng.choice(
            (
                "2026-02-30T10:00:00Z",  # no such day
                event_time.rstrip("Z") if isinstance(event_time, str) else "yesterday",
                "yesterday",
                "17/01/2026 10:00",
                -1,
                True,
            )
        )
    elif choice == 11:
        document["country"] = country.lower()
    elif choice == 12:
        document["country"] = rng.choice(("XX", "USA", "", "U5"))
    elif choice == 13:
        field = rng.choice(("member_id", "title_id", "position_ms"))
        document[field] = -1 - rng.randrange(1000)
        if field == "member_id":
            key = str(document[field]).encode()
    elif choice == 14:
        document["event_id"] = ""
    else:
        document["member_id"] = 2**63  # past a signed 64-bit integer
    return key, json.dumps(document, separators=(",", ":")).encode()


def _stream(config: TrafficConfig) -> Iterator[GeneratedRecord]:
    rng = random.Random(config.seed)
    start = _start_of(config)
    start_ms = epoch_millis(start)
    world = _World(config, rng, start_ms)
    base_share = 1.0 - config.duplicate_rate - config.malformed_rate
    base_per_ms = config.events_per_second * base_share / SECOND_MS
    # Session arrivals per ms, so that sessions (as popular right now) make the base density.
    arrival_per_ms = base_per_ms / world.events_per_session
    # Little's law: sessions in progress at the start; candidates arrive over the warm window and
    # are kept with probability gap / window, which gives each one a stationary phase.
    in_progress = arrival_per_ms * world.emitting_per_session
    warm_per_ms = in_progress / MEAN_HEARTBEAT_MS
    late_p = config.late_rate / base_share
    duplicate_p = config.duplicate_rate / base_share
    sibling_p = (config.duplicate_rate + config.malformed_rate) / base_share
    lateness_ms = config.allowed_lateness_min * MINUTE_MS + LATE_MARGIN_MS
    duplicate_mu = math.log(DUPLICATE_MEDIAN_DELAY_MS)

    heappush = heapq.heappush
    heappop = heapq.heappop
    random_ = rng.random
    getrandbits = rng.getrandbits
    expovariate = rng.expovariate
    sequence = itertools.count()
    arrival = _Marker("arrival")
    warm = _Marker("warm")
    active: set[int] = set()
    heap: list[tuple[float, int, Any]] = []
    pending: list[tuple[int, int, str, bytes | None, bytes, datetime]] = []
    arrival_at = start_ms + expovariate(arrival_per_ms)
    heappush(heap, (arrival_at, next(sequence), arrival))
    warm_at = start_ms + expovariate(warm_per_ms) if warm_per_ms > 0 else math.inf
    if warm_at < start_ms + WARM_WINDOW_MS:
        heappush(heap, (warm_at, next(sequence), warm))

    clock = start
    # Times are formatted once per second of event time; only the milliseconds change within it.
    second_ms = -1
    second_text = ""

    while True:
        when, _, session = heappop(heap)
        if session is arrival:
            now = int(when)
            world.refresh(now)
            arrival_at += expovariate(base_per_ms / world.events_per_session)
            heappush(heap, (arrival_at, next(sequence), arrival))
            member_id = world.pick_member()
            title = world.pick_title(world.member_profile(member_id)[0])
            source = world.pick_source(title)
            new = world.new_session(active, member_id, title, source)
            if new is None:
                continue
            start_position, watch, pause_at, pause_ms = world.plan(title, source)
            new.next_type = PLAY_START
            new.next_position = start_position
            new.watch_end = start_position + watch
            new.segment_end = start_position + (pause_at or watch)
            new.pause_ms = pause_ms
            active.add(new.pair)
            heappush(heap, (now, next(sequence), new))
            continue
        if session is warm:
            warm_at += expovariate(warm_per_ms)
            if warm_at < start_ms + WARM_WINDOW_MS:
                heappush(heap, (warm_at, next(sequence), warm))
            now = int(when)
            offset = now - start_ms
            # Keep the candidate only if its first event falls inside its own heartbeat cycle:
            # the phase is then uniform over the cycle, as it is for sessions in steady state.
            gap_ms = HEARTBEAT_BASE_MIN_MS + int(random_() * HEARTBEAT_BASE_SPAN_MS)
            if offset > gap_ms + random_() * HEARTBEAT_JITTER_MS:
                continue
            world.refresh(now)
            member_id = world.pick_member()
            country = world.member_profile(member_id)[0]
            # Sessions in progress are length-biased: accept a plan with probability watch/max.
            while True:
                title = world.pick_title(country)
                source = world.pick_source(title)
                start_position, watch, _, _ = world.plan(title, source)
                if random_() * MAX_WATCH_MS < watch:
                    break
            elapsed = int(random_() * watch)
            if elapsed < offset:
                continue  # it started after the stream did: a regular arrival covers that
            new = world.new_session(active, member_id, title, source)
            if new is None:
                continue
            new.gap_ms = gap_ms
            new.next_type = PLAY_HEARTBEAT
            new.next_position = start_position + elapsed
            new.watch_end = new.segment_end = start_position + watch
            active.add(new.pair)
            heappush(heap, (now, next(sequence), new))
            continue

        t = int(when)
        event_type = session.next_type
        position = session.next_position

        # The payload, rendered with the session's state before it advances.
        bits = (getrandbits(128) & _UUID_VERSION_CLEAR) | _UUID_VERSION_SET
        hex_id = f"{bits:032x}"
        event_id = f"{hex_id[:8]}-{hex_id[8:12]}-{hex_id[12:16]}-{hex_id[16:20]}-{hex_id[20:]}"
        event_dt = start + timedelta(milliseconds=t - start_ms)
        profile = session.profile
        if profile & _EPOCH_MS:
            time_json = str(t)
        else:
            second = t - t % SECOND_MS
            if second != second_ms:
                second_ms = second
                second_text = format_time(event_dt)[:-5]
            time_json = f'"{second_text}.{t % SECOND_MS:03d}Z"'
        position_json = "" if profile & _NO_POSITION else f',"position_ms":{position}'
        value = (
            f'{{"event_id":"{event_id}","event_type":"{event_type}",'
            f'"event_time":{time_json}{session.fixed}{position_json}}}'
        ).encode()
        key = session.key
        # A broken sibling copies this event's fields as they are now, before the session moves on.
        template = (event_type, t, session.device, session.source) if sibling_p else None

        # Advance the session to its next event.
        if event_type is PLAY_STOP:
            if session.pause_ms:
                # Resumed later from continue watching, sometimes on another device.
                session.next_type = PLAY_START
                session.segment_end = session.watch_end
                session.source = CONTINUE_WATCHING
                if random_() < RESUME_DEVICE_SWITCH:
                    session.device = world.other_device(session.country)
                session.refresh_fixed()
                heappush(heap, (t + session.pause_ms, next(sequence), session))
                session.pause_ms = 0
            else:
                active.discard(session.pair)
        else:
            remaining = session.segment_end - position
            gap = session.gap_ms + int(random_() * HEARTBEAT_JITTER_MS)
            if remaining > gap:
                session.next_type = PLAY_HEARTBEAT
                session.next_position = position + gap
                heappush(heap, (t + gap, next(sequence), session))
            else:
                session.next_type = PLAY_STOP
                session.next_position = session.segment_end
                heappush(heap, (t + max(remaining, MIN_STOP_GAP_MS), next(sequence), session))

        # Emit: on time, or held back past the lateness; then what became due; then siblings.
        sent_at = t
        if late_p and random_() < late_p:
            sent_at = t + lateness_ms + int(random_() * LATE_EXTRA_MAX_MS)
            heappush(pending, (sent_at, next(sequence), KIND_LATE, key, value, event_dt))
        else:
            clock = event_dt
            yield GeneratedRecord(key, value, KIND_EVENT, event_dt, event_dt)
            while pending and pending[0][0] <= t:
                _, _, kind, pending_key, pending_value, pending_dt = heappop(pending)
                yield GeneratedRecord(pending_key, pending_value, kind, pending_dt, clock)
        if sibling_p:
            draw = random_()
            if draw < duplicate_p:
                delay = rng.lognormvariate(duplicate_mu, DUPLICATE_DELAY_SIGMA)
                resend_at = sent_at + int(min(delay, DUPLICATE_MAX_DELAY_MS)) + 1
                heappush(pending, (resend_at, next(sequence), KIND_DUPLICATE, key, value, event_dt))
            elif draw < sibling_p and template is not None:
                broken_type, broken_t, broken_device, broken_source = template
                document = {
                    "event_id": f"{getrandbits(128):032x}",
                    "event_type": broken_type,
                    "event_time": broken_t if profile & _EPOCH_MS else time_json[1:-1],
                    "member_id": session.member_id,
                    "title_id": session.title_id,
                    "country": session.country,
                    "device": broken_device,
                    "discovery_source": broken_source or "other",
                    "position_ms": position,
                }
                broken_key, broken_value = _malformed(rng, document)
                yield GeneratedRecord(broken_key, broken_value, KIND_MALFORMED, None, clock)
