"""The serving store: one SQLite file of both layers' view rows, their hourly roll-ups, and the
watermarks and versions that say what it holds.

CONTRACT section 3: answers (`lambda_arch.serving.answers`) take the batch layer's rows before
the batch watermark and the speed layer's from it on; `lambda_arch.serving.refresh` fills the
store from the lake. This module owns the file, its layout and every write to it.

The file is `$LAMBDA_ARCH_HOME/serving/serving.sqlite3`, WAL mode: readers in any number of
processes (CLI, HTTP API) see a consistent snapshot while a refresh writes, each answer is a few
indexed range scans, and the file needs no server. It holds, for every declared count view (CONTRACT section 9: its tables have the columns
minute, its dimensions and plays, so trending's are (minute, country, title_id, plays)):
- `<view>_batch`: every computed batch day of the view (all history: as-of queries for any past
  window read it, after the speed layer has been pruned);
- `<view>_speed`: the speed layer's rows at or after the batch watermark (older ones are pruned
  once the batch covers them);
- `<view>_batch_hourly`, `<view>_speed_hourly` (every count view): the same plays summed per
  hour and dimension values, and over all values (`*`) of every combination of the view's filter
  dimensions (trending: per country and over all countries, country `*`; `rolled_filters`). A
  window reads its whole hours there and only the minutes at its edges from the minute
  tables: a day's window over all countries reads ~7k rows instead of ~21k in
  benchmarks/serving.py's store. Every write to a minute
  table updates the roll-up in the same transaction (a batch day or a pruning recomputes the
  hours it touched from the minute rows, speed deltas add to theirs), so both always agree;
- `batch_days`, `views`: which batch day version and which speed micro-batch each view holds,
  and both watermarks;
- `speed_batches`: per view, the speed micro-batches read and still in the lake, each with the
  newest split time of its rows: what `refresh` may remove once the batch watermark passes it.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from lambda_arch.common.config import Settings
from lambda_arch.common.times import EPOCH, format_optional_time, parse_time
from lambda_arch.views.declarations import BUILT_IN, DIMENSION_TYPES, CountView, declared_views
from lambda_arch.views.spec import SESSIONS, ViewSpec, spec_of

STORE_FILE = "serving.sqlite3"
MICROS = 1_000_000  # session times are stored as epoch microseconds
# PRAGMA user_version of the store's layout: 1 added the hourly roll-ups (a file at 0 gets them
# filled from its minute tables when opened), 2 the views' speed_max_event_time (added empty:
# the next refresh fills it).
SCHEMA_VERSION = 2
HOUR_S = 3600
ALL_COUNTRIES = "*"  # the roll-ups' country of the sum over all countries (no ISO code)
ALL = ALL_COUNTRIES  # likewise for any filter dimension: the sum over all its values
# Bounds that hold every stored time (seconds or microseconds): "all rows" as a range.
_EVERYTHING = (-(2**62), 2**62)
# The hour of a minute (epoch seconds) in SQL, rounded down as Python's // does, also for
# times before 1970 (SQLite's % keeps the sign of the dividend).
_HOUR_OF_MINUTE = f"minute - ((minute % {HOUR_S}) + {HOUR_S}) % {HOUR_S}"


class ServingError(ValueError):
    """A query parameter the serving layer cannot answer for (bad country, window, time)."""


class UnknownView(ServingError):
    """A view name that no declaration gives (HTTP 404, CLI exit 2)."""


_SESSION_COLUMNS = (
    "member_id INTEGER NOT NULL, title_id INTEGER NOT NULL, session_start INTEGER NOT NULL, "
    "session_end INTEGER NOT NULL, events INTEGER NOT NULL, watched_ms INTEGER NOT NULL"
)


# SQLite types of the dimension columns (lambda_arch.views.declarations.DIMENSION_TYPES).
_SQL_TYPES = {"string": "TEXT", "bigint": "INTEGER"}


def dimensions_of(spec: ViewSpec) -> tuple[str, ...]:
    """A count view's dimension columns: its lake columns between minute and plays."""
    return spec.columns[1:-1]


