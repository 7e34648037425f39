"""The batch layer: one daily partition (UTC date of event time) of each view, recomputed from the
lake's raw history with the same functions the speed layer uses (`lambda_arch.views.transforms`).

Tables (Hive, Parquet, partitioned by `dt`, next to play_events in the lake's database):
- `play_events_clean`: the day's valid events, one row per event_id (`transforms.deduplicate`);
- `trending_batch`, `discovery_batch`: plays per minute bucket of the day, as the speed views;
- `sessions_batch`: the sessions that *end* on the day (CONTRACT section 3 stitching).

Why sessions belong to the day of their last event: whether a session has ended is known 30
minutes after its last event, so day D's sessions are settled by the events of D-1, D and the
first 30 minutes of D+1. Owning by start would make D depend on an unbounded stretch of D+1.
The serving layer merges sessions at the batch watermark by session_end for the same reason.
D-1 is read whole, so a session that ends on D is exact when it lasted less than a day
(longer chains of events less than 30 minutes apart are cut at D-1 00:00).

Every day is written with a static `INSERT OVERWRITE ... PARTITION (dt=D)`: a rerun replaces
exactly that day (an empty result empties it), never another one, and the rows come out sorted,
so reruns are stable in content. A backfill of a range runs the days one after another in one
Spark session, holding the lake's batch-writer lock (a file lock in LAMBDA_ARCH_HOME/locks, the
speed checkpoints' mechanism): whoever launched two overlapping runs, the second waits.

Staleness: before computing D, `day_signature` counts the raw rows D's answers depend on (rows
of D-1 and D from the landed file names, no scan; rows of D+1 before 00:30 from the event_time
column of D+1 hour 0). The signature is stored with the day's state (`<warehouse>/batch/_state`).
When late events land, the current signature differs and the day is stale (`stale_days`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lambda_arch.batch.lake import EVENTS_SCHEMA, EVENTS_TABLE, Lake, read_play_events
from lambda_arch.common.files import write_bytes
from lambda_arch.common.locks import LockBusyError, LockHold, file_lock, lock_path
from lambda_arch.common.storage import pyarrow_filesystem
from lambda_arch.common.times import parse_optional_time
from lambda_arch.ingest.spark_schema import SPARK_EVENT_COLUMNS
from lambda_arch.views import spec as views
from lambda_arch.views.transforms import (
    SESSION_GAP,
    deduplicate,
    discovery_counts,
    stitch_sessions,
    trending_counts,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from lambda_arch.common.config import Settings

CLEAN_TABLE = "play_events_clean"
TRENDING_TABLE = views.TRENDING.batch_table
DISCOVERY_TABLE = views.DISCOVERY.batch_table
SESSIONS_TABLE = views.SESSIONS.batch_table
BATCH_VIEWS = (CLEAN_TABLE, TRENDING_TABLE, DISCOVERY_TABLE, SESSIONS_TABLE)

_TYPES = dict(EVENTS_SCHEMA)
# Clean events keep their Kafka position: it breaks dedup ties and traces a row to its record.
CLEAN_COLUMNS: tuple[str, ...] = (*SPARK_EVENT_COLUMNS, "topic", "partition", "offset")
_VIEW_TYPES: dict[str, str] = {
    **_TYPES,
    "minute": "timestamp",
    "plays": "bigint",
    "session_start": "timestamp",
    "session_end": "timestamp",
    "events": "bigint",
    "watched_ms": "bigint",
}
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    CLEAN_TABLE: CLEAN_COLUMNS,
    **{view.batch_table: view.columns for view in views.VIEWS.values()},
}
# Sort keys: the order rows are written in, so a rerun writes the same content.
SORT_KEYS: dict[str, tuple[str, ...]] = {
    CLEAN_TABLE: ("event_time", "event_id"),
    TRENDING_TABLE: ("minute", "country", "title_id"),
    DISCOVERY_TABLE: ("minute", "country", "discovery_source"),
    SESSIONS_TABLE: ("member_id", "title_id", "session_start"),
}


class BatchError(RuntimeError):
    """A batch partition cannot be computed (bad day, missing input)."""


# Days --------------------------------------------------------------------------------------------


def parse_day(text: str) -> date:
    """A partition key (yyyy-MM-dd) as a date; a clear error otherwise."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise BatchError(f"partition key {text!r} is not a yyyy-MM-dd date") from None


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def day_end(day: date) -> datetime:
    return day_start(day) + timedelta(days=1)


