"""Declared count views on a lake written here, in the layout the speed and batch layers write
(no Spark, no broker): a view's batch days (`<view>_batch/dt=D/v=<version>/` Parquet and the day's
state file), its speed micro-batches (`<view>_speed/batch_id=N/` Parquet deltas, the checkpoint's
commit log and the query's state file), and the plain-Python truth its answers must equal."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lambda_arch.batch.lake import Lake
from lambda_arch.common.config import Settings
from lambda_arch.common.times import format_time
from lambda_arch.ingest.schema import DEVICES, DISCOVERY_SOURCES, EVENT_TYPES, PlayEvent
from lambda_arch.speed import layer as speed
from lambda_arch.views.declarations import DIMENSION_TYPES, CountView
from tests.lambda_arch.serving.oracle import utc

# Two views declared only here: one with two filter dimensions (country, device) and a ranked
# one, one without a country dimension (its roll-up has no all-countries rows), counting
# heartbeats too.
VIEWS_TOML = """
[views.title_by_device]
dimensions = ["country", "device", "title_id"]
form = "top"
description = "Titles ranked by plays, per country and device"

[views.source_by_device]
dimensions = ["device", "discovery_source"]
events = ["play_start", "play_heartbeat"]
form = "shares"
description = "Starts and heartbeats per discovery source, per device"
"""
COUNTRIES = ("US", "BR", "DE")
DAYS = (date(2026, 3, 1), date(2026, 3, 2))
BATCH_WATERMARK = utc(0, 0, day=3)  # the end of DAYS, both computed
LATENESS = timedelta(minutes=10)


def events_between(first: datetime, last: datetime, seed: int, count: int) -> list[PlayEvent]:
    """`count` events of every type at random seconds of [first, last), over a few titles,
    countries, devices and sources."""
    rng = random.Random(seed)
    seconds = int((last - first).total_seconds())
    return [
        PlayEvent(
            event_id=f"{seed}-{n}",
            event_type=rng.choice(("play_start", "play_start", *EVENT_TYPES)),
            event_time=first + timedelta(seconds=rng.randrange(seconds)),
            member_id=rng.randrange(50),
            title_id=rng.randrange(8),
            country=rng.choice(COUNTRIES),
            device=rng.choice(DEVICES[:4]),
            discovery_source=rng.choice(DISCOVERY_SOURCES[:5]),
            position_ms=None,
        )
        for n in range(count)
    ]


BATCH_EVENTS = events_between(utc(0, 0, day=1), utc(0, 0, day=3), seed=11, count=4000)
SPEED_EVENTS = events_between(utc(6, 0), utc(8, 0, day=3), seed=12, count=2000)


# Writing the lake ---------------------------------------------------------------------------------


def _minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def count_rows(view: CountView, events: Iterable[PlayEvent]) -> list[tuple[Any, ...]]:
    """The view's count rows (minute, *dimensions, plays) of some events, as both layers write
    them: plays of the view's event types per minute and dimension values."""
    counts: Counter[tuple[Any, ...]] = Counter(
        (_minute(e.event_time), *(getattr(e, d) for d in view.dimensions))
        for e in events
        if e.event_type in view.event_types
    )
    return [(*bucket, plays) for bucket, plays in sorted(counts.items())]


def _table(view: CountView, rows: Sequence[tuple[Any, ...]]) -> pa.Table:
    types = {"string": pa.string(), "bigint": pa.int64()}
    schema = pa.schema(
        [
            ("minute", pa.timestamp("us", tz="UTC")),
            *((d, types[DIMENSION_TYPES[d]]) for d in view.dimensions),
            ("plays", pa.int64()),
        ]
    )
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in schema]
    return pa.table(
        [pa.array(c, type=f.type) for c, f in zip(columns, schema, strict=True)], schema
    )


def _write(path: str, table: pa.Table) -> None:
    Path(path).mkdir(parents=True, exist_ok=True)
    pq.write_table(table, f"{path}/part-00000.parquet")


def land_raw_day(lake: Lake, day: date) -> None:
    """One raw event file on `day` (the batch watermark counts days from the first landed one)."""
    _write(
        f"{lake.location('play_events')}/dt={day.isoformat()}/hour=0",
        pa.table({"event_id": ["x"]}),
    )


