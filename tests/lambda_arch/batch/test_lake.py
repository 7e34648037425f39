"""The lake on the suite's Spark session: tables, idempotent landing, partition-pruned readers."""

from __future__ import annotations

import json
import pickle
import uuid
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest

from lambda_arch.batch.lake import (
    EVENTS_TABLE,
    QUARANTINE_TABLE,
    Lake,
    read_play_events,
    read_quarantine,
    write_landing_batch,
)
from lambda_arch.ingest.kafka_options import source_options
from lambda_arch.ingest.kafka_reader import SCHEMA_DDL
from lambda_arch.ingest.kafka_source import register_kafka_source
from lambda_arch.ingest.producer import ensure_topic, make_producer
from lambda_arch.ingest.schema import invalid_value, missing
from lambda_arch.ingest.spark_schema import parse_events

KAFKA_TIME = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def payload(event_id: str, event_time: Any, **extra: Any) -> bytes:
    document = {
        "event_id": event_id,
        "event_type": "play_start",
        "event_time": event_time,
        "member_id": 7,
        "title_id": 42,
        "country": "US",
        **extra,
    }
    return json.dumps(document).encode()


# (value, partition, offset): valid events on two days and three hours, and four bad payloads.
VALID = [
    (payload("a", "2026-03-01T00:00:00Z", device="tv"), 0, 10),
    (payload("b", "2026-03-01T00:59:59.999999Z"), 0, 11),
    (payload("c", "2026-03-01T01:30:00+02:00", position_ms=5), 1, 20),  # 2026-02-28 23:30 UTC
    (payload("d", 1_772_409_599_000), 1, 21),  # epoch ms: 2026-03-01T23:59:59Z
]
INVALID = [
    (b"{not json", 0, 12, "invalid JSON"),
    (b"\xff\xfe\x00bytes", 1, 22, "invalid UTF-8"),
    (payload("e", "2026-03-01T00:00:00Z", device="toaster"), 2, 30, invalid_value("device")),
    (json.dumps({"event_id": "f"}).encode(), 2, 31, missing("event_type")),
]


@pytest.fixture
def lake(spark, tmp_path: Path) -> Lake:
    """Fresh tables in a database and folder of this test's own."""
    made = Lake(str(tmp_path / "warehouse"), f"lake_{uuid.uuid4().hex[:10]}")
    made.ensure_tables(spark)
    return made


def kafka_frame(spark, records: list[tuple[bytes, int, int]], topic: str = "play-events"):
    """A parsed frame shaped like the Kafka source's output."""
    rows = [(b"7", value, topic, part, offset, KAFKA_TIME) for value, part, offset in records]
    return parse_events(spark.createDataFrame(rows, SCHEMA_DDL), "value")


def batch(spark):
    return kafka_frame(spark, [*VALID, *[(v, p, o) for v, p, o, _ in INVALID]])


def landed_files(lake: Lake, table: str) -> list[str]:
    filesystem, base = lake.filesystem()
    infos = filesystem.get_file_info(
        pafs.FileSelector(f"{base}/{table}", allow_not_found=True, recursive=True)
    )
    return sorted(
        info.path[len(base) + len(table) + 2 :]
        for info in infos
        if info.type == pafs.FileType.File and "/_" not in info.path[len(base) :]
    )


def event_ids(spark, lake: Lake, dates: list[str] | None = None) -> list[str]:
    rows = read_play_events(spark, lake, dates).select("event_id").collect()
    return sorted(row.event_id for row in rows)