def days_between(first: date, last: date) -> list[date]:
    """Every day from first to last, both included."""
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def complete_days(start: date, landing_watermark: datetime | None) -> list[date]:
    """Days from `start` whose end the landing watermark (latest event time landed minus the
    allowed lateness) has passed: their on-time events have all landed."""
    if landing_watermark is None:
        return []
    # day_end(d) <= watermark  <=>  d + 1 day <= watermark's date
    last = landing_watermark.astimezone(UTC).date() - timedelta(days=1)
    return days_between(start, last) if last >= start else []


# Tables ------------------------------------------------------------------------------------------


def ensure_batch_tables(spark: SparkSession, lake: Lake) -> None:
    """Create the lake's tables and the four batch tables when missing (SQL: works on Connect)."""
    lake.ensure_tables(spark)
    for table in BATCH_VIEWS:
        columns = [(name, _VIEW_TYPES[name]) for name in TABLE_COLUMNS[table]]
        lake.create_table(spark, table, [*columns, ("dt", "string")], [("dt", "string")])


def read_batch_view(
    spark: SparkSession, lake: Lake, table: str, days: Sequence[date] | None = None
):
    """A batch table (with its dt column), only the given days when not None."""
    from pyspark.sql import functions as F

    spark.catalog.refreshTable(lake.table(table))
    frame = spark.table(lake.table(table))
    if days is not None:
        frame = frame.where(F.col("dt").isin([d.isoformat() for d in days]))
    return frame


# Pure views of one day ---------------------------------------------------------------------------


def clean_day(raw: DataFrame) -> DataFrame:
    """One day's raw events -> its clean events: one row per event_id, the clean columns."""
    return deduplicate(raw.select(*CLEAN_COLUMNS)).select(*CLEAN_COLUMNS)


def sessions_ending_on(events: DataFrame, day: date) -> DataFrame:
    """Sessions of deduplicated events whose last event falls on `day` (half-open UTC day)."""
    from pyspark.sql import functions as F

    end = F.col("session_end")
    return stitch_sessions(events).where(
        (end >= F.lit(day_start(day))) & (end < F.lit(day_end(day)))
    )


def _raw(spark: SparkSession, lake: Lake, day: date, hours: Iterable[int] | None = None):
    from pyspark.sql import functions as F

    frame = read_play_events(spark, lake, [day.isoformat()])
    if hours is not None:
        frame = frame.where(F.col("hour").isin(list(hours)))
    return frame


def day_frame(spark: SparkSession, lake: Lake, table: str, day: date) -> DataFrame:
    """One batch table's rows for `day` (lazy). The views read the day's play_events_clean
    partition, so it must be computed first (compute_day and the asset graph see to that)."""
    if table == CLEAN_TABLE:
        return clean_day(_raw(spark, lake, day))
    clean = read_batch_view(spark, lake, CLEAN_TABLE, [day]).drop("dt")
    if table == TRENDING_TABLE:
        return trending_counts(clean)
    if table == DISCOVERY_TABLE:
        return discovery_counts(clean)
    # Sessions that end on D may have begun on D-1 and are settled by D+1's first 30 minutes
    # (all in hour 0); each day is deduplicated on its own, as its clean partition is.
    neighbours = clean_day(_raw(spark, lake, day - timedelta(days=1))).unionByName(
        clean_day(_raw(spark, lake, day + timedelta(days=1), hours=[0]))
    )
    return sessions_ending_on(clean.unionByName(neighbours), day)


