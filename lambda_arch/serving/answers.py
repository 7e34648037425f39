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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from lambda_arch.ingest.schema import COUNTRIES
from lambda_arch.serving.ranking import Window, ranked_rows
from lambda_arch.serving.store import (
    ALL,
    MICROS,
    ServingError,
    ServingStore,
    ViewState,
    epoch_micros,
    epoch_seconds,
    hour_ceil,
    hour_floor,
    iso,
    parse_iso,
    rolled_filters,
)
from lambda_arch.views.declarations import (
    DIMENSION_TYPES,
    DIMENSION_VALUES,
    DISCOVERY,
    TRENDING,
    CountView,
)
from lambda_arch.views.spec import SESSIONS, ViewSpec

DEFAULT_WINDOW_MIN = 60
DEFAULT_LIMIT = 10
MAX_LIMIT = 1000
DEFAULT_SESSIONS_LIMIT = 100
MAX_SESSIONS_LIMIT = 1000
# The ceiling on the work of one request (README "Serving API limits"): a window of at most 31
# days (44,640 minutes: about 750 hourly roll-up rows per key and layer, plus the minutes at its
# edges), at most 1,000 titles or sessions, times within [MIN_TIME, MAX_TIME) and ids within
# int64. Anything outside is a ServingError (HTTP 400, CLI exit 2), never a scan or a crash.
MAX_WINDOW_MIN = 31 * 24 * 60
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(9999, 12, 31, tzinfo=UTC)  # exclusive, as for event times (schema.py)
MAX_ID = 2**63 - 1


def _shown(value: object, width: int = 60) -> str:
    """A value as an error message quotes it: repr, clipped."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def check_country(country: str | None) -> str | None:
    """The country as given if it is one the events can carry (or None: all); else ServingError."""
    if country is not None and country not in COUNTRIES:
        raise ServingError(
            f"country: {_shown(country)} is not an upper-case ISO 3166-1 alpha-2 country code"
        )
    return country


def check_window(minutes: int) -> int:
    """The window W in minutes if it is from 1 to MAX_WINDOW_MIN; else ServingError."""
    if not 1 <= minutes <= MAX_WINDOW_MIN:
        raise ServingError(
            f"window: must be a whole number of minutes from 1 to {MAX_WINDOW_MIN} (31 days)"
        )
    return minutes


def check_limit(limit: int, most: int = MAX_LIMIT, name: str = "limit") -> int:
    """A number of rows K if it is from 1 to `most`; else ServingError."""
    if not 1 <= limit <= most:
        raise ServingError(f"{name}: must be a whole number from 1 to {most}")
    return limit


def check_time(moment: datetime | None, name: str = "as_of") -> datetime | None:
    """A time (aware) if it lies in [MIN_TIME, MAX_TIME); else ServingError."""
    if moment is not None and not MIN_TIME <= moment < MAX_TIME:
        raise ServingError(
            f"{name}: must lie in [{iso(MIN_TIME)}, {iso(MAX_TIME)}), got {iso(moment)}"
        )
    return moment


def check_id(value: int | None, name: str) -> int | None:
    """A member or title id (or None) if it is from 0 to 2^63 - 1; else ServingError."""
    if value is not None and not 0 <= value <= MAX_ID:
        raise ServingError(f"{name}: must be a whole number from 0 to {MAX_ID}")
    return value


def parse_where(text: str) -> tuple[str, str]:
    """A filter `DIM=VALUE` (or `DIM:VALUE`, handier in a URL) as (dimension, value text), split
    at the first `=` or `:`; ServingError naming `where` otherwise."""
    cut = min((i for i in (text.find("="), text.find(":")) if i >= 0), default=-1)
    if cut <= 0:
        raise ServingError(f"where: {_shown(text)} is not DIM=VALUE (or DIM:VALUE)")
    return text[:cut], text[cut + 1 :]


def _dimension_value(view: CountView, dimension: str, text: str) -> Any:
    """A filter value as the store holds it: an id (int) or one of the field's values."""
    if DIMENSION_TYPES[dimension] == "bigint":
        if not (text.isascii() and text.isdigit()) or int(text) > MAX_ID:
            raise ServingError(
                f"where: {dimension} must be a whole number from 0 to {MAX_ID}, got {_shown(text)}"
            )
        return int(text)
    allowed = DIMENSION_VALUES.get(dimension)
    if allowed is not None and text not in allowed:
        shown = ", ".join(sorted(allowed)) if len(allowed) < 20 else "see CONTRACT section 2"
        raise ServingError(
            f"where: {dimension}={_shown(text)} is not a value of {dimension} ({shown})"
        )
    return text