def test_ensure_tables_creates_partitioned_external_tables(spark, lake: Lake) -> None:
    lake.ensure_tables(spark)  # a second call changes nothing
    tables = {row.tableName for row in spark.sql(f"SHOW TABLES IN `{lake.database}`").collect()}
    assert tables == {EVENTS_TABLE, QUARANTINE_TABLE}

    events = spark.table(lake.table(EVENTS_TABLE))
    assert [(f.name, f.dataType.simpleString()) for f in events.schema.fields] == [
        ("event_id", "string"),
        ("event_type", "string"),
        ("event_time", "timestamp"),
        ("member_id", "bigint"),
        ("title_id", "bigint"),
        ("country", "string"),
        ("device", "string"),
        ("discovery_source", "string"),
        ("position_ms", "bigint"),
        ("topic", "string"),
        ("partition", "int"),
        ("offset", "bigint"),
        ("kafka_timestamp", "timestamp"),
        ("ingested_at", "timestamp"),
        ("dt", "string"),
        ("hour", "int"),
    ]
    quarantine = spark.table(lake.table(QUARANTINE_TABLE))
    assert quarantine.columns == [
        "payload",
        "payload_text",
        "reason",
        "topic",
        "partition",
        "offset",
        "kafka_timestamp",
        "ingested_at",
        "dt",
    ]
    for table, partitioning in ((EVENTS_TABLE, ["dt", "hour"]), (QUARANTINE_TABLE, ["dt"])):
        columns = spark.catalog.listColumns(f"{lake.database}.{table}")
        assert [c.name for c in columns if c.isPartition] == partitioning
        detail = {
            row.col_name: row.data_type
            for row in spark.sql(f"DESCRIBE TABLE EXTENDED {lake.table(table)}").collect()
        }
        assert detail["Type"] == "EXTERNAL"
        assert detail["Provider"] == "parquet"
        assert detail["Location"] == f"file:{lake.location(table)}"


def test_a_landing_batch_splits_events_and_quarantine(spark, lake: Lake) -> None:
    before = datetime.now(UTC)
    result = write_landing_batch(batch(spark), 0, lake)
    after = datetime.now(UTC)

    assert (result.events, result.quarantined) == (4, 4)
    assert result.event_partitions == (
        ("2026-02-28", 23),
        ("2026-03-01", 0),
        ("2026-03-01", 23),
    )
    events = {row.event_id: row for row in read_play_events(spark, lake).collect()}
    assert {k: (r.dt, r.hour) for k, r in events.items()} == {
        "a": ("2026-03-01", 0),
        "b": ("2026-03-01", 0),
        "c": ("2026-02-28", 23),
        "d": ("2026-03-01", 23),
    }
    a = events["a"]
    assert (a.event_time, a.device, a.discovery_source, a.position_ms) == (
        datetime(2026, 3, 1),  # the session time zone is UTC
        "tv",
        "other",
        None,
    )
    assert events["c"].position_ms == 5
    assert (a.topic, a.partition, a.offset, a.kafka_timestamp) == (
        "play-events",
        0,
        10,
        datetime(2026, 3, 1, 12),
    )
    assert before - timedelta(seconds=1) <= a.ingested_at.replace(tzinfo=UTC) <= after

    quarantined = {row.offset: row for row in read_quarantine(spark, lake).collect()}
    assert set(quarantined) == {12, 22, 30, 31}
    for value, part, offset, reason in INVALID:
        row = quarantined[offset]
        assert bytes(row.payload) == value
        assert (row.reason, row.partition, row.topic) == (reason, part, "play-events")
        assert row.dt == row.ingested_at.strftime("%Y-%m-%d")
    assert quarantined[12].payload_text == "{not json"
    # Invalid bytes become U+FFFD; the raw bytes stay in payload.
    assert quarantined[22].payload_text == "\ufffd\ufffd\x00bytes"

    # One file per partition and batch, named after the batch with its row count.
    files = landed_files(lake, EVENTS_TABLE)
    assert [f.rsplit("/", 1)[0] for f in files] == [
        "dt=2026-02-28/hour=23",
        "dt=2026-03-01/hour=0",
        "dt=2026-03-01/hour=23",
    ]
    assert [f.rsplit("/", 1)[1][:18] for f in files] == [
        "b000000000000-n1-p",
        "b000000000000-n2-p",
        "b000000000000-n1-p",
    ]
    # Nothing left in staging.
    filesystem, base = lake.filesystem()
    staging = filesystem.get_file_info(
        pafs.FileSelector(f"{base}/{EVENTS_TABLE}/_staging", allow_not_found=True, recursive=True)
    )
    assert [i.path for i in staging if i.type == pafs.FileType.File] == []