# Writing -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DayResult:
    """What computing one view for one day did."""

    table: str
    day: str
    rows: int
    duration_s: float
    signature: dict[str, int]


def _write_day(spark: SparkSession, lake: Lake, table: str, frame: DataFrame, day: date) -> int:
    columns = TABLE_COLUMNS[table]
    rows = frame.select(*columns)
    # Same input, same files: the views are small and go to one sorted file; clean events keep
    # the dedup's hash partitioning by event_id and are sorted within it (no global sort).
    if table == CLEAN_TABLE:
        rows = rows.sortWithinPartitions(*SORT_KEYS[table])
    else:
        rows = rows.coalesce(1).sortWithinPartitions(*SORT_KEYS[table])
    view = f"__lambda_arch_{table}_{day:%Y%m%d}"
    rows.createOrReplaceTempView(view)
    try:
        spark.sql(
            f"INSERT OVERWRITE TABLE {lake.table(table)} PARTITION (dt = '{day.isoformat()}') "
            f"SELECT {', '.join(f'`{c}`' for c in columns)} FROM {view}"
        )
    finally:
        spark.catalog.dropTempView(view)
    spark.catalog.refreshTable(lake.table(table))
    # From the Parquet footers: no Spark job.
    return lake.row_count(lake.data_files(table, f"dt={day.isoformat()}"))


def compute_day(
    spark: SparkSession, lake: Lake, day: date, tables: Sequence[str] = BATCH_VIEWS
) -> list[DayResult]:
    """Recompute `tables` for one day from the raw history and record the day's state.

    Takes no lock: runs that may overlap write through write_days (or compute_days), which
    hold the lake's batch-writer lock; this is for a caller that owns the lake alone (a test
    or benchmark lake of its own)."""
    unknown = sorted(set(tables) - set(BATCH_VIEWS))
    if unknown:
        raise BatchError(f"unknown batch tables {unknown}; expected some of {list(BATCH_VIEWS)}")
    ensure_batch_tables(spark, lake)
    # Measured before reading: data landing meanwhile makes the day stale, never silently lost.
    signature = day_signature(lake, day)
    results = []
    for table in sorted(tables, key=BATCH_VIEWS.index):  # clean first: the views read it
        started = time.monotonic()
        rows = _write_day(spark, lake, table, day_frame(spark, lake, table, day), day)
        result = DayResult(table, day.isoformat(), rows, time.monotonic() - started, signature)
        write_day_state(lake, result)
        results.append(result)
    return results


def compute_tables(
    spark: SparkSession, lake: Lake, days: Sequence[date], tables: Sequence[str] = BATCH_VIEWS
) -> list[DayResult]:
    """compute_day for every day, in order, without a lock (write_days holds it around this)."""
    return [result for day in days for result in compute_day(spark, lake, day, tables)]


def compute_days(
    spark: SparkSession,
    lake: Lake,
    days: Sequence[date],
    tables: Sequence[str] = BATCH_VIEWS,
    *,
    lock_dir: Path,
    owner: str = "",
    log: Callable[[str], None] | None = None,
) -> list[DayResult]:
    """compute_day for every day, in order (a backfill of a range in one Spark session), under
    the lake's batch-writer lock (see write_days)."""
    return write_days(spark, lake, days, tables, lock_dir=lock_dir, owner=owner, log=log).results


# One writer at a time -----------------------------------------------------------------------------

# How long a batch write waits for another run's write of the same lake. A seven-month range
# takes minutes; a holder that dies releases the lock at once (flock), so only a hung holder
# makes a waiter give up, with a message naming it.
BATCH_LOCK_TIMEOUT_S = 4 * 3600.0


@dataclass(frozen=True)
class BatchWrite:
    """What one locked write did: the days' results and the lock holding (wait, times)."""

    results: list[DayResult]
    lock: LockHold


