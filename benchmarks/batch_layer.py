"""Batch layer: Spark recomputing one day's four batch views against DuckDB on the same Parquet.

Puts one day of generated play events (default 5M records, 5% duplicates) into a fresh lake
through the production landing code (`lambda_arch.batch.lake.write_landing_batch`, no Kafka), then
times, median of --repeats:
- Spark: `lambda_arch.batch.layer.compute_day` (play_events_clean, trending_batch, discovery_batch,
  sessions_batch: read, dedup, aggregate, sessionize, INSERT OVERWRITE the day); the JVM start
  is reported on its own;
- DuckDB: the same four results from the same Parquet files in SQL (written to Parquet too);
and checks that both give the same answers. Goal: Spark <= 2 x DuckDB.

    .venv/bin/python benchmarks/batch_layer.py [--events 5000000] [--repeats 3] [--master local[*]]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lambda_arch.batch import layer as batch
from lambda_arch.batch.lake import EVENTS_TABLE, Lake, write_landing_batch
from lambda_arch.common.config import Settings
from lambda_arch.ingest.generator import TrafficConfig, generate

DAY = date(2026, 3, 1)
DATABASE = "bench_batch"


def write_payloads(path: Path, events: int, seed: int) -> float:
    """One day of generated records (valid ones and 5% duplicates) as JSON lines."""
    started = time.monotonic()
    seconds_per_day = 86_400
    config = TrafficConfig(
        seed=seed,
        start=datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC),
        events_per_second=events / seconds_per_day,
        duplicate_rate=0.05,
    )
    with path.open("wb") as out:
        for record in itertools.islice(generate(config), events):
            out.write(record.value + b"\n")
    return time.monotonic() - started


def land(spark, lake: Lake, payloads: Path) -> int:
    """The payloads through parse_events and write_landing_batch, as a Kafka batch would be."""
    from pyspark.sql import functions as F

    from lambda_arch.ingest.spark_schema import parse_events

    lines = spark.read.text(str(payloads)).select(F.col("value").cast("binary").alias("value"))
    kafka_like = lines.select(
        F.lit(None).cast("binary").alias("key"),
        "value",
        F.lit("play-events").alias("topic"),
        (F.spark_partition_id() % 8).alias("partition"),
        F.monotonically_increasing_id().alias("offset"),
        F.current_timestamp().alias("timestamp"),
    )
    lake.ensure_tables(spark)
    result = write_landing_batch(parse_events(kafka_like, "value"), 0, lake)
    return result.events


DUCKDB_SQL = """
CREATE OR REPLACE TEMP TABLE clean_all AS
  SELECT * EXCLUDE (rn) FROM (
    SELECT *, row_number() OVER (
      PARTITION BY dt, event_id ORDER BY event_time, "partition", "offset") AS rn
    FROM read_parquet('{raw}/**/*.parquet', hive_partitioning = true)
    WHERE dt = '{day}' OR dt = '{previous}' OR (dt = '{next}' AND hour = 0))
  WHERE rn = 1;
CREATE OR REPLACE TEMP VIEW clean AS SELECT * FROM clean_all WHERE dt = '{day}';
COPY (SELECT date_trunc('minute', event_time) AS minute, country, title_id, count(*) AS plays
      FROM clean WHERE event_type = 'play_start' GROUP BY ALL)
  TO '{out}/trending.parquet';
COPY (SELECT date_trunc('minute', event_time) AS minute, country, discovery_source,
             count(*) AS plays
      FROM clean WHERE event_type = 'play_start' GROUP BY ALL)
  TO '{out}/discovery.parquet';
COPY (WITH marked AS (
        SELECT member_id, title_id, event_time, position_ms,
          CASE WHEN event_time - lag(event_time) OVER w < INTERVAL 30 MINUTE THEN 0 ELSE 1 END
            AS starts
        FROM clean_all WINDOW w AS (PARTITION BY member_id, title_id ORDER BY event_time)),
      numbered AS (
        SELECT *, sum(starts) OVER (PARTITION BY member_id, title_id ORDER BY event_time
                                    ROWS UNBOUNDED PRECEDING) AS session
        FROM marked),
      sessions AS (
        SELECT member_id, title_id, min(event_time) AS session_start,
               max(event_time) AS session_end, count(*) AS events,
               coalesce(max(position_ms) - min(position_ms), 0) AS watched_ms
        FROM numbered GROUP BY member_id, title_id, session)
      SELECT * FROM sessions
      WHERE session_end >= TIMESTAMPTZ '{day} 00:00:00+00'
        AND session_end < TIMESTAMPTZ '{next} 00:00:00+00')
  TO '{out}/sessions.parquet';
