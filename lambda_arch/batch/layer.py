"""The batch layer: one daily partition (UTC date of event time) of each view, recomputed from the
lake's raw history with the same functions the speed layer uses (`lambda_arch.views.transforms`).

Tables (Hive, Parquet, partitioned by `dt`, next to play_events in the lake's database):
- `play_events_clean`: the day's valid events, one row per event_id (`transforms.deduplicate`);
- `<view>_batch` for every declared count view (`trending_batch`, `discovery_batch`,
  `device_mix_batch`, those of LAMBDA_ARCH_VIEWS_FILE): plays per minute bucket of the day, as
  the speed views (`count_deltas`). A view declared later has no computed days: every complete
  day is then missing (`missing_days`), so the sensors and `run` compute its whole history;
- `sessions_batch`: the sessions that *end* on the day (CONTRACT section 3 stitching).

Why sessions belong to the day of their last event: whether a session has ended is known 30
minutes after its last event, so day D's sessions are settled by the events of D-1, D and the
first 30 minutes of D+1. Owning by start would make D depend on an unbounded stretch of D+1.
The serving layer merges sessions at the batch watermark by session_end for the same reason.
D-1 is read whole, so a session that ends on D is exact when it lasted less than a day
(longer chains of events less than 30 minutes apart are cut at D-1 00:00).

A run computes a range of days with one Spark job per table (`compute_range`), whatever the
number of days: a job per day and table made a long backfill pay seconds of fixed cost per day,
and conditions per day made plans too deep for Spark Connect. A computation never overwrites: it
writes every day aside to `<table>/dt=D/v=<version>` (a folder per computation), then swaps each
day to it (the Hive partition's location for Spark's readers, then the day's state file, which
names the version, for pyarrow readers), then deletes the previous folder. A failure before the
swap leaves the previous rows and state of every day as they were; the next successful
computation of a day deletes folders a failed attempt left. A rerun replaces exactly its days
(an empty result empties them), never another one, and the rows come out sorted, so reruns are
stable in content. Runs hold the lake's batch-writer lock (a file lock in LAMBDA_ARCH_HOME/locks,
the speed checkpoints' mechanism): whoever launched two overlapping runs, the second waits.

Staleness: before computing D, `day_signature` counts the raw rows D's answers depend on (rows
of D-1 and D from the landed file names, no scan; rows of D+1 before 00:30 from the event_time
column of D+1 hour 0). The signature is stored with the day's state (`<warehouse>/batch/_state`).
When late events land, the current signature differs and the day is stale (`stale_days`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lambda_arch.batch.lake import EVENTS_SCHEMA, EVENTS_TABLE, Lake, read_play_events
from lambda_arch.common.files import write_bytes
from lambda_arch.common.locks import LockBusyError, LockHold, file_lock, lock_path
from lambda_arch.common.storage import hadoop_uri, pyarrow_filesystem
from lambda_arch.common.times import parse_optional_time
from lambda_arch.ingest.spark_schema import SPARK_EVENT_COLUMNS
from lambda_arch.views import spec as views
from lambda_arch.views.declarations import BUILT_IN, CountView, declared_views
from lambda_arch.views.transforms import (
    SESSION_COLUMNS,
    SESSION_GAP,
    count_deltas,
    deduplicate,
    stitch_sessions,
)

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

    from lambda_arch.common.config import Settings

CLEAN_TABLE = "play_events_clean"
TRENDING_TABLE = views.TRENDING.batch_table
DISCOVERY_TABLE = views.DISCOVERY.batch_table
SESSIONS_TABLE = views.SESSIONS.batch_table


def batch_tables(count_views: Sequence[CountView] = BUILT_IN) -> tuple[str, ...]:
    """Every batch table, in the order they are computed: clean first (the views read it),
    each count view's `<view>_batch`, sessions."""
    counted = [views.spec_of(view).batch_table for view in count_views]
    return (CLEAN_TABLE, *counted, SESSIONS_TABLE)