def rolled_filters(spec: ViewSpec) -> tuple[str, ...]:
    """The dimensions a view filters by (all but the ranked, last one). Its hourly roll-up holds
    the sums for every combination of them either given or summed over (`*`): trending's, per
    country and over all countries (country `*`); a view filtered by country and device, also
    per device over all countries and per country over all devices. So any answer reads one
    row per hour and key from the roll-up, whichever filters it has."""
    return dimensions_of(spec)[:-1]


def _star_sets(spec: ViewSpec) -> list[tuple[int, ...]]:
    """The non-empty sets of filter positions (in the dimensions) a roll-up sums over."""
    positions = range(len(rolled_filters(spec)))
    return [
        chosen
        for size in range(1, len(positions) + 1)
        for chosen in itertools.combinations(positions, size)
    ]


def _count_tables(spec: ViewSpec) -> str:
    """DDL of a count view's tables: per layer (batch with its dt, speed) the minutes and their
    hourly roll-up (`<table>_hourly`). A roll-up's covering index leads with every filter
    dimension, then the hour: an answer gives each filter a value or `*`, so it reads exactly
    its rows as one range. A minute table with a country filter has a covering (country, minute,
    other dimensions, plays) index for one country's window edges. For trending and discovery
    this is the layout stores have always had: (minute, country, key, plays), indexed by
    (country, minute or hour, key, plays)."""
    dims, filters = dimensions_of(spec), rolled_filters(spec)
    columns = ", ".join(f"{d} {_SQL_TYPES[DIMENSION_TYPES[d]]} NOT NULL" for d in dims)
    statements = []
    for layer in ("batch", "speed"):
        for time_column, suffix in (("minute", ""), ("hour", "_hourly")):
            table = f"{spec.name}_{layer}{suffix}"
            dated = layer == "batch" and not suffix
            statements.append(
                f"CREATE TABLE IF NOT EXISTS {table} ({'dt TEXT NOT NULL, ' if dated else ''}"
                f"{time_column} INTEGER NOT NULL, {columns}, plays INTEGER NOT NULL, "
                f"PRIMARY KEY ({time_column}, {', '.join(dims)})) WITHOUT ROWID;"
            )
            if dated:
                statements.append(f"CREATE INDEX IF NOT EXISTS {table}_dt ON {table} (dt);")
            leading = filters if suffix else ("country",) if "country" in filters else ()
            if leading:
                rest = "".join(f"{d}, " for d in dims if d not in leading)
                statements.append(
                    f"CREATE INDEX IF NOT EXISTS {table}_{'_'.join(leading)} ON {table} "
                    f"({', '.join(leading)}, {time_column}, {rest}plays);"
                )
    return "\n".join(statements)


# Times are integers: minutes as epoch seconds, session times as epoch microseconds. A count
# view's tables (`_count_tables`, one set per declared view, created when the store is opened):
# its primary key serves all-countries windows (a range of minutes); its covering (country,
# minute, key, plays) index serves one country's window as one range, instead of reading every
# country's rows of the window and filtering (16x less CPU for a day's window). The hourly
# roll-ups have the same shape with `hour`; their index serves one country and the all-countries
# rows (country `*`) alike, their primary key the recomputation of a range of hours. The tables
# below are the same for every store.
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS sessions_batch (dt TEXT NOT NULL, {_SESSION_COLUMNS});
CREATE INDEX IF NOT EXISTS sessions_batch_member ON sessions_batch (member_id, session_start);
CREATE INDEX IF NOT EXISTS sessions_batch_dt ON sessions_batch (dt);
CREATE TABLE IF NOT EXISTS sessions_speed ({_SESSION_COLUMNS});
CREATE INDEX IF NOT EXISTS sessions_speed_member ON sessions_speed (member_id, session_start);
CREATE INDEX IF NOT EXISTS sessions_speed_end ON sessions_speed (session_end);
-- computed_at: the version of the day's computation the store holds (computed_batch_days).
CREATE TABLE IF NOT EXISTS batch_days (view TEXT NOT NULL, dt TEXT NOT NULL,
    computed_at TEXT NOT NULL, rows INTEGER NOT NULL, PRIMARY KEY (view, dt)) WITHOUT ROWID;
