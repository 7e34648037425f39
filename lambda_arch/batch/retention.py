"""Quarantine retention: `play_events_quarantine` keeps `LAMBDA_ARCH_QUARANTINE_RETENTION_DAYS`.

Quarantined records are kept for someone to look at (what broke, from which producer), not for
any view: nothing reads them back into an answer. A `dt` partition older than the retention
(before today - N days, UTC) is dropped from the metastore and its files deleted (the table has
an explicit LOCATION, so DROP PARTITION alone would leave them). The batch assets run it after
each computation and report what went as metadata.

A record that lands later in a dropped day (a bad record with an old event time) recreates the
partition; the next run drops it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

from lambda_arch.batch.lake import QUARANTINE_TABLE, Lake

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


@dataclass
class QuarantineRetention:
    """What one pass of the retention did (Dagster metadata: plain values)."""

    cutoff: date
    dropped: list[str] = field(default_factory=list)
    kept: int = 0
    rows_dropped: int = 0
    bytes_dropped: int = 0

    def metadata(self) -> dict[str, object]:
        return {
            "quarantine_retention_cutoff": self.cutoff.isoformat(),
            "quarantine_partitions_dropped": len(self.dropped),
            "quarantine_partitions_kept": self.kept,
            "quarantine_rows_dropped": self.rows_dropped,
            "quarantine_bytes_dropped": self.bytes_dropped,
        }


def _day(text: str) -> date | None:
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def drop_old_quarantine(
    spark: SparkSession, lake: Lake, retention_days: int, today: date | None = None
) -> QuarantineRetention:
    """Drop the quarantine's `dt` partitions before `today - retention_days` (today: UTC)."""
    today = today or datetime.now(UTC).date()
    report = QuarantineRetention(cutoff=today - timedelta(days=retention_days))
    stats = lake.partition_dates(table=QUARANTINE_TABLE)
    old = [s for s in stats if (day := _day(s.dt)) is not None and day < report.cutoff]
    report.kept = len(stats) - len(old)
    if not old:
        return report
    lake.ensure_tables(spark)
    specs = ", ".join(f"PARTITION (`dt`='{s.dt}')" for s in old)
    spark.sql(f"ALTER TABLE {lake.table(QUARANTINE_TABLE)} DROP IF EXISTS {specs}")
    filesystem, base = lake.filesystem()
    for partition in old:
        filesystem.delete_dir(f"{base}/{QUARANTINE_TABLE}/dt={partition.dt}")
        report.dropped.append(partition.dt)
        report.rows_dropped += partition.rows
        report.bytes_dropped += partition.bytes
    return report
