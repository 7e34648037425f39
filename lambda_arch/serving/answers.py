"""The answers of the serving layer: trending, discovery and sessions as CONTRACT section 6's JSON.

CONTRACT section 3: an answer for the window [T-W, T) takes the batch layer's per-minute counts
for the minutes before the batch watermark (end of the last contiguous recomputed day) and the
speed layer's for the minutes from it on (`split_window`). Sessions are split the same way by
session_end (the batch layer owns a session by the day of its last event, see
`lambda_arch.batch.layer`). Each side is read from the store's hourly roll-up for its whole
hours and from the minute table at its edges (`reads_of`). The CLI and the HTTP API both answer
with these functions, so their JSON is the same.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from lambda_arch.ingest.schema import COUNTRIES
from lambda_arch.serving.ranking import Window, ranked_titles, shares
from lambda_arch.serving.store import (
    ALL_COUNTRIES,
    MICROS,
    ServingError,
    ServingStore,
    ViewState,
    epoch_seconds,
    hour_ceil,
    hour_floor,
    iso,
)
from lambda_arch.views.spec import DISCOVERY, SESSIONS, TRENDING, ViewSpec

DEFAULT_WINDOW_MIN = 60
DEFAULT_LIMIT = 10
MAX_LIMIT = 1000
# A year of minutes: longer windows are almost surely a typo (and a full scan).
MAX_WINDOW_MIN = 366 * 24 * 60


def check_country(country: str | None) -> str | None:
    """The country as given if it is one the events can carry (or None: all); else ServingError."""
    if country is not None and country not in COUNTRIES:
        raise ServingError(f"{country!r} is not an upper-case ISO 3166-1 alpha-2 country code")
    return country


def check_window(minutes: int) -> int:
    """The window W in minutes if it is from 1 to MAX_WINDOW_MIN; else ServingError."""
    if not 1 <= minutes <= MAX_WINDOW_MIN:
        raise ServingError(f"window must be a whole number of minutes from 1 to {MAX_WINDOW_MIN}")
    return minutes


def check_limit(limit: int) -> int:
    """The number of titles K if it is from 1 to MAX_LIMIT; else ServingError."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ServingError(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return limit


