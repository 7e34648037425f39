"""The serving layer: batch results before the batch watermark, speed results after it.

CONTRACT section 3: an answer for the window [T-W, T) takes the batch layer's per-minute counts
for the minutes before the batch watermark (end of the last contiguous recomputed day) and the
speed layer's for the minutes from it on. Sessions are split the same way by session_end (the
batch layer owns a session by the day of its last event, see `lambda_arch.batch.layer`).

The store is one SQLite file (`$LAMBDA_ARCH_HOME/serving/serving.sqlite3`, WAL mode): readers in
any number of processes (CLI, HTTP API) see a consistent snapshot while a refresh writes, each
answer is a few indexed range scans, and the file needs no server. It holds:
- `<view>_batch`: every computed batch day of the view (all history: as-of queries for any past
  window read it, after the speed layer has been pruned);
- `<view>_speed`: the speed layer's rows at or after the batch watermark (older ones are pruned
  once the batch covers them);
- `<view>_batch_hourly`, `<view>_speed_hourly` (trending, discovery): the same plays summed per
  hour, per country and over all countries (country `*`). A window reads its whole hours there
  and only the minutes at its edges from the minute tables: a day's window over all countries
  reads ~7k rows instead of ~21k in benchmarks/serving.py's store. Every write to a minute
  table updates the roll-up in the same transaction (a batch day or a pruning recomputes the
  hours it touched from the minute rows, speed deltas add to theirs), so both always agree;
- `batch_days`, `views`: which batch day version and which speed micro-batch each view holds,
  and both watermarks.

A refresh (`refresh_view`) reads the lake with pyarrow, no Spark: batch days whose state
changed since the store loaded them (recomputed days, late data), and the speed micro-batches
committed since the last refresh (a micro-batch is read only once Spark's commit log has it, so
a half-written retry is never ingested). It is incremental: its cost follows what changed.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from lambda_arch.batch import layer as batch
from lambda_arch.batch.lake import Lake
from lambda_arch.common.config import Settings
from lambda_arch.common.storage import pyarrow_filesystem
from lambda_arch.common.times import format_optional_time, parse_time
from lambda_arch.ingest.schema import COUNTRIES
from lambda_arch.serving.ranking import Window, ranked_titles, shares
from lambda_arch.speed import layer as speed

# The view specs live in lambda_arch.views.spec: re-exported for importers of the store.
from lambda_arch.views.spec import DISCOVERY as DISCOVERY
from lambda_arch.views.spec import SESSIONS as SESSIONS
from lambda_arch.views.spec import TRENDING as TRENDING
from lambda_arch.views.spec import VIEWS as VIEWS
from lambda_arch.views.spec import ViewSpec as ViewSpec

STORE_FILE = "serving.sqlite3"
DEFAULT_WINDOW_MIN = 60
DEFAULT_LIMIT = 10
MAX_LIMIT = 1000
# A year of minutes: longer windows are almost surely a typo (and a full scan).
MAX_WINDOW_MIN = 366 * 24 * 60
_MICROS = 1_000_000
# PRAGMA user_version of the store's layout: 1 added the hourly roll-ups (a file at 0 gets them
# filled from its minute tables when opened).
SCHEMA_VERSION = 1
HOUR_S = 3600
ALL_COUNTRIES = "*"  # the roll-ups' country of the sum over all countries (no ISO code)
# Bounds that hold every stored time (seconds or microseconds): "all rows" as a range.
_EVERYTHING = (-(2**62), 2**62)
# The hour of a minute (epoch seconds) in SQL, rounded down as Python's // does, also for
# times before 1970 (SQLite's % keeps the sign of the dividend).
_HOUR_OF_MINUTE = f"minute - ((minute % {HOUR_S}) + {HOUR_S}) % {HOUR_S}"


class ServingError(ValueError):
    """A query parameter the serving layer cannot answer for (bad country, window, time)."""


_SESSION_COLUMNS = (
    "member_id INTEGER NOT NULL, title_id INTEGER NOT NULL, session_start INTEGER NOT NULL, "
    "session_end INTEGER NOT NULL, events INTEGER NOT NULL, watched_ms INTEGER NOT NULL"
)


def _count_tables(view: str, key: str, key_type: str) -> str:
    """DDL of a count view's tables: per layer (batch with its dt, speed) the minutes and their
    hourly roll-up (`<table>_hourly`), each with a covering (country, time, key, plays) index."""
    statements = []
    for layer in ("batch", "speed"):
        for time_column, suffix in (("minute", ""), ("hour", "_hourly")):
            table = f"{view}_{layer}{suffix}"
            dated = layer == "batch" and not suffix
            statements.append(
                f"CREATE TABLE IF NOT EXISTS {table} ({'dt TEXT NOT NULL, ' if dated else ''}"
                f"{time_column} INTEGER NOT NULL, country TEXT NOT NULL, {key} {key_type} NOT NULL,"
                f" plays INTEGER NOT NULL, PRIMARY KEY ({time_column}, country, {key})) WITHOUT ROWID;"
            )
            if dated:
                statements.append(f"CREATE INDEX IF NOT EXISTS {table}_dt ON {table} (dt);")
            statements.append(
                f"CREATE INDEX IF NOT EXISTS {table}_country "
                f"ON {table} (country, {time_column}, {key}, plays);"
            )
    return "\n".join(statements)


# Times are integers: minutes as epoch seconds, session times as epoch microseconds. A count
# view's primary key serves all-countries windows (a range of minutes); its covering
# (country, minute, key, plays) index serves one country's window as one range, instead of
# reading every country's rows of the window and filtering (16x less CPU for a day's window).
# The hourly roll-ups have the same shape with `hour`; their index serves one country and the
# all-countries rows (country `*`) alike, their primary key the recomputation of a range of hours.
_SCHEMA = f"""
{_count_tables("trending", "title_id", "INTEGER")}
{_count_tables("discovery", "discovery_source", "TEXT")}
CREATE TABLE IF NOT EXISTS sessions_batch (dt TEXT NOT NULL, {_SESSION_COLUMNS});
CREATE INDEX IF NOT EXISTS sessions_batch_member ON sessions_batch (member_id, session_start);
CREATE INDEX IF NOT EXISTS sessions_batch_dt ON sessions_batch (dt);
CREATE TABLE IF NOT EXISTS sessions_speed ({_SESSION_COLUMNS});
CREATE INDEX IF NOT EXISTS sessions_speed_member ON sessions_speed (member_id, session_start);
CREATE INDEX IF NOT EXISTS sessions_speed_end ON sessions_speed (session_end);
-- computed_at: the version of the day's computation the store holds (computed_batch_days).
CREATE TABLE IF NOT EXISTS batch_days (view TEXT NOT NULL, dt TEXT NOT NULL,
    computed_at TEXT NOT NULL, rows INTEGER NOT NULL, PRIMARY KEY (view, dt)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS views (view TEXT PRIMARY KEY, batch_watermark INTEGER,
    speed_watermark INTEGER, speed_last_batch INTEGER NOT NULL DEFAULT -1,
    refreshed_at TEXT) WITHOUT ROWID;
"""


# Times --------------------------------------------------------------------------------------


def iso(moment: datetime | None) -> str | None:
    """UTC ISO-8601 with Z: seconds for whole seconds, else milliseconds or microseconds."""
    return format_optional_time(moment, "shortest")


def parse_iso(text: str) -> datetime:
    """An ISO-8601 time with offset or Z as an aware UTC datetime; ServingError otherwise."""
    try:
        return parse_time(text)
    except ValueError as error:
        raise ServingError(str(error)) from None


def check_country(country: str | None) -> str | None:
    if country is not None and country not in COUNTRIES:
        raise ServingError(f"{country!r} is not an upper-case ISO 3166-1 alpha-2 country code")
    return country


def check_window(minutes: int) -> int:
    if not 1 <= minutes <= MAX_WINDOW_MIN:
        raise ServingError(f"window must be a whole number of minutes from 1 to {MAX_WINDOW_MIN}")
    return minutes


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise ServingError(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return limit


def _seconds(moment: datetime) -> int:
    return int(moment.timestamp())


def _from_seconds(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _from_micros(value: int) -> datetime:
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
    first, last = _seconds(start), _seconds(end)
    if batch_watermark is None:
        return Split(first, first, first, last)
    cut = min(max(_seconds(batch_watermark), first), last)
    return Split(first, cut, cut, last)


def _hour_floor(seconds: int) -> int:
    return seconds // HOUR_S * HOUR_S


def _hour_ceil(seconds: int) -> int:
    return -(-seconds // HOUR_S) * HOUR_S


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
    whole_from, whole_to = _hour_ceil(first), _hour_floor(to)
    if whole_from >= whole_to:
        return [Read(table, "minute", first, to)]
    edges = [Read(table, "minute", first, whole_from), Read(table, "minute", whole_to, to)]
    return [Read(f"{table}_hourly", "hour", whole_from, whole_to)] + [
        edge for edge in edges if edge.first < edge.to
    ]


def contiguous_watermark(first_day: date | None, computed: Iterable[date]) -> datetime | None:
    """End of the last day of the unbroken run of computed days from `first_day`."""
    if first_day is None:
        return None
    done, last = set(computed), None
    day = first_day
    while day in done:
        last, day = day, day + timedelta(days=1)
    return batch.day_end(last) if last else None


# The store ----------------------------------------------------------------------------------


@contextmanager
def _write_transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _upgrade(connection: sqlite3.Connection) -> None:
    """Bring a store written by older code to SCHEMA_VERSION: fill the hourly roll-ups (created
    empty by _SCHEMA) from the minute tables. A new store passes here once, with nothing to fill.
    """
    if connection.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
        return
    with _write_transaction(connection):
        # Another process may have upgraded the file since the check: look again under the lock.
        if connection.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        for spec in VIEWS.values():
            for table in spec.rolled_up:
                _roll_up(connection, spec, table, *_EVERYTHING)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


@dataclass(frozen=True)
class ViewState:
    view: str
    batch_watermark: datetime | None
    speed_watermark: datetime | None
    speed_last_batch: int
    refreshed_at: str | None


class ServingStore:
    """The SQLite file of the serving layer; safe to share between threads and processes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()

    @classmethod
    def from_settings(cls, settings: Settings) -> ServingStore:
        return cls(settings.home / "serving" / STORE_FILE)

    def exists(self) -> bool:
        return self.path.exists()

    def _connection(self) -> sqlite3.Connection:
        """One connection per thread (sqlite3 connections are not shared across threads)."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.executescript(_SCHEMA)
            _upgrade(connection)
            self._local.connection = connection
        return connection

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every statement inside sees the same committed state."""
        connection = self._connection()
        connection.execute("BEGIN")
        try:
            yield connection
        finally:
            connection.execute("COMMIT")

    @contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (readers keep their snapshot until it commits)."""
        with _write_transaction(self._connection()) as connection:
            yield connection

    # State -----------------------------------------------------------------------------------

    def view_state(self, view: str, connection: sqlite3.Connection | None = None) -> ViewState:
        connection = connection or self._connection()
        row = connection.execute(
            "SELECT batch_watermark, speed_watermark, speed_last_batch, refreshed_at "
            "FROM views WHERE view = ?",
            (view,),
        ).fetchone()
        if row is None:
            return ViewState(view, None, None, -1, None)
        return ViewState(view, _from_seconds(row[0]), _from_seconds(row[1]), row[2], row[3])

    def batch_days(self, view: str) -> dict[str, str]:
        rows = self._connection().execute(
            "SELECT dt, computed_at FROM batch_days WHERE view = ?", (view,)
        )
        return dict(rows.fetchall())

    def row_counts(self, view: str) -> dict[str, int]:
        spec = VIEWS[view]
        connection = self._connection()
        return {
            table: connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in (spec.batch_store, spec.speed_store)
        }

    # Answers ---------------------------------------------------------------------------------

    def _as_of(self, state: ViewState, as_of: datetime | None) -> datetime:
        """T: the given time, else the speed watermark, else the batch watermark, else now."""
        return as_of or state.speed_watermark or state.batch_watermark or datetime.now(UTC)

    def _header(
        self, state: ViewState, country: str | None, end: datetime, minutes: int
    ) -> dict[str, Any]:
        return {
            "country": country,
            "as_of": iso(end),
            "window_minutes": minutes,
            "batch_watermark": iso(state.batch_watermark),
            "speed_watermark": iso(state.speed_watermark),
        }

    def _ranked(
        self,
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
        self,
        *,
        country: str | None = None,
        as_of: datetime | None = None,
        window: int = DEFAULT_WINDOW_MIN,
        limit: int = DEFAULT_LIMIT,
    ) -> dict[str, Any]:
        """CONTRACT section 6 trending JSON for (country, as-of, window, limit)."""
        check_country(country), check_window(window), check_limit(limit)
        with self.snapshot() as connection:
            state = self.view_state(TRENDING.name, connection)
            span = Window.ending_at(self._as_of(state, as_of), window)
            split = split_window(span.start, span.end, state.batch_watermark)
            rows = self._ranked(connection, TRENDING, split, country, limit)
        return {**self._header(state, country, span.end, window), "titles": ranked_titles(rows)}

    def discovery(
        self,
        *,
        country: str | None = None,
        as_of: datetime | None = None,
        window: int = DEFAULT_WINDOW_MIN,
    ) -> dict[str, Any]:
        """CONTRACT section 6 discovery JSON: plays and share (4 decimals) per source."""
        check_country(country), check_window(window)
        with self.snapshot() as connection:
            state = self.view_state(DISCOVERY.name, connection)
            span = Window.ending_at(self._as_of(state, as_of), window)
            split = split_window(span.start, span.end, state.batch_watermark)
            rows = self._ranked(connection, DISCOVERY, split, country, None)
        return {**self._header(state, country, span.end, window), "sources": shares(rows)}

    def sessions(self, *, member_id: int, title_id: int | None = None) -> dict[str, Any]:
        """A member's sessions ordered by session_start: batch ones that end before the batch
        watermark, speed ones that end at or after it."""
        if member_id < 0 or (title_id is not None and title_id < 0):
            raise ServingError("member_id and title_id must be whole numbers >= 0")
        title_filter = " AND title_id = ?" if title_id is not None else ""
        extra = (title_id,) if title_id is not None else ()
        with self.snapshot() as connection:
            state = self.view_state(SESSIONS.name, connection)
            cut = (
                int(state.batch_watermark.timestamp()) * _MICROS if state.batch_watermark else None
            )
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

    def summary(self) -> dict[str, Any]:
        """Per view: watermarks, rows held by each layer, batch days, last refresh."""
        result: dict[str, Any] = {}
        for name in VIEWS:
            state = self.view_state(name)
            days = sorted(self.batch_days(name))
            result[name] = {
                "batch_watermark": iso(state.batch_watermark),
                "speed_watermark": iso(state.speed_watermark),
                "batch_days": len(days),
                "first_batch_day": days[0] if days else None,
                "last_batch_day": days[-1] if days else None,
                "speed_last_micro_batch": state.speed_last_batch,
                "rows": self.row_counts(name),
                "refreshed_at": state.refreshed_at,
            }
        return result


# Refresh: lake -> store ---------------------------------------------------------------------


@dataclass
class RefreshReport:
    """What one refresh of a view did (Dagster metadata: plain numbers)."""

    view: str
    batch_days_loaded: list[str] = field(default_factory=list)
    batch_days_dropped: list[str] = field(default_factory=list)
    batch_rows_loaded: int = 0
    speed_batches_read: int = 0
    speed_rows_read: int = 0
    speed_rows_pruned: int = 0
    speed_rebuilt: bool = False
    batch_watermark: datetime | None = None
    speed_watermark: datetime | None = None
    duration_s: float = 0.0
    rows: dict[str, int] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        now = datetime.now(UTC)
        metadata: dict[str, Any] = {
            "batch_days_loaded": len(self.batch_days_loaded),
            "batch_rows_loaded": self.batch_rows_loaded,
            "speed_micro_batches_read": self.speed_batches_read,
            "speed_rows_read": self.speed_rows_read,
            "speed_rows_pruned": self.speed_rows_pruned,
            "duration_s": round(self.duration_s, 3),
            "batch_watermark": iso(self.batch_watermark) or "",
            "speed_watermark": iso(self.speed_watermark) or "",
            **{f"rows_{table}": count for table, count in self.rows.items()},
        }
        if self.batch_days_loaded:
            metadata["batch_days"] = ", ".join(self.batch_days_loaded)
        if self.speed_watermark is not None:
            metadata["speed_watermark_lag_s"] = round(
                (now - self.speed_watermark).total_seconds(), 1
            )
        if self.batch_watermark is not None:
            metadata["batch_watermark_lag_h"] = round(
                (now - self.batch_watermark).total_seconds() / 3600, 2
            )
        return metadata


def computed_batch_days(lake: Lake, table: str) -> dict[date, str]:
    """Days the batch layer has computed for `table`, each with a version of its computation:
    the modification time of the day's state file, which every (re)computation rewrites last.
    One listing, no file read per day (a year of days is one request on S3, not 365)."""
    filesystem, base = pafs.FileSystem.from_uri(lake.location("_batch_state"))
    infos = filesystem.get_file_info(pafs.FileSelector(f"{base}/{table}", allow_not_found=True))
    days: dict[date, str] = {}
    for info in infos:
        if info.type != pafs.FileType.File or not info.base_name.endswith(".json"):
            continue
        try:
            day = date.fromisoformat(info.base_name.removesuffix(".json"))
        except ValueError:
            continue
        days[day] = str(info.mtime_ns)
    return days


def changed_days(computed: dict[date, str], held: dict[str, str]) -> list[date]:
    """Computed days whose version the store does not hold (new or recomputed)."""
    return sorted(day for day, version in computed.items() if held.get(day.isoformat()) != version)


def committed_batches(settings: Settings, query: str) -> list[int]:
    """Micro-batch ids whose output folder is complete: every `batch_id=<N>` folder of the
    query's table up to the newest id in its commit log. (The commit log itself keeps only the
    last 100 batches, spark.sql.streaming.minBatchesToRetain, so it cannot list them all.)"""
    commits = Path(speed.checkpoint_of(settings, query)) / "commits"
    if not commits.is_dir():
        return []
    latest = max((int(p.name) for p in commits.iterdir() if p.name.isdigit()), default=None)
    if latest is None:
        return []
    filesystem, path = pyarrow_filesystem(speed.SpeedPaths.from_settings(settings).table(query))
    folders = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    ids = [
        int(info.base_name.removeprefix("batch_id="))
        for info in folders
        if info.type == pafs.FileType.Directory
        and info.base_name.startswith("batch_id=")
        and info.base_name.removeprefix("batch_id=").isdigit()
    ]
    return sorted(batch_id for batch_id in ids if batch_id <= latest)


def _read_parquet(uri: str, columns: Sequence[str]) -> pa.Table | None:
    """The Parquet files of a folder (hidden ones skipped, as Spark does); None if absent."""
    filesystem, path = pyarrow_filesystem(uri)
    if filesystem.get_file_info(path).type != pafs.FileType.Directory:
        return None
    dataset = pads.dataset(path, filesystem=filesystem, format="parquet")
    if dataset.schema.names == [] or not dataset.files:
        return None
    return dataset.to_table(columns=list(columns))


def _epoch(column: pa.ChunkedArray, unit: str) -> list[int]:
    """A timestamp column (Spark writes INT96 or micros) as epoch integers in `unit`."""
    micros = pc.cast(pc.cast(column, pa.timestamp("us", tz="UTC")), pa.int64())
    if unit == "s":
        micros = pc.divide(micros, _MICROS)
    return micros.to_pylist()


def _store_rows(spec: ViewSpec, table: pa.Table) -> list[tuple[Any, ...]]:
    """Arrow rows of a view as store tuples (without dt), times as integers."""
    if spec is SESSIONS:
        return list(
            zip(
                table.column("member_id").to_pylist(),
                table.column("title_id").to_pylist(),
                _epoch(table.column("session_start"), "us"),
                _epoch(table.column("session_end"), "us"),
                table.column("events").to_pylist(),
                table.column("watched_ms").to_pylist(),
                strict=True,
            )
        )
    return list(
        zip(
            _epoch(table.column("minute"), "s"),
            table.column("country").to_pylist(),
            table.column(spec.key).to_pylist(),
            table.column("plays").to_pylist(),
            strict=True,
        )
    )


def _columns(spec: ViewSpec) -> tuple[str, ...]:
    return batch.TABLE_COLUMNS[spec.batch_table]


def _cut_value(spec: ViewSpec, watermark: datetime | None) -> int | None:
    """The batch watermark in the unit of the view's time column in the store."""
    if watermark is None:
        return None
    seconds = int(watermark.timestamp())
    return seconds * _MICROS if spec is SESSIONS else seconds