def check_filters(
    view: CountView, country: str | None, where: Sequence[tuple[str, str]] = ()
) -> dict[str, Any]:
    """The filters of a count view's answer ({dimension: value}): `country` and the `where`
    pairs (dimension, value text), each on one of the view's filter dimensions (any but the
    ranked one), each once, with a value that dimension can take; else ServingError."""
    filters: dict[str, Any] = {}
    if country is not None:
        check_country(country)
        if "country" not in view.filters:
            raise ServingError(
                f"country: view {view.name!r} does not filter by country"
                + (f" (filters: {', '.join(view.filters)})" if view.filters else "")
            )
        filters["country"] = country
    for dimension, text in where:
        if dimension == view.ranked:
            raise ServingError(
                f"where: {dimension} is the dimension view {view.name!r} ranks, not a filter"
                + (f" (filters: {', '.join(view.filters)})" if view.filters else "")
            )
        if dimension not in view.filters:
            raise ServingError(
                f"where: {_shown(dimension)} is not a dimension of view {view.name!r} "
                f"(filters: {', '.join(view.filters) or 'none'})"
            )
        if dimension in filters:
            raise ServingError(f"where: {dimension} is filtered twice")
        filters[dimension] = _dimension_value(view, dimension, text)
    return filters


def parse_time_parameter(text: str, name: str = "as_of") -> datetime:
    """A time parameter's text as an aware UTC time in range; ServingError naming it otherwise."""
    try:
        moment = parse_iso(text)
    except ServingError as error:
        raise ServingError(f"{name}: {error}") from None
    check_time(moment, name)
    return moment


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
    """The fields every count view's answer starts with (CONTRACT sections 6 and 9)."""
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
    filters: dict[str, Any],
    limit: int | None,
) -> list[tuple[Any, int]]:
    """(key, plays) of the window in rank order: the batch part and the speed part of the
    split, each read as whole hours from its roll-up and minutes at the edges, with the rows
    that match every filter ({dimension: value})."""
    key = spec.key
    reads = reads_of(spec.batch_store, split.batch_from, split.batch_to)
    reads += reads_of(spec.speed_store, split.speed_from, split.speed_to)
    selects: list[str] = []
    params: tuple[Any, ...] = ()
    for read in reads:
        conditions = dict(filters)
        # A roll-up holds the sum over all values of any filter not given as rows of its own
        # (`*`, store.rolled_filters): one row per hour and key; a minute table has none.
        if read.column == "hour":
            conditions = {d: filters.get(d, ALL) for d in rolled_filters(spec)}
        selects.append(
            f"SELECT {key}, plays FROM {read.table} "
            f"WHERE {read.column} >= ? AND {read.column} < ?"
            + "".join(f" AND {dimension} = ?" for dimension in conditions)
        )
        params += (read.first, read.to, *conditions.values())
    sql = (
        f"SELECT {key}, SUM(plays) AS total FROM ({' UNION ALL '.join(selects)}) "
        f"GROUP BY {key} HAVING total > 0 ORDER BY total DESC, {key} ASC"
    )
    if limit is not None:
        sql += " LIMIT ?"
        params += (limit,)
    return connection.execute(sql, params).fetchall()


