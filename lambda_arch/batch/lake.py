"""The lake: Hive tables of raw play events and quarantined payloads, and their idempotent landing.

Tables (CONTRACT section 4), external Parquet with explicit locations under the warehouse root:
- `play_events`: the event columns of spark_schema.SPARK_EVENT_SCHEMA, the Kafka coordinates
  and `ingested_at`, partitioned by `dt` (yyyy-MM-dd of event_time, UTC) and `hour`;
- `play_events_quarantine`: the raw payload, its best-effort text, the reason and coordinates,
  partitioned by `dt` = UTC date of ingestion.

Landing a micro-batch (`write_landing_batch`, a foreachBatch body) is idempotent per batch id:
1. the batch is written once (one Spark job for both tables, no cache) to a staging folder
   `<play_events>/_staging/<tag>` with mode overwrite; readers skip names starting with `_`;
2. a manifest `<play_events>/_landing/<stream>.json` records the partitions this batch id
   touches, merged with those of an earlier attempt of the same batch id, before any file moves:
   an attempt whose partitions differ (quarantine `dt` is the ingestion date, which a retry
   after midnight changes) is still cleaned up;
3. in each of those partitions the files of an earlier attempt (`b<batch:012d>-...`) are
   deleted, then the staged files are moved in, named `b<batch:012d>-[s<stream>-]n<rows>-<part>`;
4. the partitions are registered in one `ALTER TABLE ... ADD IF NOT EXISTS PARTITION` each.
A retry (Spark reruns a batch whose commit was lost) therefore replaces its files, never adds
to them. The row count in each name makes `Lake.partition_dates` a file listing, not a scan.

File moves use pyarrow.fs, so the same code runs on local folders and on S3, and inside the
Python worker of a Spark Connect server (DataFrame API and SQL only: no JVM handles, no RDDs).
One landing query per lake and stream id: two writers with the same batch ids would replace
each other's files.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lambda_arch.common.files import write_bytes
from lambda_arch.common.storage import hadoop_uri, pyarrow_filesystem, pyarrow_uri
from lambda_arch.ingest.spark_schema import QUARANTINE_REASON_COLUMN, SPARK_EVENT_SCHEMA

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

    from lambda_arch.common.config import Settings

EVENTS_TABLE = "play_events"
QUARANTINE_TABLE = "play_events_quarantine"

COORDINATE_SCHEMA: tuple[tuple[str, str], ...] = (
    ("topic", "string"),
    ("partition", "int"),
    ("offset", "bigint"),
    ("kafka_timestamp", "timestamp"),
    ("ingested_at", "timestamp"),
)
EVENTS_SCHEMA: tuple[tuple[str, str], ...] = (*SPARK_EVENT_SCHEMA, *COORDINATE_SCHEMA)
EVENTS_PARTITIONING: tuple[tuple[str, str], ...] = (("dt", "string"), ("hour", "int"))
QUARANTINE_SCHEMA: tuple[tuple[str, str], ...] = (
    ("payload", "binary"),
    ("payload_text", "string"),
    ("reason", "string"),
    *COORDINATE_SCHEMA,
)
QUARANTINE_PARTITIONING: tuple[tuple[str, str], ...] = (("dt", "string"),)

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_STREAM_ID = re.compile(r"^[A-Za-z0-9]{1,64}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# b<batch>-[s<stream>-]n<rows>-<Spark's part name>
_LANDED = re.compile(r"^b(?P<batch>\d{12})-(?:s(?P<stream>[A-Za-z0-9]+)-)?n(?P<rows>\d+)-")
_KIND = "__lake_kind"  # staging partition column: which table a row goes to
_EVENT, _QUARANTINED = "e", "q"
_MICROS_PER_DAY = 86_400_000_000
_MICROS_PER_HOUR = 3_600_000_000


def _ddl_columns(schema: Iterable[tuple[str, str]]) -> str:
    return ", ".join(f"`{name}` {spark_type.upper()}" for name, spark_type in schema)


def _is_hidden(name: str) -> bool:
    """Names Spark and Hive readers skip (staging, manifests, _SUCCESS, .crc files)."""
    return name.startswith(("_", "."))


@dataclass(frozen=True)
class PartitionStats:
    """One `dt` partition of a lake table, from a file listing."""

    dt: str
    rows: int
    files: int
    bytes: int
    last_batch: int | None  # highest landing batch id among its files (None: none landed so)
    modified: datetime  # latest file modification time, UTC


@dataclass(frozen=True)
class LandingResult:
    """What one `write_landing_batch` call published."""

    batch_id: int
    events: int
    quarantined: int
    event_partitions: tuple[tuple[str, int], ...]  # (dt, hour)
    quarantine_partitions: tuple[str, ...]  # dt


@dataclass(frozen=True)
class Lake:
    """The lake's tables under `root` (a folder or an s3:// / s3a:// URI) in Hive `database`."""

    root: str
    database: str = "lambda_arch"

    def __post_init__(self) -> None:
        if not _IDENTIFIER.match(self.database):
            raise ValueError(f"database name {self.database!r} is not a plain SQL identifier")
        root = self.root.rstrip("/")
        if "://" not in root:
            root = str(Path(root).expanduser().absolute())
        object.__setattr__(self, "root", root)

    @classmethod
    def from_settings(cls, settings: Settings, database: str | None = None) -> Lake:
        return cls(settings.warehouse, database or settings.database)

    # Names and places ------------------------------------------------------------------------

    def table(self, name: str) -> str:
        """Qualified SQL name of a table of this lake."""
        return f"`{self.database}`.`{name}`"

    @property
    def database_location(self) -> str:
        return f"{self.root}/{self.database}.db"

    def location(self, table: str) -> str:
        """A table's folder as pyarrow names it (s3:// for S3)."""
        return f"{pyarrow_uri(self.database_location)}/{table}"

    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        """(pyarrow file system, path of the database folder in it)."""
        return pyarrow_filesystem(self.database_location)

    def _table_path(self, table: str) -> tuple[pafs.FileSystem, str]:
        filesystem, base = self.filesystem()
        return filesystem, f"{base}/{table}"

    # DDL -------------------------------------------------------------------------------------

    def ensure_tables(self, spark: SparkSession) -> None:
        """Create the database and both tables when missing (Spark SQL only: works over Connect)."""
        # Checked first: Hive logs an ERROR for CREATE DATABASE IF NOT EXISTS on an existing one.
        if not spark.catalog.databaseExists(self.database):
            spark.sql(
                f"CREATE DATABASE IF NOT EXISTS `{self.database}` "
                f"LOCATION '{hadoop_uri(self.database_location)}'"
            )
        for table, schema, partitioning in (
            (EVENTS_TABLE, EVENTS_SCHEMA, EVENTS_PARTITIONING),
            (QUARANTINE_TABLE, QUARANTINE_SCHEMA, QUARANTINE_PARTITIONING),
        ):
            self.create_table(spark, table, (*schema, *partitioning), partitioning)

    def create_table(
        self,
        spark: SparkSession,
        table: str,
        columns: Sequence[tuple[str, str]],
        partitioning: Sequence[tuple[str, str]],
        *,
        recover: bool = True,
    ) -> bool:
        """Create a partitioned Parquet table at its place in the lake unless it exists; True
        when it was created.

        A table created over files already there (a new or lost metastore, another
        LAMBDA_ARCH_HOME over the same warehouse) gets its partitions registered from them,
        unless `recover` is False (the batch tables register theirs from their state files).
        """
        if spark.catalog.tableExists(f"{self.database}.{table}"):
            return False
        filesystem, path = self._table_path(table)
        if _is_local(filesystem):
            # An existing folder spares Spark a FileNotFoundException warning per table.
            filesystem.create_dir(path, recursive=True)
        spark.sql(
            f"CREATE TABLE IF NOT EXISTS {self.table(table)} ({_ddl_columns(columns)}) "
            f"USING parquet PARTITIONED BY ({', '.join(f'`{n}`' for n, _ in partitioning)}) "
            f"LOCATION '{hadoop_uri(self.location(table))}'"
        )
        if recover and self.data_files(table):
            spark.sql(f"ALTER TABLE {self.table(table)} RECOVER PARTITIONS")
        return True

    # Metadata without a scan -----------------------------------------------------------------

    def data_files(self, table: str = EVENTS_TABLE, partition: str = "") -> list[pafs.FileInfo]:
        """Data files of a table, or of one partition folder of it (e.g. "dt=2026-03-01/hour=0"),
        skipping what readers skip (staging, manifests, checksums). A file listing, no scan."""
        filesystem, path = self._table_path(table)
        folder = f"{path}/{partition}".rstrip("/")
        listing = filesystem.get_file_info(
            pafs.FileSelector(folder, allow_not_found=True, recursive=True)
        )
        return [
            info
            for info in listing
            if info.type == pafs.FileType.File
            and not any(_is_hidden(part) for part in info.path[len(path) + 1 :].split("/"))
        ]

    def row_count(self, files: Iterable[pafs.FileInfo]) -> int:
        """Rows in data files: from landed file names, else from Parquet footers."""
        filesystem, _ = self.filesystem()
        total = 0
        for info in files:
            landed = _LANDED.match(info.base_name)
            total += (
                int(landed["rows"])
                if landed
                else pq.read_metadata(info.path, filesystem=filesystem).num_rows
            )
        return total

    def partition_dates(
        self, spark: SparkSession | None = None, table: str = EVENTS_TABLE
    ) -> list[PartitionStats]:
        """Per `dt` partition of table: rows, files, bytes, last batch and modification time.

        From a file listing (row counts from the file names, or from Parquet footers for files
        not landed by write_landing_batch), so it costs no Spark job; `spark` is not needed.
        """
        _, path = self._table_path(table)
        grouped: dict[str, list[pafs.FileInfo]] = defaultdict(list)
        for info in self.data_files(table):
            first = info.path[len(path) + 1 :].split("/")[0]
            if first.startswith("dt="):
                grouped[first.removeprefix("dt=")].append(info)
        stats = []
        for dt, files in sorted(grouped.items()):
            batches = [int(m["batch"]) for info in files if (m := _LANDED.match(info.base_name))]
            stats.append(
                PartitionStats(
                    dt=dt,
                    rows=self.row_count(files),
                    files=len(files),
                    bytes=sum(info.size or 0 for info in files),
                    last_batch=max(batches) if batches else None,
                    modified=max(_mtime(info) for info in files),
                )
            )
        return stats