# The batch tables of the built-in views (a views file adds its views' tables).
BATCH_VIEWS = batch_tables()

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
    **{views.spec_of(view).batch_table: view.columns for view in BUILT_IN},
    SESSIONS_TABLE: SESSION_COLUMNS,
}
# Sort keys: the order rows are written in, so a rerun writes the same content.
SORT_KEYS: dict[str, tuple[str, ...]] = {
    CLEAN_TABLE: ("event_time", "event_id"),
    SESSIONS_TABLE: ("member_id", "title_id", "session_start"),
}


def count_view_of(table: str, count_views: Sequence[CountView]) -> CountView | None:
    """The count view whose batch table `table` is (None: clean or sessions)."""
    for view in count_views:
        if views.spec_of(view).batch_table == table:
            return view
    return None


def table_columns(table: str, count_views: Sequence[CountView] = BUILT_IN) -> tuple[str, ...]:
    """A batch table's columns (without dt): a count view's are minute, dimensions, plays."""
    view = count_view_of(table, count_views)
    return view.columns if view is not None else TABLE_COLUMNS[table]


def sort_keys(table: str, count_views: Sequence[CountView] = BUILT_IN) -> tuple[str, ...]:
    """The order a table's rows are written in: a count view's by minute and dimensions."""
    view = count_view_of(table, count_views)
    return ("minute", *view.dimensions) if view is not None else SORT_KEYS[table]


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


def ensure_batch_tables(
    spark: SparkSession, lake: Lake, count_views: Sequence[CountView] = BUILT_IN
) -> None:
    """Create the lake's tables and the batch tables when missing (SQL: works on Connect)."""
    lake.ensure_tables(spark)
    for table in batch_tables(count_views):
        columns = [(name, _VIEW_TYPES[name]) for name in table_columns(table, count_views)]
        # Not RECOVER PARTITIONS: it would point each day at dt=D, every version inside.
        created = lake.create_table(
            spark, table, [*columns, ("dt", "string")], [("dt", "string")], recover=False
        )
        if created:
            _register_computed_days(spark, lake, table)


def _register_computed_days(spark: SparkSession, lake: Lake, table: str) -> None:
    """Register a table's computed days at the versions their states name (a new metastore
    over a lake computed before)."""
    filesystem, folder = _state_folder(lake, table)
    days = []
    for info in filesystem.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
        try:
            day = date.fromisoformat(info.base_name.removesuffix(".json"))
        except ValueError:
            continue
        state = read_day_state(lake, table, day)
        if state is not None:
            days.append((day, hadoop_uri(day_location(lake, table, day, state.get("version")))))
    for chunk in range(0, len(days), 500):
        specs = " ".join(
            f"PARTITION (dt = '{day.isoformat()}') LOCATION '{location}'"
            for day, location in days[chunk : chunk + 500]
        )
        spark.sql(f"ALTER TABLE {lake.table(table)} ADD IF NOT EXISTS {specs}")


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


# Views of a range of days (one Spark job per table, whatever the number of days) ------------------

VERSION_COLUMN = "v"  # the folder of one computation inside a day's folder: dt=D/v=<version>
_MICROS_PER_DAY = 86_400_000_000
_MICROS_PER_HOUR = 3_600_000_000
_TARGET = "__day"  # sessions: the day whose sessions an event is stitched for


def utc_date(ts: Column) -> Column:
    """yyyy-MM-dd of a timestamp in UTC, by arithmetic on epoch micros (any session time zone)."""
    from pyspark.sql import functions as F

    days = F.floor(F.unix_micros(ts) / F.lit(_MICROS_PER_DAY)).cast("int")
    return F.date_from_unix_date(days).cast("string")


def _keys(days: Iterable[date]) -> list[str]:
    return sorted({day.isoformat() for day in days})


def _deduplicated_raw(
    spark: SparkSession, lake: Lake, days: Iterable[date], hours: Sequence[int] | None = None
) -> DataFrame:
    """Raw events of days, each day deduplicated on its own (as its clean partition is)."""
    from pyspark.sql import functions as F

    raw = read_play_events(spark, lake, _keys(days))
    if hours is not None:
        raw = raw.where(F.col("hour").isin(list(hours)))
    return deduplicate(raw.select(*CLEAN_COLUMNS, "dt"), by=["dt"])