def _time_index(spec: ViewSpec) -> int:
    return 3 if spec is SESSIONS else 0  # position of the split column in _store_rows tuples


def _roll_up(
    connection: sqlite3.Connection, spec: ViewSpec, table: str, first: int, to: int
) -> None:
    """Recompute the hourly roll-up of a count view's minute table for every hour that
    [first, to) touches, from the minute rows: per country, then over all countries. Every
    change to a minute table calls it (or `_add_to_roll_up`) in the same transaction, so the
    two never disagree."""
    if table not in spec.rolled_up or first >= to:
        return
    hourly, key = f"{table}_hourly", spec.key
    hours = (_hour_floor(first), _hour_ceil(to))
    connection.execute(f"DELETE FROM {hourly} WHERE hour >= ? AND hour < ?", hours)
    connection.execute(
        f"INSERT INTO {hourly} SELECT {_HOUR_OF_MINUTE}, country, {key}, SUM(plays) "
        f"FROM {table} WHERE minute >= ? AND minute < ? GROUP BY 1, 2, 3",
        hours,
    )
    connection.execute(
        f"INSERT INTO {hourly} SELECT hour, ?, {key}, SUM(plays) FROM {hourly} "
        f"WHERE hour >= ? AND hour < ? GROUP BY hour, {key}",
        (ALL_COUNTRIES, *hours),
    )