COPY (SELECT * EXCLUDE (dt, hour) FROM clean) TO '{out}/clean.parquet';
"""


def duckdb_run(lake: Lake, out: Path) -> float:
    import duckdb

    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    connection = duckdb.connect()
    connection.execute("SET TimeZone = 'UTC'")
    connection.execute(
        DUCKDB_SQL.format(
            raw=lake.location(EVENTS_TABLE),
            day=DAY.isoformat(),
            previous=(DAY - timedelta(days=1)).isoformat(),
            next=(DAY + timedelta(days=1)).isoformat(),
            out=out,
        )
    )
    connection.close()
    return time.monotonic() - started


def agree(spark, lake: Lake, out: Path) -> dict[str, bool]:
    """Whether Spark's tables and DuckDB's files hold the same rows (as multisets)."""
    checks = {}
    for table, name in (
        (batch.TRENDING_TABLE, "trending"),
        (batch.DISCOVERY_TABLE, "discovery"),
        (batch.SESSIONS_TABLE, "sessions"),
    ):
        columns = list(batch.TABLE_COLUMNS[table])
        ours = batch.read_batch_view(spark, lake, table, [DAY]).select(*columns)
        theirs = spark.read.parquet(str(out / f"{name}.parquet")).select(*columns)
        checks[name] = ours.exceptAll(theirs).isEmpty() and theirs.exceptAll(ours).isEmpty()
        if not checks[name]:
            print(f"{name}: only spark", ours.exceptAll(theirs).limit(3).collect())
            print(f"{name}: only duckdb", theirs.exceptAll(ours).limit(3).collect())
    clean = batch.read_batch_view(spark, lake, batch.CLEAN_TABLE, [DAY]).select("event_id")
    theirs = spark.read.parquet(str(out / "clean.parquet")).select("event_id")
    checks["clean"] = clean.exceptAll(theirs).isEmpty() and theirs.exceptAll(clean).isEmpty()
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5_000_000, help="records in the day")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each engine")
    parser.add_argument("--master", default="local[*]", help="Spark master URL")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lambda-arch-bench-") as folder:
        home = Path(folder)
        os.environ.setdefault("LAMBDA_ARCH_SHUFFLE_PARTITIONS", str(os.cpu_count() or 2))
        settings = Settings(LAMBDA_ARCH_HOME=str(home), LAMBDA_ARCH_SPARK_MASTER=args.master)
        payloads = home / "payloads.jsonl"
        generated_s = write_payloads(payloads, args.events, args.seed)
        print(f"generated {args.events:,} records in {generated_s:.1f} s")

        from lambda_arch.runtime.spark import build_session

        started = time.monotonic()
        spark = build_session(settings, app_name="bench-batch")
        spark.sql("SELECT 1").collect()
        jvm_s = time.monotonic() - started
        lake = Lake(str(home / "warehouse"), DATABASE)
        started = time.monotonic()
        landed = land(spark, lake, payloads)
        print(f"landed {landed:,} valid events in {time.monotonic() - started:.1f} s")
        batch.ensure_batch_tables(spark, lake)

        spark_times, duck_times = [], []
        for attempt in range(args.repeats):
            started = time.monotonic()
            results = batch.compute_day(spark, lake, DAY)
            spark_times.append(time.monotonic() - started)
            duck_times.append(duckdb_run(lake, home / f"duckdb-{attempt}"))
            per_table = ", ".join(f"{r.table} {r.duration_s:.1f} s" for r in results)
            print(
                f"run {attempt + 1}: spark {spark_times[-1]:.1f} s ({per_table}); "
                f"duckdb {duck_times[-1]:.1f} s"
            )
        checks = agree(spark, lake, home / "duckdb-0")
        rows = {r.table: r.rows for r in results}
        spark.stop()

    spark_median, duck_median = statistics.median(spark_times), statistics.median(duck_times)
    print()
    print(f"cores: {os.cpu_count()}, Spark master {args.master}, load {os.getloadavg()[0]:.1f}")
    print(f"events: {args.events:,} records on {DAY} ({landed:,} valid, {rows})")
    print(f"JVM start (not in the figures): {jvm_s:.1f} s")
    print(
        f"spark  batch recompute: median {spark_median:.1f} s "
        f"(min {min(spark_times):.1f}, max {max(spark_times):.1f})"
    )
    print(
        f"duckdb same results:    median {duck_median:.1f} s "
        f"(min {min(duck_times):.1f}, max {max(duck_times):.1f})"
    )
    print(f"ratio spark / duckdb: {spark_median / duck_median:.2f} (goal <= 2.0)")
    print(f"results agree: {checks}")
    if not all(checks.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