def range_frame(
    spark: SparkSession,
    lake: Lake,
    table: str,
    days: Sequence[date],
    count_views: Sequence[CountView] = BUILT_IN,
) -> DataFrame:
    """One batch table's rows for all `days`, with their `dt` (lazy). The views read the days'
    play_events_clean partitions, so those must be computed first (the asset graph does)."""
    from pyspark.sql import functions as F

    if table == CLEAN_TABLE:
        return _deduplicated_raw(spark, lake, days)
    clean = read_batch_view(spark, lake, CLEAN_TABLE, days).select(*CLEAN_COLUMNS, "dt")
    view = count_view_of(table, count_views)
    if view is not None:
        # A minute lies in one day: its dt is the UTC date of the minute, as the event's is.
        return count_deltas(clean, view).withColumn("dt", utc_date(F.col("minute")))
    return _sessions_frame(spark, lake, clean, days)


def _sessions_frame(
    spark: SparkSession, lake: Lake, clean: DataFrame, days: Sequence[date]
) -> DataFrame:
    """Sessions ending on each of days, each stitched from the events of D-1, D and D+1's hour
    0 only (exactly what computing D alone reads): every event is copied to the days it
    serves (its own, the next, and the previous when in hour 0) and stitched per such day."""
    from pyspark.sql import functions as F

    wanted = set(days)
    # Neighbours outside the range come from the raw history; inside it, from clean.
    before = {day - timedelta(days=1) for day in wanted} - wanted
    after = {day + timedelta(days=1) for day in wanted} - wanted
    events = clean
    if before:
        events = events.unionByName(_deduplicated_raw(spark, lake, before))
    if after:
        events = events.unionByName(_deduplicated_raw(spark, lake, after, hours=[0]))
    keys = _keys(wanted)
    own = F.to_date(F.col("dt"))
    nxt = F.date_add(own, 1).cast("string")
    prev = F.date_sub(own, 1).cast("string")
    in_hour_0 = F.pmod(F.unix_micros(F.col("event_time")), F.lit(_MICROS_PER_DAY)) < F.lit(
        _MICROS_PER_HOUR
    )
    served = F.array(
        F.when(F.col("dt").isin(keys), F.col("dt")),
        F.when(nxt.isin(keys), nxt),
        F.when(prev.isin(keys) & in_hour_0, prev),
    )
    copies = events.withColumn(_TARGET, F.explode(served)).where(F.col(_TARGET).isNotNull())
    sessions = stitch_sessions(copies, by=[_TARGET])
    return sessions.where(utc_date(F.col("session_end")) == F.col(_TARGET)).withColumnRenamed(
        _TARGET, "dt"
    )


# Writing aside, then swapping ------------------------------------------------------------------


@dataclass(frozen=True)
class DayResult:
    """What computing one view for one day did (duration: the range's, shared out per day)."""

    table: str
    day: str
    rows: int
    duration_s: float
    signature: dict[str, int]
    version: str = ""


