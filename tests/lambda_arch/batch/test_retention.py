"""Quarantine retention on a real Hive table: old `dt` partitions go (metastore and files),
recent ones and the valid events stay."""

from __future__ import annotations

import uuid
from datetime import date
from pathlib import Path

from lambda_arch.batch.lake import EVENTS_TABLE, QUARANTINE_TABLE, Lake, write_landing_batch
from lambda_arch.batch.retention import drop_old_quarantine
from tests.lambda_arch.batch.test_lake import kafka_frame, payload


def test_quarantine_retention_drops_old_partitions_and_keeps_recent_ones(
    spark, tmp_path: Path
) -> None:
    lake = Lake(str(tmp_path / "warehouse"), f"retention_{uuid.uuid4().hex[:10]}")
    lake.ensure_tables(spark)
    bad = (payload("q", "2026-01-01T10:00:00Z", member_id=-1), 0, 0)
    good = (payload("ok", "2026-01-01T10:00:00Z"), 0, 1)
    landed = write_landing_batch(kafka_frame(spark, [bad, good]), 0, lake)
    (today,) = landed.quarantine_partitions  # the quarantine's dt is the ingestion date
    table = lake.table(QUARANTINE_TABLE)
    columns = (
        "payload, payload_text, reason, topic, partition, offset, kafka_timestamp, ingested_at"
    )
    for dt in ("2026-01-01", "2026-01-02", "2026-02-20"):  # as if landed on those days
        spark.sql(
            f"INSERT INTO {table} PARTITION (dt='{dt}') SELECT {columns} FROM {table}"
            f" WHERE dt = '{today}'"
        )
    kept = sorted(["2026-02-20", today])

    # 30 days before 2026-03-02 is 2026-01-31: the two January days go.
    report = drop_old_quarantine(spark, lake, 30, today=date(2026, 3, 2))
    assert report.dropped == ["2026-01-01", "2026-01-02"]
    assert report.kept == 2 and report.rows_dropped == 2 and report.bytes_dropped > 0
    assert report.metadata()["quarantine_partitions_dropped"] == 2
    assert [s.dt for s in lake.partition_dates(table=QUARANTINE_TABLE)] == kept
    partitions = [row[0] for row in spark.sql(f"SHOW PARTITIONS {table}").collect()]
    assert partitions == [f"dt={dt}" for dt in kept]
    rows = spark.sql(f"SELECT dt FROM {table}").collect()
    assert sorted(row.dt for row in rows) == kept
    # The valid event of an old day is the batch layer's history: untouched.
    assert [s.dt for s in lake.partition_dates(table=EVENTS_TABLE)] == ["2026-01-01"]

    again = drop_old_quarantine(spark, lake, 30, today=date(2026, 3, 2))
    assert again.dropped == [] and again.kept == 2