def _count_answer(
    store: ServingStore,
    view: CountView,
    *,
    country: str | None,
    as_of: datetime | None,
    window: int,
    limit: int | None,
    where: Sequence[tuple[str, str]],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(header, rows) of a count view's answer: CONTRACT section 9, the merge of section 3."""
    check_country(country), check_window(window)
    if limit is not None:
        check_limit(limit)
    check_time(as_of)
    filters = check_filters(view, country, where)
    spec = store.spec(view.name)
    with store.snapshot() as connection:
        state = store.view_state(view.name, connection)
        span = Window.ending_at(_as_of(state, as_of), window)
        split = split_window(span.start, span.end, state.batch_watermark)
        # Shares are of all the window's plays: every key is read, the rows cut afterwards.
        pairs = _ranked(connection, spec, split, filters, limit if view.form == "top" else None)
    header = _header(state, filters.get("country"), span.end, window)
    return header, ranked_rows(view.ranked, view.form, pairs, limit)


def view(
    store: ServingStore,
    name: str,
    *,
    country: str | None = None,
    as_of: datetime | None = None,
    window: int = DEFAULT_WINDOW_MIN,
    limit: int = DEFAULT_LIMIT,
    where: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """CONTRACT section 9: the answer of the declared count view `name` for (country, as-of,
    window, limit, where filters as (dimension, value text) pairs). UnknownView (a
    ServingError) for a name no declaration gives."""
    declared = store.count_view(name)
    header, rows = _count_answer(
        store, declared, country=country, as_of=as_of, window=window, limit=limit, where=where
    )
    return {"view": declared.name, **header, "rows": rows}


def views(store: ServingStore) -> dict[str, Any]:
    """CONTRACT section 9: the declared count views with their dimensions, ranked dimension,
    form and description."""
    return {"views": [declared.to_json() for declared in store.views.values()]}


def trending(
    store: ServingStore,
    *,
    country: str | None = None,
    as_of: datetime | None = None,
    window: int = DEFAULT_WINDOW_MIN,
    limit: int = DEFAULT_LIMIT,
) -> dict[str, Any]:
    """CONTRACT section 6 trending JSON for (country, as-of, window, limit): the `trending`
    view's answer, its rows as `titles`."""
    header, rows = _count_answer(
        store, TRENDING, country=country, as_of=as_of, window=window, limit=limit, where=()
    )
    return {**header, "titles": rows}


def discovery(
    store: ServingStore,
    *,
    country: str | None = None,
    as_of: datetime | None = None,
    window: int = DEFAULT_WINDOW_MIN,
) -> dict[str, Any]:
    """CONTRACT section 6 discovery JSON: plays and share (4 decimals) per source, the
    `discovery` view's rows (every source, without rank) as `sources`."""
    header, rows = _count_answer(
        store, DISCOVERY, country=country, as_of=as_of, window=window, limit=None, where=()
    )
    return {**header, "sources": [{k: v for k, v in row.items() if k != "rank"} for row in rows]}


def sessions(
    store: ServingStore,
    *,
    member_id: int,
    title_id: int | None = None,
    limit: int = DEFAULT_SESSIONS_LIMIT,
    after: datetime | None = None,
    after_title: int | None = None,
) -> dict[str, Any]:
    """A member's sessions ordered by (session_start, title_id): batch ones that end before the
    batch watermark, speed ones that end at or after it; at most `limit` of them.

    Paging: a member's sessions of one title never start at the same time, so (session_start,
    title_id) names one session. `after` (a session_start) with `after_title` (a title_id)
    starts the page after that session; `after` alone, after every session that starts at or
    before it. The answer's `next` is the cursor of the following page ({"after": ...,
    "after_title": ...}), null on the last page.
    """
    check_id(member_id, "member_id"), check_id(title_id, "title_id")
    check_limit(limit, MAX_SESSIONS_LIMIT)
    check_time(after, "after"), check_id(after_title, "after_title")
    if after_title is not None and after is None:
        raise ServingError("after_title: needs after (the session_start of the same session)")
    title_filter = " AND title_id = ?" if title_id is not None else ""
    extra: tuple[Any, ...] = (title_id,) if title_id is not None else ()
    # Keyset paging on (session_start, title_id); `after` alone: MAX_ID is at or above every title.
    if after is not None:
        title_filter += " AND (session_start, title_id) > (?, ?)"
        extra += (
            epoch_micros(after),
            after_title if after_title is not None else MAX_ID,
        )
    # One more row than the page: whether there is a next page.
    wanted = limit + 1
    with store.snapshot() as connection:
        state = store.view_state(SESSIONS.name, connection)
        cut = int(state.batch_watermark.timestamp()) * MICROS if state.batch_watermark else None
        columns = "title_id, session_start, session_end, events, watched_ms"
        order = " ORDER BY session_start, title_id, session_end LIMIT ?"
        batch_rows = connection.execute(
            f"SELECT {columns} FROM sessions_batch WHERE member_id = ?{title_filter} "
            f"AND session_end < ?{order}",
            (member_id, *extra, cut if cut is not None else -(2**62), wanted),
        ).fetchall()
        speed_rows = connection.execute(
            f"SELECT {columns} FROM sessions_speed WHERE member_id = ?{title_filter} "
            f"AND session_end >= ?{order}",
            (member_id, *extra, cut if cut is not None else -(2**62), wanted),
        ).fetchall()
    rows = sorted([*batch_rows, *speed_rows], key=lambda r: (r[1], r[0], r[2]))
    page, more = rows[:limit], len(rows) > limit
    last = page[-1] if more else None
    return {
        "member_id": member_id,
        "batch_watermark": iso(state.batch_watermark),
        "speed_watermark": iso(state.speed_watermark),
        "next": (
            None
            if last is None
            else {"after": iso(_from_micros(last[1])), "after_title": int(last[0])}
        ),
        "sessions": [
            {
                "title_id": int(title),
                "session_start": iso(_from_micros(start)),
                "session_end": iso(_from_micros(end)),
                "events": int(events),
                "watched_ms": int(watched),
            }
            for title, start, end, events, watched in page
        ],
    }


def dumps(document: dict[str, Any]) -> str:
    """The JSON of an answer, as the CLI prints it and the HTTP API sends it."""
    return json.dumps(document, separators=(", ", ": "))