def _mtime(info: pafs.FileInfo) -> datetime:
    moment = info.mtime
    if moment is None:
        return datetime.fromtimestamp(0, UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# Landing -----------------------------------------------------------------------------------------


def _utc_day_and_hour(ts: Column) -> tuple[Column, Column]:
    """(yyyy-MM-dd, hour) of a timestamp in UTC, by integer arithmetic on epoch micros.

    Independent of the session time zone (date_format and hour() use it).
    """
    from pyspark.sql import functions as F

    micros = F.unix_micros(ts)
    days = (micros - F.pmod(micros, F.lit(_MICROS_PER_DAY))) / F.lit(_MICROS_PER_DAY)
    day = F.date_from_unix_date(days.cast("int")).cast("string")
    hour = (F.pmod(micros, F.lit(_MICROS_PER_DAY)) / F.lit(_MICROS_PER_HOUR)).cast("int")
    return day, hour


def landing_frame(parsed: DataFrame) -> DataFrame:
    """Rows of both tables in one frame, with `__lake_kind`, `dt` and `hour` to partition by.

    `parsed` is a Kafka frame (key, value, topic, partition, offset, timestamp) after
    spark_schema.parse_events. Valid rows carry NULL payload columns and quarantined rows NULL
    event columns: one write then serves both tables (each table reads its own columns).
    """
    from pyspark.sql import functions as F

    reason = F.col(QUARANTINE_REASON_COLUMN)
    quarantined = reason.isNotNull()
    ingested_at = F.current_timestamp()
    event_day, event_hour = _utc_day_and_hour(F.col("event_time"))
    ingest_day, _ = _utc_day_and_hour(ingested_at)
    payload = F.col("value").cast("binary")
    return parsed.select(
        *[
            F.col(f"`{name}`").cast(spark_type).alias(name)
            for name, spark_type in SPARK_EVENT_SCHEMA
        ],
        F.when(quarantined, payload).alias("payload"),
        F.when(quarantined, F.make_valid_utf8(payload.cast("string"))).alias("payload_text"),
        reason.alias("reason"),
        F.col("topic").cast("string").alias("topic"),
        F.col("partition").cast("int").alias("partition"),
        F.col("offset").cast("bigint").alias("offset"),
        F.col("timestamp").cast("timestamp").alias("kafka_timestamp"),
        ingested_at.alias("ingested_at"),
        F.when(quarantined, F.lit(_QUARANTINED)).otherwise(F.lit(_EVENT)).alias(_KIND),
        F.when(quarantined, ingest_day).otherwise(event_day).alias("dt"),
        F.when(quarantined, F.lit(None).cast("int")).otherwise(event_hour).alias("hour"),
    )


def landed_prefix(batch_id: int, stream: str | None = None) -> str:
    """Start of the names of every file landed by batch_id (of stream)."""
    return f"b{batch_id:012d}-" + (f"s{stream}-" if stream else "")


@dataclass
class _Staged:
    """Staged files of one table, by partition folder relative to the table (dt=.../hour=...)."""

    files: dict[str, list[tuple[str, int]]] = field(default_factory=lambda: defaultdict(list))

    @property
    def rows(self) -> int:
        return sum(rows for files in self.files.values() for _, rows in files)


def _stage_listing(filesystem: pafs.FileSystem, staging: str) -> tuple[_Staged, _Staged]:
    """The staged Parquet files with their row counts (from footers), for events and quarantine."""
    events, quarantine = _Staged(), _Staged()
    for info in filesystem.get_file_info(
        pafs.FileSelector(staging, allow_not_found=True, recursive=True)
    ):
        if info.type != pafs.FileType.File or _is_hidden(info.base_name):
            continue
        kind, dt, hour = info.path[len(staging) + 1 :].split("/")[:3]
        rows = pq.read_metadata(info.path, filesystem=filesystem).num_rows
        if kind == f"{_KIND}={_EVENT}":
            events.files[f"{dt}/{hour}"].append((info.path, rows))
        else:
            quarantine.files[dt].append((info.path, rows))
    return events, quarantine


def _read_manifest(filesystem: pafs.FileSystem, path: str) -> dict:
    try:
        with filesystem.open_input_stream(path) as stream:
            return json.loads(stream.read().decode())
    except (FileNotFoundError, OSError, ValueError):
        return {}


def _write_manifest(filesystem: pafs.FileSystem, path: str, manifest: dict) -> None:
    write_bytes(filesystem, path, json.dumps(manifest, sort_keys=True).encode())


def _is_local(filesystem: pafs.FileSystem) -> bool:
    # Object stores have no folders to create (an S3 "folder" marker only confuses readers).
    return filesystem.type_name == "local"


def _publish(
    filesystem: pafs.FileSystem,
    table_path: str,
    staged: _Staged,
    partitions: Iterable[str],
    batch_id: int,
    stream: str | None,
) -> None:
    """In every partition folder: drop an earlier attempt's files, then move the staged ones in."""
    prefix = landed_prefix(batch_id, stream)
    for partition in sorted(set(partitions)):
        folder = f"{table_path}/{partition}"
        for info in filesystem.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
            landed = _LANDED.match(info.base_name)
            if (
                info.type == pafs.FileType.File
                and landed
                and int(landed["batch"]) == batch_id
                and landed["stream"] == stream
            ):
                filesystem.delete_file(info.path)
        files = staged.files.get(partition, [])
        if files and _is_local(filesystem):
            filesystem.create_dir(folder, recursive=True)
        for source, rows in files:
            name = source.rsplit("/", 1)[1]
            filesystem.move(source, f"{folder}/{prefix}n{rows}-{name}")


def _partition_spec(partition: str) -> str:
    """`dt=2026-01-01/hour=3` as `PARTITION (dt='2026-01-01', hour=3)`."""
    values = []
    for part in partition.split("/"):
        name, value = part.split("=", 1)
        values.append(f"`{name}`='{value}'" if name == "dt" else f"`{name}`={int(value)}")
    return f"PARTITION ({', '.join(values)})"


def write_landing_batch(
    batch_df: DataFrame, batch_id: int, lake: Lake, *, stream: str | None = None
) -> LandingResult:
    """foreachBatch body: land a parsed Kafka micro-batch in both tables, idempotently per batch_id.

    Use as `foreachBatch(functools.partial(write_landing_batch, lake=lake))` on the output of
    spark_schema.parse_events over the Kafka source. `stream` (letters and digits) names the
    landing query when several with separate checkpoints write to one lake. The tables must
    exist (Lake.ensure_tables).
    """
    if stream is not None and not _STREAM_ID.match(stream):
        raise ValueError(f"stream id {stream!r} must be 1-64 letters or digits")
    spark = batch_df.sparkSession
    filesystem, base = lake.filesystem()
    events_path, quarantine_path = f"{base}/{EVENTS_TABLE}", f"{base}/{QUARANTINE_TABLE}"
    tag = landed_prefix(batch_id, stream).rstrip("-")
    staging = f"{events_path}/_staging/{tag}"

    # One file per table partition and batch: few, larger files for the batch layer to read.
    frame = landing_frame(batch_df).repartition(_KIND, "dt", "hour")
    frame.write.mode("overwrite").partitionBy(_KIND, "dt", "hour").parquet(
        hadoop_uri(f"{lake.location(EVENTS_TABLE)}/_staging/{tag}")
    )
    events, quarantine = _stage_listing(filesystem, staging)

    # Write-ahead record of the partitions this batch id may have files in (see module doc).
    manifest_path = f"{events_path}/_landing/{stream or 'default'}.json"
    earlier = _read_manifest(filesystem, manifest_path)
    event_parts = set(events.files)
    quarantine_parts = set(quarantine.files)
    if earlier.get("batch_id") == batch_id:
        event_parts |= set(earlier.get(EVENTS_TABLE, []))
        quarantine_parts |= set(earlier.get(QUARANTINE_TABLE, []))
    _write_manifest(
        filesystem,
        manifest_path,
        {
            "batch_id": batch_id,
            EVENTS_TABLE: sorted(event_parts),
            QUARANTINE_TABLE: sorted(quarantine_parts),
        },
    )
    _publish(filesystem, events_path, events, event_parts, batch_id, stream)
    _publish(filesystem, quarantine_path, quarantine, quarantine_parts, batch_id, stream)
    for table, staged in ((EVENTS_TABLE, events), (QUARANTINE_TABLE, quarantine)):
        if staged.files:
            specs = " ".join(_partition_spec(p) for p in sorted(staged.files))
            spark.sql(f"ALTER TABLE {lake.table(table)} ADD IF NOT EXISTS {specs}")
    filesystem.delete_dir(staging)
    return LandingResult(
        batch_id=batch_id,
        events=events.rows,
        quarantined=quarantine.rows,
        event_partitions=tuple(
            (dt.removeprefix("dt="), int(hour.removeprefix("hour=")))
            for dt, hour in (p.split("/") for p in sorted(events.files))
        ),
        quarantine_partitions=tuple(p.removeprefix("dt=") for p in sorted(quarantine.files)),
    )


# Readers -----------------------------------------------------------------------------------------


def _checked_dates(dates: Sequence[str]) -> list[str]:
    bad = [d for d in dates if not _DATE.match(d)]
    if bad:
        raise ValueError(f"dates must be yyyy-MM-dd, got {bad[:3]}")
    return list(dates)


def _read(spark: SparkSession, name: str, dates: Sequence[str] | None) -> DataFrame:
    from pyspark.sql import functions as F

    # Files land outside this session: drop its cached file listing of the table first.
    spark.catalog.refreshTable(name)
    frame = spark.table(name)
    if dates is not None:
        # A filter on the partition column: only the partitions of these dates are listed.
        frame = frame.where(F.col("dt").isin(_checked_dates(dates)))
    return frame


def read_play_events(
    spark: SparkSession, lake: Lake, dates: Sequence[str] | None = None
) -> DataFrame:
    """Raw valid events from the catalog, only the given dt partitions when dates is not None."""
    return _read(spark, lake.table(EVENTS_TABLE), dates)


def read_quarantine(
    spark: SparkSession, lake: Lake, dates: Sequence[str] | None = None
) -> DataFrame:
    """Quarantined payloads from the catalog, only the given ingestion dates when not None."""
    return _read(spark, lake.table(QUARANTINE_TABLE), dates)