def write_batch_day(
    lake: Lake, view: CountView, day: date, events: Iterable[PlayEvent], version: str = "v1"
) -> None:
    """A computed batch day of the view: its rows at dt=D/v=<version>, then its state file."""
    table = f"{view.name}_batch"
    rows = [r for r in count_rows(view, events) if r[0].date() == day]
    _write(f"{lake.location(table)}/dt={day.isoformat()}/v={version}", _table(view, rows))
    state = Path(lake.location("_batch_state")) / table / f"{day.isoformat()}.json"
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(
        json.dumps({"table": table, "day": day.isoformat(), "rows": len(rows), "version": version})
    )


def write_speed_batch(
    settings: Settings, view: CountView, batch_id: int, events: Sequence[PlayEvent]
) -> None:
    """One committed speed micro-batch of the view: its deltas, its commit, the query's state
    (newest event time seen so far and the watermark it gives)."""
    query = f"{view.name}_speed"
    paths = speed.SpeedPaths.from_settings(settings)
    _write(f"{paths.table(query)}/batch_id={batch_id}", _table(view, count_rows(view, events)))
    commits = Path(speed.checkpoint_of(settings, query)) / "commits"
    commits.mkdir(parents=True, exist_ok=True)
    (commits / str(batch_id)).write_text("v1\n{}\n")
    previous = speed.read_speed_state(paths, query) or {}
    newest = max(e.event_time for e in events)
    if previous.get("max_event_time"):
        newest = max(newest, datetime.fromisoformat(previous["max_event_time"]))
    state = Path(paths.state_file(query))
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(
        json.dumps(
            {
                "query": query,
                "max_event_time": format_time(newest),
                "watermark": format_time(newest - LATENESS),
            }
        )
    )


def write_view(settings: Settings, view: CountView) -> None:
    """The view's lake: DAYS computed from BATCH_EVENTS, SPEED_EVENTS in two micro-batches whose
    buckets overlap (the second adds to the first)."""
    lake = Lake.from_settings(settings)
    land_raw_day(lake, DAYS[0])
    for day in DAYS:
        write_batch_day(lake, view, day, BATCH_EVENTS)
    write_speed_batch(settings, view, 0, SPEED_EVENTS[::2])
    write_speed_batch(settings, view, 1, SPEED_EVENTS[1::2])


# The truth ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewOracle:
    """What a count view must answer: batch events before the watermark, speed events from it
    on, counted in plain Python."""

    batch_events: Sequence[PlayEvent] = tuple(BATCH_EVENTS)
    speed_events: Sequence[PlayEvent] = tuple(SPEED_EVENTS)
    batch_watermark: datetime | None = BATCH_WATERMARK

    def rows(
        self,
        view: CountView,
        as_of: datetime,
        window: int,
        filters: dict[str, Any],
        limit: int,
    ) -> list[dict[str, Any]]:
        end = _minute(as_of.astimezone(UTC))
        start = end - timedelta(minutes=window)
        cut = self.batch_watermark or start
        chosen = [e for e in self.batch_events if e.event_time < cut]
        chosen += [e for e in self.speed_events if e.event_time >= cut]
        plays = Counter(
            getattr(e, view.ranked)
            for e in chosen
            if e.event_type in view.event_types
            and start <= e.event_time < end
            and all(getattr(e, d) == v for d, v in filters.items())
        )
        ordered = sorted(plays.items(), key=lambda item: (-item[1], item[0]))[:limit]
        total = sum(plays.values())
        return [
            {"rank": n, view.ranked: key, "plays": count}
            | ({"share": round(count / total, 4)} if view.form == "shares" else {})
            for n, (key, count) in enumerate(ordered, start=1)
        ]


def hourly_sums(view: CountView, rows: Iterable[tuple[Any, ...]]) -> dict[tuple[Any, ...], int]:
    """A minute table's hourly roll-up in plain Python: per dimension values, and summed over
    all values (`*`) of each non-empty set of filter dimensions."""
    filters = range(len(view.filters))
    star_sets = [
        set(chosen)
        for size in range(1, len(filters) + 1)
        for chosen in itertools.combinations(filters, size)
    ]
    sums: dict[tuple[Any, ...], int] = defaultdict(int)
    for minute, *values, plays in rows:
        hour = minute // 3600 * 3600
        sums[(hour, *values)] += plays
        for stars in star_sets:
            sums[(hour, *("*" if n in stars else v for n, v in enumerate(values)))] += plays
    return dict(sums)