def _add_to_roll_up(
    connection: sqlite3.Connection, table: str, rows: Iterable[tuple[Any, ...]]
) -> None:
    """Add count deltas (minute, country, key, plays) to the hourly roll-up of `table`, per
    country and over all countries. The speed layer's deltas take this way rather than
    `_roll_up`: its cost follows the delta rows, not the rows of the hours they fall in (a
    continuous refresh adds a few rows to a dense hour every few seconds)."""
    sums: Counter[tuple[int, str, Any]] = Counter()
    for minute, country, key, plays in rows:
        hour = _hour_floor(minute)
        sums[(hour, country, key)] += plays
        sums[(hour, ALL_COUNTRIES, key)] += plays
    connection.executemany(
        f"INSERT INTO {table}_hourly VALUES (?, ?, ?, ?) "
        f"ON CONFLICT DO UPDATE SET plays = plays + excluded.plays",
        [(*bucket, plays) for bucket, plays in sums.items()],
    )


def _span(minutes: Iterable[int | None]) -> tuple[int, int]:
    """The half-open range from the first to the last of some minutes (None skipped); empty
    when there are none."""
    present = [minute for minute in minutes if minute is not None]
    return (min(present), max(present) + 1) if present else (0, 0)


def _insert_speed(
    connection: sqlite3.Connection, spec: ViewSpec, rows: list[tuple[Any, ...]]
) -> None:
    if spec is SESSIONS:
        connection.executemany("INSERT INTO sessions_speed VALUES (?, ?, ?, ?, ?, ?)", rows)
        return
    # Deltas of several micro-batches add up per bucket, and per hour in the roll-up.
    connection.executemany(
        f"INSERT INTO {spec.speed_store} VALUES (?, ?, ?, ?) "
        f"ON CONFLICT DO UPDATE SET plays = plays + excluded.plays",
        rows,
    )
    _add_to_roll_up(connection, spec.speed_store, rows)