def test_a_repeated_batch_id_replaces_and_new_ids_append(spark, lake: Lake) -> None:
    frame = batch(spark)
    write_landing_batch(frame, 5, lake)
    first_files = landed_files(lake, EVENTS_TABLE)
    write_landing_batch(frame, 5, lake)  # Spark retrying batch 5 after a lost commit

    assert event_ids(spark, lake) == ["a", "b", "c", "d"]
    assert read_quarantine(spark, lake).count() == 4
    assert len(landed_files(lake, EVENTS_TABLE)) == len(first_files)
    assert len(landed_files(lake, QUARANTINE_TABLE)) == 1

    later = kafka_frame(
        spark,
        [(payload("g", "2026-03-01T00:10:00Z"), 0, 13), (b"", 0, 14)],
    )
    result = write_landing_batch(later, 6, lake)
    assert (result.events, result.quarantined) == (1, 1)
    assert event_ids(spark, lake) == ["a", "b", "c", "d", "g"]
    assert read_quarantine(spark, lake).count() == 5
    assert [p.rows for p in lake.partition_dates()] == [1, 4]
    assert [p.last_batch for p in lake.partition_dates()] == [5, 6]


def test_a_retry_cleans_an_earlier_attempt_in_partitions_it_no_longer_touches(
    spark, lake: Lake
) -> None:
    """Quarantine dt is the ingestion date: a retry after midnight lands in another partition.

    Simulated: the first attempt's quarantine file is moved to the previous day's folder, as if
    it had been ingested then; the manifest written before the moves still names that folder.
    """
    write_landing_batch(batch(spark), 3, lake)
    filesystem, base = lake.filesystem()
    [landed] = landed_files(lake, QUARANTINE_TABLE)
    day = landed.split("/")[0]
    manifest_path = f"{base}/{EVENTS_TABLE}/_landing/default.json"
    with filesystem.open_input_stream(manifest_path) as stream:
        manifest = json.loads(stream.read())
    manifest[QUARANTINE_TABLE] = ["dt=2000-01-01"]
    with filesystem.open_output_stream(manifest_path) as stream:
        stream.write(json.dumps(manifest).encode())
    filesystem.create_dir(f"{base}/{QUARANTINE_TABLE}/dt=2000-01-01")
    filesystem.move(
        f"{base}/{QUARANTINE_TABLE}/{landed}",
        f"{base}/{QUARANTINE_TABLE}/dt=2000-01-01/{landed.split('/')[1]}",
    )
    spark.sql(f"ALTER TABLE {lake.table(QUARANTINE_TABLE)} ADD PARTITION (dt='2000-01-01')")
    assert read_quarantine(spark, lake, ["2000-01-01"]).count() == 4

    write_landing_batch(batch(spark), 3, lake)

    assert read_quarantine(spark, lake).count() == 4
    assert [f.split("/")[0] for f in landed_files(lake, QUARANTINE_TABLE)] == [day]
    assert event_ids(spark, lake) == ["a", "b", "c", "d"]


def test_stream_ids_keep_their_own_files(spark, lake: Lake) -> None:
    write_landing_batch(kafka_frame(spark, [VALID[0]]), 0, lake, stream="one")
    write_landing_batch(kafka_frame(spark, [VALID[1]]), 0, lake, stream="two")
    write_landing_batch(kafka_frame(spark, [VALID[1]]), 0, lake, stream="two")
    assert event_ids(spark, lake) == ["a", "b"]
    with pytest.raises(ValueError, match="stream id"):
        write_landing_batch(kafka_frame(spark, [VALID[0]]), 0, lake, stream="no-dash")