def batch_lock_path(lock_dir: Path, lake: Lake) -> Path:
    """The lake's batch-writer lock: one per database location, for all four batch tables.

    One lock, not one per table: the views read play_events_clean while they are written, and
    sessions read raw neighbours, so a writer of one table is a reader of another; a single
    lock cannot deadlock and costs nothing (the writes of one lake run one after another on
    the same Spark cores anyway).
    """
    return lock_path(lock_dir, f"{lake.database_location}#batch-writer")


def write_days(
    spark: SparkSession,
    lake: Lake,
    days: Sequence[date],
    tables: Sequence[str] = BATCH_VIEWS,
    *,
    lock_dir: Path,
    owner: str = "",
    log: Callable[[str], None] | None = None,
    lock_timeout_s: float = BATCH_LOCK_TIMEOUT_S,
) -> BatchWrite:
    """Recompute `tables` for `days` holding the lake's batch-writer lock for the whole write.

    This is where every launcher meets (a sensor, the schedule, `lambda-arch run`, a UI or CLI
    backfill): a run that finds another run writing waits until it is done, then writes; two
    `INSERT OVERWRITE`s of one table never overlap (they would delete each other's
    `_temporary` folder and both fail). `log` hears when and for whom a run waits.
    """

    def waiting(holder: str, waited_s: float) -> None:
        if log is not None:
            log(
                f"batch tables of {lake.database} are being written by {holder}; waiting "
                f"({waited_s:.0f} s so far)"
            )

    path = batch_lock_path(lock_dir, lake)
    try:
        with file_lock(path, timeout_s=lock_timeout_s, owner=owner, on_wait=waiting) as hold:
            if hold.waited_for and log is not None:
                log(f"waited {hold.waited_s:.1f} s for the batch-writer lock ({hold.waited_for})")
            results = compute_tables(spark, lake, days, tables)
    except LockBusyError as busy:
        raise BatchError(
            f"batch tables of {lake.database} stayed locked by {busy.holder} for "
            f"{busy.waited_s:g} s ({busy.path}); is that run hung?"
        ) from None
    return BatchWrite(results, hold)


@contextmanager
def reading_batch(
    lake: Lake, lock_dir: Path, *, owner: str = "", timeout_s: float = BATCH_LOCK_TIMEOUT_S
) -> Iterator[LockHold]:
    """Hold the batch-writer lock shared while reading batch tables (checks): readers run side
    by side, a writer waits for them and they for it, so no read sees a partition mid-overwrite
    (its files deleted under it)."""
    with file_lock(
        batch_lock_path(lock_dir, lake), timeout_s=timeout_s, owner=owner, shared=True
    ) as hold:
        yield hold


# State and staleness (no Spark: file listings and one column of D+1 hour 0) ----------------------


def _state_path(lake: Lake, table: str, day: str) -> tuple[pafs.FileSystem, str]:
    filesystem, base = pyarrow_filesystem(lake.location("_batch_state"))
    return filesystem, f"{base}/{table}/{day}.json"


def write_day_state(lake: Lake, result: DayResult) -> None:
    """Record a day's computation; atomic, as the serving refresh reads these files any time."""
    filesystem, path = _state_path(lake, result.table, result.day)
    state = {**asdict(result), "computed_at": datetime.now(UTC).isoformat()}
    write_bytes(filesystem, path, json.dumps(state, indent=1).encode())


def read_day_state(lake: Lake, table: str, day: date) -> dict[str, Any] | None:
    """What the last computation of table for day recorded (None: never computed)."""
    filesystem, path = _state_path(lake, table, day.isoformat())
    try:
        with filesystem.open_input_stream(path) as source:
            return json.loads(source.read())
    except (FileNotFoundError, OSError):
        return None


def _dt(day: date) -> str:
    return f"dt={day.isoformat()}"