def prune_speed(connection: sqlite3.Connection, spec: ViewSpec, before: int | None) -> int:
    """Delete a view's speed rows whose split time is before `before` (all when None) and
    recompute the roll-up's hours they were in; returns the rows deleted."""
    to = _EVERYTHING[1] if before is None else before
    deleted = connection.execute(
        f"DELETE FROM {spec.speed_store} WHERE {spec.time_column} < ?", (to,)
    ).rowcount
    if deleted:
        _roll_up(connection, spec, spec.speed_store, _EVERYTHING[0], to)
    return deleted


def _delete_batch_day(
    connection: sqlite3.Connection, spec: ViewSpec, dt: str
) -> tuple[int | None, ...]:
    """Delete one batch day's rows of a view; returns the first and last of their minutes (the
    roll-up hours to recompute), none for sessions or a day without rows."""
    minutes: tuple[int | None, ...] = ()
    if spec.key is not None:
        minutes = connection.execute(
            f"SELECT min(minute), max(minute) FROM {spec.batch_store} WHERE dt = ?", (dt,)
        ).fetchone()
    connection.execute(f"DELETE FROM {spec.batch_store} WHERE dt = ?", (dt,))
    return minutes


def drop_batch_day(connection: sqlite3.Connection, spec: ViewSpec, dt: str) -> None:
    """Forget one batch day of a view (its state is gone from the lake), roll-up included."""
    old = _delete_batch_day(connection, spec, dt)
    _roll_up(connection, spec, spec.batch_store, *_span(old))
    connection.execute("DELETE FROM batch_days WHERE view = ? AND dt = ?", (spec.name, dt))