def test_readers_prune_partitions_and_partition_dates_need_no_scan(spark, lake: Lake) -> None:
    write_landing_batch(batch(spark), 0, lake)

    one_day = read_play_events(spark, lake, ["2026-03-01"])
    assert sorted(r.event_id for r in one_day.collect()) == ["a", "b", "d"]
    assert one_day.inputFiles()
    assert all("/dt=2026-03-01/" in path for path in one_day.inputFiles())
    plan = one_day._jdf.queryExecution().executedPlan().toString()
    assert "PartitionFilters: [isnotnull(dt" in plan
    assert event_ids(spark, lake, []) == []
    assert event_ids(spark, lake, ["2026-02-28", "1999-01-01"]) == ["c"]
    with pytest.raises(ValueError, match="yyyy-MM-dd"):
        read_play_events(spark, lake, ["March 1"])

    stats = lake.partition_dates()
    assert [(p.dt, p.rows, p.files, p.last_batch) for p in stats] == [
        ("2026-02-28", 1, 1, 0),
        ("2026-03-01", 3, 2, 0),
    ]
    assert all(p.bytes > 0 for p in stats)
    [quarantine_day] = lake.partition_dates(table=QUARANTINE_TABLE)
    assert quarantine_day.rows == 4
    # Agrees with the catalog's partitions and a scan.
    partitions = {
        r.partition for r in spark.sql(f"SHOW PARTITIONS {lake.table(EVENTS_TABLE)}").collect()
    }
    assert partitions == {"dt=2026-02-28/hour=23", "dt=2026-03-01/hour=0", "dt=2026-03-01/hour=23"}


def test_lake_names_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="identifier"):
        Lake(str(tmp_path), "drop table; --")
    lake = Lake("s3a://bucket/warehouse/")
    assert lake.root == "s3a://bucket/warehouse"
    assert lake.location(EVENTS_TABLE) == "s3://bucket/warehouse/lambda_arch.db/play_events"
    assert Lake("relative/dir").root == str(Path("relative/dir").absolute())
    # The foreachBatch body as production passes it: picklable (it runs server-side on Connect).
    body = pickle.loads(pickle.dumps(partial(write_landing_batch, lake=lake)))
    assert body.keywords["lake"] == lake


def test_streaming_landing_survives_a_lost_commit(
    spark, lake: Lake, broker, topic, tmp_path
) -> None:
    """A real stream from Kafka; the last batch's commit is deleted, as after a crash between
    the write and the checkpoint commit: the rerun repeats that batch without duplicates."""
    ensure_topic(broker.bootstrap_servers, topic, 2)
    producer = make_producer(broker.bootstrap_servers)
    try:
        for i in range(60):
            value = (
                b"garbage"
                if i % 10 == 9
                else payload(f"s{i}", 1_772_323_200_000 + i * 600_000)  # 10-min steps from 03-01
            )
            producer.send(topic, key=str(i).encode(), value=value, partition=i % 2)
        producer.flush()
    finally:
        producer.close()
    register_kafka_source(spark)
    checkpoint = tmp_path / "checkpoint"
    seen: list[int] = []

    def land(frame, batch_id: int) -> None:
        seen.append(batch_id)
        write_landing_batch(frame, batch_id, lake)

    def run() -> None:
        stream = (
            spark.readStream.format("lambda_kafka")
            .options(**source_options(broker.bootstrap_servers, topic, max_events_per_batch=25))
            .load()
        )
        query = (
            parse_events(stream, "value")
            .writeStream.foreachBatch(land)
            .option("checkpointLocation", str(checkpoint))
            .trigger(availableNow=True)
            .start()
        )
        query.awaitTermination(120)
        assert query.exception() is None

    run()
    assert seen == [0, 1, 2]
    assert read_play_events(spark, lake).count() == 54
    assert read_quarantine(spark, lake).count() == 6
    for name in ("2", ".2.crc"):  # the commit and Hadoop's checksum of it
        (checkpoint / "commits" / name).unlink(missing_ok=True)

    run()
    assert seen == [0, 1, 2, 2]
    events = read_play_events(spark, lake)
    assert events.count() == 54
    assert events.select("event_id").distinct().count() == 54
    assert read_quarantine(spark, lake).count() == 6
    # Partition write sets: ten hours of events on 2026-03-01.
    assert [(p.dt, p.rows) for p in lake.partition_dates()] == [("2026-03-01", 54)]