def _from_micros(value: int) -> datetime:
    """A stored session time (epoch microseconds) as a datetime, exactly (no float)."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=value)


# The merge ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """Which layer answers which part of a window [start, end) (epoch seconds, half-open):
    batch for [batch_from, batch_to), speed for [speed_from, speed_to); an empty range has
    from >= to."""

    batch_from: int
    batch_to: int
    speed_from: int
    speed_to: int


def split_window(start: datetime, end: datetime, batch_watermark: datetime | None) -> Split:
    """CONTRACT section 3: batch before the batch watermark, speed from it on."""
    first, last = epoch_seconds(start), epoch_seconds(end)
    if batch_watermark is None:
        return Split(first, first, first, last)
    cut = min(max(epoch_seconds(batch_watermark), first), last)
    return Split(first, cut, cut, last)


@dataclass(frozen=True)
class Read:
    """One range scan of an answer: rows of `table` with `column` in [first, to)."""

    table: str
    column: str  # "minute" for a minute table, "hour" for its roll-up
    first: int
    to: int


def reads_of(table: str, first: int, to: int) -> list[Read]:
    """The scans that sum a minute table's plays over [first, to): its whole hours from the
    hourly roll-up, the minutes before the first and after the last whole hour from the table
    itself. Each minute is in exactly one scan, so the sums equal a scan of the minutes."""
    if first >= to:
        return []
    whole_from, whole_to = hour_ceil(first), hour_floor(to)
    if whole_from >= whole_to:
        return [Read(table, "minute", first, to)]
    edges = [Read(table, "minute", first, whole_from), Read(table, "minute", whole_to, to)]
    return [Read(f"{table}_hourly", "hour", whole_from, whole_to)] + [
        edge for edge in edges if edge.first < edge.to
    ]


# The answers --------------------------------------------------------------------------------


def default_as_of(state: ViewState) -> datetime | None:
    """T of an answer without as_of (CONTRACT section 6): the end of the newest minute the speed
    layer has counted (the minute after its newest event time), so the answer holds every play
    counted so far; the batch watermark when the speed layer has counted nothing, or when the
    batch layer reaches further (after a speed reset); None when neither layer has data."""
    newest = state.speed_max_event_time
    speed_end = newest.replace(second=0, microsecond=0) + timedelta(minutes=1) if newest else None
    ends = [end for end in (speed_end, state.batch_watermark) if end is not None]
    return max(ends) if ends else None


def _as_of(state: ViewState, as_of: datetime | None) -> datetime:
    """T: the given time, else the default (`default_as_of`), else now."""
    return as_of or default_as_of(state) or datetime.now(UTC)


def _header(state: ViewState, country: str | None, end: datetime, minutes: int) -> dict[str, Any]:
    """The fields trending and discovery answers start with (CONTRACT section 6)."""
    return {
        "country": country,
        "as_of": iso(end),
        "window_minutes": minutes,
        "batch_watermark": iso(state.batch_watermark),
        "speed_watermark": iso(state.speed_watermark),
    }


def _ranked(
    connection: sqlite3.Connection,
    spec: ViewSpec,
    split: Split,
    country: str | None,
    limit: int | None,
) -> list[tuple[Any, int]]:
    """(key, plays) of the window in rank order: the batch part and the speed part of the
    split, each read as whole hours from its roll-up and minutes at the edges."""
    key = spec.key
    reads = reads_of(spec.batch_store, split.batch_from, split.batch_to)
    reads += reads_of(spec.speed_store, split.speed_from, split.speed_to)
    selects: list[str] = []
    params: tuple[Any, ...] = ()
    for read in reads:
        # A roll-up holds all countries' sum as rows of its own; a minute table has none.
        region = country or (ALL_COUNTRIES if read.column == "hour" else None)
        selects.append(
            f"SELECT {key}, plays FROM {read.table} "
            f"WHERE {read.column} >= ? AND {read.column} < ?"
            + (" AND country = ?" if region else "")
        )
        params += (read.first, read.to) + ((region,) if region else ())
    sql = (
        f"SELECT {key}, SUM(plays) AS total FROM ({' UNION ALL '.join(selects)}) "
        f"GROUP BY {key} HAVING total > 0 ORDER BY total DESC, {key} ASC"
    )
    if limit is not None:
        sql += " LIMIT ?"
        params += (limit,)
    return connection.execute(sql, params).fetchall()


def trending(
    store: ServingStore,
    *,
    country: str | None = None,
    as_of: datetime | None = None,
    window: int = DEFAULT_WINDOW_MIN,
    limit: int = DEFAULT_LIMIT,
) -> dict[str, Any]:
    """CONTRACT section 6 trending JSON for (country, as-of, window, limit)."""
    check_country(country), check_window(window), check_limit(limit)
    with store.snapshot() as connection:
        state = store.view_state(TRENDING.name, connection)
        span = Window.ending_at(_as_of(state, as_of), window)
        split = split_window(span.start, span.end, state.batch_watermark)
        rows = _ranked(connection, TRENDING, split, country, limit)
    return {**_header(state, country, span.end, window), "titles": ranked_titles(rows)}


def discovery(
    store: ServingStore,
    *,
    country: str | None = None,
    as_of: datetime | None = None,
    window: int = DEFAULT_WINDOW_MIN,
) -> dict[str, Any]:
    """CONTRACT section 6 discovery JSON: plays and share (4 decimals) per source."""
    check_country(country), check_window(window)
    with store.snapshot() as connection:
        state = store.view_state(DISCOVERY.name, connection)
        span = Window.ending_at(_as_of(state, as_of), window)
        split = split_window(span.start, span.end, state.batch_watermark)
        rows = _ranked(connection, DISCOVERY, split, country, None)
    return {**_header(state, country, span.end, window), "sources": shares(rows)}


def sessions(store: ServingStore, *, member_id: int, title_id: int | None = None) -> dict[str, Any]:
    """A member's sessions ordered by session_start: batch ones that end before the batch
    watermark, speed ones that end at or after it."""
    if member_id < 0 or (title_id is not None and title_id < 0):
        raise ServingError("member_id and title_id must be whole numbers >= 0")
    title_filter = " AND title_id = ?" if title_id is not None else ""
    extra = (title_id,) if title_id is not None else ()
    with store.snapshot() as connection:
        state = store.view_state(SESSIONS.name, connection)
        cut = int(state.batch_watermark.timestamp()) * MICROS if state.batch_watermark else None
        columns = "title_id, session_start, session_end, events, watched_ms"
        batch_rows = connection.execute(
            f"SELECT {columns} FROM sessions_batch WHERE member_id = ?{title_filter} "
            "AND session_end < ?",
            (member_id, *extra, cut if cut is not None else -(2**62)),
        ).fetchall()
        speed_rows = connection.execute(
            f"SELECT {columns} FROM sessions_speed WHERE member_id = ?{title_filter} "
            "AND session_end >= ?",
            (member_id, *extra, cut if cut is not None else -(2**62)),
        ).fetchall()
    rows = sorted([*batch_rows, *speed_rows], key=lambda r: (r[1], r[0], r[2]))
    return {
        "member_id": member_id,
        "batch_watermark": iso(state.batch_watermark),
        "speed_watermark": iso(state.speed_watermark),
        "sessions": [
            {
                "title_id": int(title),
                "session_start": iso(_from_micros(start)),
                "session_end": iso(_from_micros(end)),
                "events": int(events),
                "watched_ms": int(watched),
            }
            for title, start, end, events, watched in rows
        ],
    }


def dumps(document: dict[str, Any]) -> str:
    """The JSON of an answer, as the CLI prints it and the HTTP API sends it."""
    return json.dumps(document, separators=(", ", ": "))