def replace_batch_day(
    connection: sqlite3.Connection,
    spec: ViewSpec,
    dt: str,
    computed_at: str,
    rows: Sequence[tuple[Any, ...]],
) -> int:
    """Replace one batch day of a view (rows as `_store_rows` gives them, without dt), its
    roll-up hours, and record which version it is, inside the caller's write transaction;
    returns the rows."""
    placeholders = ", ".join("?" * (len(_columns(spec)) + 1))
    old = _delete_batch_day(connection, spec, dt)
    connection.executemany(
        f"INSERT INTO {spec.batch_store} VALUES ({placeholders})", [(dt, *row) for row in rows]
    )
    if spec.key is not None:
        # The hours of the old rows and of the new ones, in one recomputation.
        _roll_up(connection, spec, spec.batch_store, *_span([*old, *(row[0] for row in rows)]))
    connection.execute(
        "INSERT OR REPLACE INTO batch_days VALUES (?, ?, ?, ?)",
        (spec.name, dt, computed_at, len(rows)),
    )
    return len(rows)


def load_batch_days(
    store: ServingStore,
    view: str,
    days: dict[str, tuple[str, Sequence[tuple[Any, ...]]]],
    batch_watermark: datetime | None,
) -> int:
    """Put computed batch days ({dt: (computed_at, rows)}) into the store and set the view's
    batch watermark, in one transaction: the batch half of `refresh_view` for callers that
    have the rows already (benchmarks, imports). Returns the rows loaded."""
    spec = VIEWS[view]
    with store.writing() as connection:
        loaded = sum(
            replace_batch_day(connection, spec, dt, computed_at, rows)
            for dt, (computed_at, rows) in days.items()
        )
        connection.execute(
            "INSERT INTO views (view, batch_watermark, refreshed_at) VALUES (?, ?, ?) "
            "ON CONFLICT (view) DO UPDATE SET batch_watermark = excluded.batch_watermark, "
            "refreshed_at = excluded.refreshed_at",
            (view, _seconds(batch_watermark) if batch_watermark else None, iso(datetime.now(UTC))),
        )
    return loaded