def day_signature(lake: Lake, day: date) -> dict[str, int]:
    """Raw rows that day's views depend on: all of D-1 and D, D+1 before 00:30 (session gap)."""
    filesystem, _ = lake.filesystem()
    cutoff = day_end(day) + SESSION_GAP
    after = 0
    for info in lake.data_files(EVENTS_TABLE, f"{_dt(day + timedelta(days=1))}/hour=0"):
        times = pq.read_table(info.path, columns=["event_time"], filesystem=filesystem)
        column = times.column("event_time")
        after += int(pc.sum(pc.less(column, pc.cast(cutoff, column.type))).as_py() or 0)
    return {
        "previous_day_rows": lake.row_count(
            lake.data_files(EVENTS_TABLE, _dt(day - timedelta(days=1)))
        ),
        "day_rows": lake.row_count(lake.data_files(EVENTS_TABLE, _dt(day))),
        "next_day_head_rows": after,
    }


def stale_days(lake: Lake, days: Iterable[date]) -> list[date]:
    """Days already computed whose raw input changed since (late events): to recompute."""
    stale = []
    for day in days:
        states = [read_day_state(lake, table, day) for table in BATCH_VIEWS]
        if any(state is None for state in states):
            continue  # never (fully) computed: missing, not stale
        signature = day_signature(lake, day)
        if any(state["signature"] != signature for state in states if state):
            stale.append(day)
    return stale


def missing_days(lake: Lake, days: Iterable[date]) -> list[date]:
    """Days some batch table has never been computed for."""
    return [
        day
        for day in days
        if any(read_day_state(lake, table, day) is None for table in BATCH_VIEWS)
    ]


def batch_watermark(lake: Lake, start: date, until: date) -> datetime | None:
    """End of the last day of the contiguous run of computed, fresh days from `start`."""
    last = None
    for day in days_between(start, until):
        if missing_days(lake, [day]) or stale_days(lake, [day]):
            break
        last = day
    return day_end(last) if last else None


def landing_watermark(settings: Settings) -> datetime | None:
    """The landing query's watermark: latest event time landed minus the allowed lateness."""
    from lambda_arch.speed.layer import LANDING, SpeedPaths, read_speed_state

    state = read_speed_state(SpeedPaths.from_settings(settings), LANDING) or {}
    text = state.get("watermark")
    return parse_optional_time(text)


def first_landed_day(lake: Lake) -> date | None:
    """The earliest day with raw events in the lake (days before it have nothing to compute)."""
    days = lake.partition_dates()
    return date.fromisoformat(days[0].dt) if days else None


def day_ranges(days: Iterable[date]) -> list[tuple[date, date]]:
    """Runs of consecutive days as (first, last) pairs: one backfill run each."""
    ranges: list[tuple[date, date]] = []
    for day in sorted(set(days)):
        if ranges and ranges[-1][1] + timedelta(days=1) == day:
            ranges[-1] = (ranges[-1][0], day)
        else:
            ranges.append((day, day))
    return ranges


@dataclass(frozen=True)
class BatchPlan:
    """Which days the batch layer owes: complete but never computed, and computed but stale."""

    landing_watermark: datetime | None
    complete: list[date]
    missing: list[date]
    stale: list[date]


def plan(settings: Settings, lake: Lake | None = None) -> BatchPlan:
    """What the day-complete and stale-partition sensors (and `lambda-arch run`) should run.

    Days before the first day with landed events hold nothing and are skipped, so a start
    date long before the traffic does not mean hundreds of empty runs.
    """
    lake = lake or Lake.from_settings(settings)
    watermark = landing_watermark(settings)
    first = first_landed_day(lake)
    if first is None:
        return BatchPlan(watermark, [], [], [])
    complete = complete_days(max(settings.start_date, first), watermark)
    missing = missing_days(lake, complete)
    computed = [day for day in complete if day not in missing]
    return BatchPlan(watermark, complete, missing, stale_days(lake, computed))