def new_version() -> str:
    """A fresh computation's folder name: sortable by time, unique per attempt."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:8]}"


def version_folder(version: str) -> str:
    return f"{VERSION_COLUMN}={version}"


def day_location(lake: Lake, table: str, day: date, version: str | None) -> str:
    """Where a day's rows of one computation are: dt=D/v=<version>; dt=D for rows written
    before versions existed (a state without one)."""
    base = f"{lake.location(table)}/{_dt(day)}"
    return f"{base}/{version_folder(version)}" if version else base


def _output_rows(
    table: str, frame: DataFrame, version: str, count_views: Sequence[CountView] = BUILT_IN
) -> DataFrame:
    """The rows to write: the table's columns and types, `dt` and the version, one task per
    day, sorted (same input, same content). The cast runs in the writing tasks."""
    from pyspark.sql import functions as F

    columns = table_columns(table, count_views)
    return (
        frame.repartition("dt")
        .sortWithinPartitions("dt", *sort_keys(table, count_views))
        .select(
            *[F.col(c).cast(_VIEW_TYPES[c]).alias(c) for c in columns],
            F.col("dt"),
            F.lit(version).alias(VERSION_COLUMN),
        )
    )


def _write_aside(
    spark: SparkSession,
    lake: Lake,
    table: str,
    frame: DataFrame,
    version: str,
    count_views: Sequence[CountView] = BUILT_IN,
) -> None:
    """Write every day of frame to dt=D/v=<version>, next to the day's current rows.

    Dynamic partition overwrite replaces only the (new, empty) dt/v folders it writes and
    stages under a folder named after its job, so nothing readable is touched until the swap.
    """
    _output_rows(table, frame, version, count_views).write.mode("overwrite").option(
        "partitionOverwriteMode", "dynamic"
    ).partitionBy("dt", VERSION_COLUMN).parquet(hadoop_uri(lake.location(table)))


def _table_listing(lake: Lake, table: str) -> dict[str, dict[str, list[pafs.FileInfo]]]:
    """{dt: {entry: files}} of a table's folder in one recursive listing: entry is a version
    folder (v=...), or "" for files directly in dt=D (written before versions existed)."""
    filesystem, base = pyarrow_filesystem(lake.location(table))
    listing = filesystem.get_file_info(
        pafs.FileSelector(base, allow_not_found=True, recursive=True)
    )
    days: dict[str, dict[str, list[pafs.FileInfo]]] = {}
    for info in listing:
        parts = info.path[len(base) + 1 :].split("/")
        if not parts[0].startswith("dt="):
            continue
        entries = days.setdefault(parts[0].removeprefix("dt="), {})
        if len(parts) == 2 and info.type == pafs.FileType.Directory:
            entries.setdefault(parts[1], [])
        elif len(parts) == 2:  # checksums and markers too: deleted with the rows they go with
            entries.setdefault("", []).append(info)
        elif len(parts) > 2 and info.type == pafs.FileType.File:
            files = entries.setdefault(parts[1], [])
            if not any(_is_hidden(part) for part in parts[2:]):
                files.append(info)
    return days


def _is_hidden(name: str) -> bool:
    return name.startswith(("_", "."))


def _swap(spark: SparkSession, lake: Lake, table: str, results: Sequence[DayResult]) -> None:
    """Point each day at its new folder: the Hive partition (Spark's readers), then the state
    file (the serving refresh and staleness), each atomic for its day."""
    name = lake.table(table)
    existing = {row[0] for row in spark.sql(f"SHOW PARTITIONS {name}").collect()}
    new = []
    for result in results:
        day = date.fromisoformat(result.day)
        location = hadoop_uri(day_location(lake, table, day, result.version))
        if _dt(day) in existing:
            spark.sql(
                f"ALTER TABLE {name} PARTITION (dt = '{result.day}') SET LOCATION '{location}'"
            )
            write_day_state(lake, result)
        else:
            new.append((result, location))
    # Days never computed: one statement registers them all (no reader has an old state).
    for chunk in range(0, len(new), 500):
        part = new[chunk : chunk + 500]
        specs = " ".join(f"PARTITION (dt = '{r.day}') LOCATION '{loc}'" for r, loc in part)
        spark.sql(f"ALTER TABLE {name} ADD IF NOT EXISTS {specs}")
        for result, _ in part:
            write_day_state(lake, result)
    spark.catalog.refreshTable(name)


def _drop_replaced(lake: Lake, table: str, results: Sequence[DayResult]) -> None:
    """Delete what the swapped days no longer point at: the previous computation, files from
    before versions, and folders of failed attempts (never swapped in)."""
    filesystem, base = pyarrow_filesystem(lake.location(table))
    listing = _table_listing(lake, table)
    for result in results:
        current = version_folder(result.version)
        for entry, files in listing.get(result.day, {}).items():
            if entry == current:
                continue
            if entry:
                filesystem.delete_dir(f"{base}/dt={result.day}/{entry}")
            else:
                for info in files:
                    filesystem.delete_file(info.path)


def compute_range(
    spark: SparkSession,
    lake: Lake,
    days: Sequence[date],
    table: str,
    count_views: Sequence[CountView] = BUILT_IN,
) -> list[DayResult]:
    """Recompute one table for `days` in one Spark job, atomically per day.

    The new rows go aside (dt=D/v=<new version>); only once the whole job has succeeded is each
    day swapped to them (Hive partition location, then state file), and then the previous
    folder is deleted. A failure before the swap leaves every day's previous rows and state as
    they were; its partial folder is deleted by the next successful computation of the day.
    """
    if not days:
        return []
    started = time.monotonic()
    ordered = sorted(set(days))
    # Measured before reading: data landing meanwhile makes the day stale, never silently lost.
    signatures = {day: day_signature(lake, day) for day in ordered}
    version = new_version()
    frame = range_frame(spark, lake, table, ordered, count_views)
    _write_aside(spark, lake, table, frame, version, count_views)
    listing = _table_listing(lake, table)
    filesystem, _ = pyarrow_filesystem(lake.location(table))
    per_day = (time.monotonic() - started) / len(ordered)
    results = []
    for day in ordered:
        files = listing.get(day.isoformat(), {}).get(version_folder(version), [])
        if not files and _is_local_filesystem(filesystem):
            # An empty day still gets its (empty) folder: Spark warns about a missing one.
            filesystem.create_dir(day_location(lake, table, day, version), recursive=True)
        rows = lake.row_count(files)
        results.append(DayResult(table, day.isoformat(), rows, per_day, signatures[day], version))
    _swap(spark, lake, table, results)
    _drop_replaced(lake, table, results)
    return results


def _is_local_filesystem(filesystem: pafs.FileSystem) -> bool:
    return filesystem.type_name == "local"


def compute_day(
    spark: SparkSession,
    lake: Lake,
    day: date,
    tables: Sequence[str] | None = None,
    count_views: Sequence[CountView] = BUILT_IN,
) -> list[DayResult]:
    """Recompute `tables` (default: every one) for one day (compute_tables of a one-day range)."""
    return compute_tables(spark, lake, [day], tables, count_views)


def compute_tables(
    spark: SparkSession,
    lake: Lake,
    days: Sequence[date],
    tables: Sequence[str] | None = None,
    count_views: Sequence[CountView] = BUILT_IN,
) -> list[DayResult]:
    """Recompute `tables` for `days` from the raw history and record each day's state.

    Takes no lock: runs that may overlap write through write_days (or compute_days), which
    hold the lake's batch-writer lock; this is for a caller that owns the lake alone (a test
    or benchmark lake of its own). `count_views`: the declared count views (their tables)."""
    known = batch_tables(count_views)
    tables = known if tables is None else tables
    unknown = sorted(set(tables) - set(known))
    if unknown:
        raise BatchError(f"unknown batch tables {unknown}; expected some of {list(known)}")
    ensure_batch_tables(spark, lake, count_views)
    results = []
    for table in sorted(tables, key=known.index):  # clean first: the views read it
        results += compute_range(spark, lake, days, table, count_views)
    return results


def compute_days(
    spark: SparkSession,
    lake: Lake,
    days: Sequence[date],
    tables: Sequence[str] | None = None,
    *,
    lock_dir: Path,
    owner: str = "",
    log: Callable[[str], None] | None = None,
    count_views: Sequence[CountView] = BUILT_IN,
) -> list[DayResult]:
    """compute_tables for the days (a backfill of a range: one Spark job per table), under the
    lake's batch-writer lock (see write_days)."""
    return write_days(
        spark,
        lake,
        days,
        tables,
        lock_dir=lock_dir,
        owner=owner,
        log=log,
        count_views=count_views,
    ).results


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
    tables: Sequence[str] | None = None,
    *,
    lock_dir: Path,
    owner: str = "",
    log: Callable[[str], None] | None = None,
    lock_timeout_s: float = BATCH_LOCK_TIMEOUT_S,
    count_views: Sequence[CountView] = BUILT_IN,
) -> BatchWrite:
    """Recompute `tables` for `days` holding the lake's batch-writer lock for the whole write.

    This is where every launcher meets (a sensor, the schedule, `lambda-arch run`, a UI or CLI
    backfill): a run that finds another run writing waits until it is done, then writes; two
    computations of one day never overlap (the later swap's clean-up would delete the folder
    the other has just swapped in). `log` hears when and for whom a run waits.
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
            results = compute_tables(spark, lake, days, tables, count_views)
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


def _state_folder(lake: Lake, table: str) -> tuple[pafs.FileSystem, str]:
    filesystem, base = pyarrow_filesystem(lake.location("_batch_state"))
    return filesystem, f"{base}/{table}"


def _state_path(lake: Lake, table: str, day: str) -> tuple[pafs.FileSystem, str]:
    filesystem, folder = _state_folder(lake, table)
    return filesystem, f"{folder}/{day}.json"


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


def read_day_rows(
    lake: Lake, table: str, day: date, columns: Sequence[str], attempts: int = 3
) -> tuple[dict[str, Any] | None, pa.Table | None]:
    """(state, rows) of a computed day, read with pyarrow from the version its state names;
    (None, None) if never computed.

    A recompute may swap the day and delete the folder just read from: the state is read again
    after the rows and the read is repeated when the version moved meanwhile, so the rows are
    always one whole computation's (old or new), never a mixture or a half.
    """
    for attempt in range(attempts):
        state = read_day_state(lake, table, day)
        if state is None:
            return None, None
        try:
            version = state.get("version")
            rows = _read_folder(day_location(lake, table, day, version), columns, bool(version))
        except (FileNotFoundError, OSError):
            if attempt == attempts - 1:
                raise
            continue
        again = read_day_state(lake, table, day)
        if again is not None and again.get("version") == state.get("version"):
            return state, rows
    raise BatchError(f"{table} {day}: recomputed during {attempts} reads in a row")


def _read_folder(location: str, columns: Sequence[str], recursive: bool) -> pa.Table | None:
    """The Parquet files of a folder (hidden ones skipped, as Spark does); None if it has none.
    A folder from before versions is read without its subfolders: a new version may be
    written into it aside."""
    filesystem, path = pyarrow_filesystem(location)
    infos = filesystem.get_file_info(
        pafs.FileSelector(path, allow_not_found=True, recursive=recursive)
    )
    files = [
        info.path
        for info in infos
        if info.type == pafs.FileType.File
        and not any(_is_hidden(part) for part in info.path[len(path) + 1 :].split("/"))
    ]
    if not files:
        return None
    dataset = pads.dataset(sorted(files), filesystem=filesystem, format="parquet")
    return dataset.to_table(columns=list(columns))


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


def stale_days(
    lake: Lake, days: Iterable[date], count_views: Sequence[CountView] = BUILT_IN
) -> list[date]:
    """Days already computed whose raw input changed since (late events): to recompute."""
    stale = []
    tables = batch_tables(count_views)
    for day in days:
        states = [read_day_state(lake, table, day) for table in tables]
        if any(state is None for state in states):
            continue  # never (fully) computed: missing, not stale
        signature = day_signature(lake, day)
        if any(state["signature"] != signature for state in states if state):
            stale.append(day)
    return stale


def missing_days(
    lake: Lake, days: Iterable[date], count_views: Sequence[CountView] = BUILT_IN
) -> list[date]:
    """Days some batch table has never been computed for (every complete day, for the table of
    a count view declared later)."""
    tables = batch_tables(count_views)
    return [
        day for day in days if any(read_day_state(lake, table, day) is None for table in tables)
    ]


def batch_watermark(
    lake: Lake, start: date, until: date, count_views: Sequence[CountView] = BUILT_IN
) -> datetime | None:
    """End of the last day of the contiguous run of computed, fresh days from `start`."""
    last = None
    for day in days_between(start, until):
        if missing_days(lake, [day], count_views) or stale_days(lake, [day], count_views):
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
    date long before the traffic does not mean hundreds of empty runs. Every declared count
    view counts (`settings.views_file`; a bad file raises ViewDeclarationError naming it): a
    view declared later makes every complete day missing until its table is computed.
    """
    count_views = declared_views(settings.views_file)
    lake = lake or Lake.from_settings(settings)
    watermark = landing_watermark(settings)
    first = first_landed_day(lake)
    if first is None:
        return BatchPlan(watermark, [], [], [])
    complete = complete_days(max(settings.start_date, first), watermark)
    missing = missing_days(lake, complete, count_views)
    computed = [day for day in complete if day not in missing]
    return BatchPlan(watermark, complete, missing, stale_days(lake, computed, count_views))