def refresh_view(
    settings: Settings, store: ServingStore, view: str, lake: Lake | None = None
) -> RefreshReport:
    """Bring one view of the store up to date with the lake: changed batch days, new speed
    micro-batches, the batch watermark (pruning speed rows it covers) and the speed watermark.
    """
    started = time.monotonic()
    spec = VIEWS[view]
    lake = lake or Lake.from_settings(settings)
    paths = speed.SpeedPaths.from_settings(settings)
    report = RefreshReport(view)

    computed = computed_batch_days(lake, spec.batch_table)
    first_landed = batch.first_landed_day(lake)
    first_day = max(settings.start_date, first_landed) if first_landed else None
    batch_watermark = contiguous_watermark(first_day, computed)
    speed_state = speed.read_speed_state(paths, spec.speed_query) or {}
    speed_watermark = parse_iso(speed_state["watermark"]) if speed_state.get("watermark") else None

    # The whole refresh holds the store's write lock: two refreshes at once (a sensor's run and
    # `lambda-arch run`) would otherwise both add the same speed micro-batches.
    with store.writing() as connection:
        held = store.batch_days(view)
        changed = changed_days(computed, held)
        dropped = sorted(set(held) - {d.isoformat() for d in computed})
        loaded: dict[str, tuple[str, list[tuple[Any, ...]]]] = {}
        for day in changed:
            table = _read_parquet(
                f"{lake.location(spec.batch_table)}/dt={day.isoformat()}", _columns(spec)
            )
            rows = _store_rows(spec, table) if table is not None else []
            loaded[day.isoformat()] = (computed[day], rows)

        previous = store.view_state(view, connection)
        committed = committed_batches(settings, spec.speed_query)
        # A checkpoint that restarted (fewer batches than ingested), or a batch watermark that
        # moved back (a day lost its state), needs speed rows the store has pruned: rebuild.
        rebuild = (committed and committed[-1] < previous.speed_last_batch) or (
            previous.batch_watermark is not None
            and (batch_watermark is None or batch_watermark < previous.batch_watermark)
        )
        rebuild = bool(rebuild) or (not committed and previous.speed_last_batch >= 0)
        after = -1 if rebuild else previous.speed_last_batch
        new_batches = [b for b in committed if b > after]
        cut = _cut_value(spec, batch_watermark)
        position = _time_index(spec)
        speed_rows: list[tuple[Any, ...]] = []
        for batch_id in new_batches:
            table = _read_parquet(
                f"{paths.table(spec.speed_query)}/batch_id={batch_id}", _columns(spec)
            )
            if table is None:
                continue
            rows = _store_rows(spec, table)
            report.speed_rows_read += len(rows)
            speed_rows += [r for r in rows if cut is None or r[position] >= cut]

        for dt in dropped:
            drop_batch_day(connection, spec, dt)
        for dt, (computed_at, rows) in loaded.items():
            report.batch_rows_loaded += replace_batch_day(connection, spec, dt, computed_at, rows)
        if rebuild:
            prune_speed(connection, spec, None)
        _insert_speed(connection, spec, speed_rows)
        if cut is not None:
            report.speed_rows_pruned = prune_speed(connection, spec, cut)
        connection.execute(
            "INSERT OR REPLACE INTO views VALUES (?, ?, ?, ?, ?)",
            (
                view,
                _seconds(batch_watermark) if batch_watermark else None,
                _seconds(speed_watermark) if speed_watermark else None,
                max(committed[-1] if committed else -1, -1),
                iso(datetime.now(UTC)),
            ),
        )
    report.batch_days_loaded = list(loaded)
    report.batch_days_dropped = dropped
    report.speed_batches_read = len(new_batches)
    report.speed_rebuilt = rebuild
    report.batch_watermark = batch_watermark
    report.speed_watermark = speed_watermark
    report.rows = store.row_counts(view)
    report.duration_s = time.monotonic() - started
    return report