-- Watermarks in epoch seconds; speed_max_event_time, the newest event time the speed layer has
-- counted (an answer's default as-of time, lambda_arch.serving.answers), in epoch microseconds.
CREATE TABLE IF NOT EXISTS views (view TEXT PRIMARY KEY, batch_watermark INTEGER,
    speed_watermark INTEGER, speed_last_batch INTEGER NOT NULL DEFAULT -1,
    refreshed_at TEXT, speed_max_event_time INTEGER) WITHOUT ROWID;
-- newest: the micro-batch's latest minute (epoch seconds) or session_end (microseconds), NULL
-- when it has no rows.
CREATE TABLE IF NOT EXISTS speed_batches (view TEXT NOT NULL, batch_id INTEGER NOT NULL,
    newest INTEGER, PRIMARY KEY (view, batch_id)) WITHOUT ROWID;
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
    except OverflowError:  # in UTC, before year 1 or after 9999 (0001-01-01T00:00:00+01:00)
        raise ServingError(f"{text[:60]!r} is out of the range of times") from None


def epoch_seconds(moment: datetime) -> int:
    """A time as the store keeps minutes and watermarks: whole epoch seconds."""
    return int(moment.timestamp())


def time_from_seconds(value: int | None) -> datetime | None:
    """The time of stored epoch seconds; None stays None (no watermark yet)."""
    return None if value is None else datetime.fromtimestamp(value, UTC)


def epoch_micros(moment: datetime) -> int:
    """A time as the store keeps event and session times: epoch microseconds, exactly."""
    return (moment - EPOCH) // timedelta(microseconds=1)


def time_from_micros(value: int | None) -> datetime | None:
    """The time of stored epoch microseconds, exactly; None stays None."""
    return None if value is None else EPOCH + timedelta(microseconds=value)


def hour_floor(seconds: int) -> int:
    """The start of the hour holding `seconds` (epoch seconds)."""
    return seconds // HOUR_S * HOUR_S


def hour_ceil(seconds: int) -> int:
    """The first hour start at or after `seconds` (epoch seconds)."""
    return -(-seconds // HOUR_S) * HOUR_S


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


def _upgrade(connection: sqlite3.Connection, specs: Iterable[ViewSpec]) -> None:
    """Bring a store written by older code to SCHEMA_VERSION: fill the hourly roll-ups (created
    empty by _SCHEMA) from the minute tables, add the views' speed_max_event_time. A new store
    passes here once, with nothing to fill.
    """
    if connection.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
        return
    with _write_transaction(connection):
        # Another process may have upgraded the file since the check: look again under the lock.
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version >= SCHEMA_VERSION:
            return
        if version < 1:
            for spec in specs:
                for table in spec.rolled_up:
                    _roll_up(connection, spec, table, *_EVERYTHING)
        columns = {row[1] for row in connection.execute("PRAGMA table_info(views)")}
        if "speed_max_event_time" not in columns:
            connection.execute("ALTER TABLE views ADD COLUMN speed_max_event_time INTEGER")
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


@dataclass(frozen=True)
class ViewState:
    view: str
    batch_watermark: datetime | None
    speed_watermark: datetime | None
    speed_last_batch: int
    refreshed_at: str | None
    # The newest event time the speed layer has counted (None: it has counted nothing).
    speed_max_event_time: datetime | None = None


class ServingStore:
    """The SQLite file of the serving layer; safe to share between threads and processes.

    It serves the count views it is given (the built-in ones by default, every declared one
    from settings) and sessions; opening a store written with fewer views adds the tables of the
    others, empty until the next refresh fills them.
    """

    def __init__(self, path: Path, views: Sequence[CountView] = BUILT_IN) -> None:
        self.path = Path(path)
        self.views: dict[str, CountView] = {view.name: view for view in views}
        # Every view's spec, count views first (declaration order), sessions last.
        self.specs: dict[str, ViewSpec] = {
            **{view.name: spec_of(view) for view in views},
            SESSIONS.name: SESSIONS,
        }
        self._local = threading.local()

    @classmethod
    def from_settings(cls, settings: Settings) -> ServingStore:
        """The store of LAMBDA_ARCH_HOME serving every declared view (ViewDeclarationError when
        LAMBDA_ARCH_VIEWS_FILE is bad)."""
        return cls(settings.home / "serving" / STORE_FILE, declared_views(settings.views_file))

    def spec(self, view: str) -> ViewSpec:
        """The spec of one of the store's views (KeyError: not one of them)."""
        return self.specs[view]

    def count_view(self, view: str) -> CountView:
        """One of the store's count views by name; ServingError naming the known ones."""
        found = self.views.get(view)
        if found is None:
            raise UnknownView(
                f"view: {view[:60]!r} is not a declared view (one of {', '.join(self.views)})"
            )
        return found

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
            connection.executescript(
                _SCHEMA + "\n".join(_count_tables(spec) for spec in self.specs.values() if spec.key)
            )
            _upgrade(connection, self.specs.values())
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
            "SELECT batch_watermark, speed_watermark, speed_last_batch, refreshed_at, "
            "speed_max_event_time FROM views WHERE view = ?",
            (view,),
        ).fetchone()
        if row is None:
            return ViewState(view, None, None, -1, None)
        return ViewState(
            view,
            time_from_seconds(row[0]),
            time_from_seconds(row[1]),
            row[2],
            row[3],
            time_from_micros(row[4]),
        )

    def batch_days(self, view: str) -> dict[str, str]:
        rows = self._connection().execute(
            "SELECT dt, computed_at FROM batch_days WHERE view = ?", (view,)
        )
        return dict(rows.fetchall())

    def row_counts(self, view: str) -> dict[str, int]:
        spec = self.specs[view]
        connection = self._connection()
        return {
            table: connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in (spec.batch_store, spec.speed_store)
        }

    def summary(self) -> dict[str, Any]:
        """Per view: watermarks, rows held by each layer, batch days, last refresh."""
        result: dict[str, Any] = {}
        for name in self.specs:
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


# Writes: batch days, speed deltas, pruning; each keeps the roll-up in step --------------------


def _roll_up(
    connection: sqlite3.Connection, spec: ViewSpec, table: str, first: int, to: int
) -> None:
    """Recompute the hourly roll-up of a count view's minute table for every hour that
    [first, to) touches, from the minute rows: per dimension values, then summed over each
    combination of filter dimensions (`*`, `rolled_filters`). Every change to a minute table
    calls it (or `_add_to_roll_up`) in the same transaction, so the two never disagree."""
    if table not in spec.rolled_up or first >= to:
        return
    hourly, dims = f"{table}_hourly", dimensions_of(spec)
    hours = (hour_floor(first), hour_ceil(to))
    connection.execute(f"DELETE FROM {hourly} WHERE hour >= ? AND hour < ?", hours)
    connection.execute(
        f"INSERT INTO {hourly} SELECT {_HOUR_OF_MINUTE}, {', '.join(dims)}, SUM(plays) "
        f"FROM {table} WHERE minute >= ? AND minute < ? GROUP BY {_groups(len(dims) + 1)}",
        hours,
    )
    # The sums over all values of some filters, from the rows that have every filter's value.
    given = "".join(f" AND {d} != '{ALL}'" for d in rolled_filters(spec))
    for stars in _star_sets(spec):
        picked = ", ".join(f"'{ALL}'" if n in stars else d for n, d in enumerate(dims))
        kept = "".join(f", {d}" for n, d in enumerate(dims) if n not in stars)
        connection.execute(
            f"INSERT INTO {hourly} SELECT hour, {picked}, SUM(plays) FROM {hourly} "
            f"WHERE hour >= ? AND hour < ?{given} GROUP BY hour{kept}",
            hours,
        )


def _groups(count: int) -> str:
    """`1, 2, ..., count`: GROUP BY the first `count` selected columns."""
    return ", ".join(str(n) for n in range(1, count + 1))


def _add_to_roll_up(
    connection: sqlite3.Connection, spec: ViewSpec, table: str, rows: Iterable[tuple[Any, ...]]
) -> None:
    """Add count deltas (minute, *dimensions, plays) to the hourly roll-up of `table`, per
    dimension values and summed over each combination of filter dimensions. The speed layer's
    deltas take this way rather than `_roll_up`: its cost follows the delta rows, not the rows
    of the hours they fall in (a continuous refresh adds a few rows to a dense hour every few
    seconds)."""
    dims = dimensions_of(spec)
    star_sets = _star_sets(spec)
    sums: Counter[tuple[Any, ...]] = Counter()
    for minute, *values, plays in rows:
        sums[(hour_floor(minute), *values)] += plays
        for stars in star_sets:
            starred = [ALL if n in stars else value for n, value in enumerate(values)]
            sums[(hour_floor(minute), *starred)] += plays
    placeholders = ", ".join("?" * (len(dims) + 2))
    connection.executemany(
        f"INSERT INTO {table}_hourly VALUES ({placeholders}) "
        f"ON CONFLICT DO UPDATE SET plays = plays + excluded.plays",
        [(*bucket, plays) for bucket, plays in sums.items()],
    )


def _span(minutes: Iterable[int | None]) -> tuple[int, int]:
    """The half-open range from the first to the last of some minutes (None skipped); empty
    when there are none."""
    present = [minute for minute in minutes if minute is not None]
    return (min(present), max(present) + 1) if present else (0, 0)


def insert_speed(
    connection: sqlite3.Connection, spec: ViewSpec, rows: list[tuple[Any, ...]]
) -> None:
    """Add speed rows (count deltas, or sessions) of new micro-batches, roll-up included."""
    if spec is SESSIONS:
        connection.executemany("INSERT INTO sessions_speed VALUES (?, ?, ?, ?, ?, ?)", rows)
        return
    # Deltas of several micro-batches add up per bucket, and per hour in the roll-up.
    placeholders = ", ".join("?" * len(spec.columns))
    connection.executemany(
        f"INSERT INTO {spec.speed_store} VALUES ({placeholders}) "
        f"ON CONFLICT DO UPDATE SET plays = plays + excluded.plays",
        rows,
    )
    _add_to_roll_up(connection, spec, spec.speed_store, rows)


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


def record_speed_batches(
    connection: sqlite3.Connection, view: str, newest: dict[int, int | None]
) -> None:
    """Remember micro-batches read into the store ({batch_id: newest split time or None})."""
    connection.executemany(
        "INSERT OR REPLACE INTO speed_batches VALUES (?, ?, ?)",
        [(view, batch_id, time) for batch_id, time in newest.items()],
    )


def speed_batches_held(connection: sqlite3.Connection, view: str) -> set[int]:
    """The micro-batch ids of a view that `record_speed_batches` remembers."""
    rows = connection.execute("SELECT batch_id FROM speed_batches WHERE view = ?", (view,))
    return {batch_id for (batch_id,) in rows}


def speed_batches_before(
    connection: sqlite3.Connection, view: str, cut: int, last_batch: int
) -> list[int]:
    """Remembered micro-batches up to `last_batch` whose rows are all older than `cut`."""
    rows = connection.execute(
        "SELECT batch_id FROM speed_batches WHERE view = ? AND batch_id <= ? "
        "AND (newest IS NULL OR newest < ?) ORDER BY batch_id",
        (view, last_batch, cut),
    )
    return [batch_id for (batch_id,) in rows]


def forget_speed_batches(
    connection: sqlite3.Connection, view: str, batch_ids: Iterable[int] | None
) -> None:
    """Forget some remembered micro-batches of a view (all when None)."""
    if batch_ids is None:
        connection.execute("DELETE FROM speed_batches WHERE view = ?", (view,))
        return
    connection.executemany(
        "DELETE FROM speed_batches WHERE view = ? AND batch_id = ?",
        [(view, batch_id) for batch_id in batch_ids],
    )


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
    """Replace one batch day of a view (rows as the refresh reads them, without dt), its
    roll-up hours, and record which version it is, inside the caller's write transaction;
    returns the rows."""
    placeholders = ", ".join("?" * (len(spec.columns) + 1))
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
    batch watermark, in one transaction: the batch half of `refresh.refresh_view` for callers that
    have the rows already (benchmarks, imports). Returns the rows loaded."""
    spec = store.spec(view)
    with store.writing() as connection:
        loaded = sum(
            replace_batch_day(connection, spec, dt, computed_at, rows)
            for dt, (computed_at, rows) in days.items()
        )
        connection.execute(
            "INSERT INTO views (view, batch_watermark, refreshed_at) VALUES (?, ?, ?) "
            "ON CONFLICT (view) DO UPDATE SET batch_watermark = excluded.batch_watermark, "
            "refreshed_at = excluded.refreshed_at",
            (
                view,
                epoch_seconds(batch_watermark) if batch_watermark else None,
                iso(datetime.now(UTC)),
            ),
        )
    return loaded