def refresh_all(settings: Settings, store: ServingStore | None = None) -> list[RefreshReport]:
    """refresh_view for every view."""
    store = store or ServingStore.from_settings(settings)
    lake = Lake.from_settings(settings)
    return [refresh_view(settings, store, view, lake) for view in VIEWS]


def pending_views(settings: Settings, store: ServingStore | None = None) -> dict[str, str]:
    """Views whose store lags the lake, with why: a batch day computed or recomputed since the
    store loaded it, or speed micro-batches committed since the last refresh. Cheap: listings
    and small state files only."""
    store = store or ServingStore.from_settings(settings)
    lake = Lake.from_settings(settings)
    pending: dict[str, str] = {}
    for name, spec in VIEWS.items():
        held = store.batch_days(name)
        computed = computed_batch_days(lake, spec.batch_table)
        changed = [day.isoformat() for day in changed_days(computed, held)]
        committed = committed_batches(settings, spec.speed_query)
        last = store.view_state(name).speed_last_batch
        if changed:
            pending[name] = f"batch days {', '.join(changed[:5])}" + (
                f" and {len(changed) - 5} more" if len(changed) > 5 else ""
            )
        elif committed and committed[-1] != last:
            pending[name] = f"speed micro-batches {last + 1}..{committed[-1]}"
    return pending


def dumps(document: dict[str, Any]) -> str:
    """The JSON of an answer, as the CLI prints it and the HTTP API sends it."""
    return json.dumps(document, separators=(", ", ": "))
