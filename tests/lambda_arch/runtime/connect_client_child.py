"""Child process of test_spark_connect: a Spark Connect client doing one job, printing JSON.

A process of its own because the suite's classic SparkSession lives in the test process, and a
Connect session next to it would switch pyspark into Connect mode for the whole process. The
settings (SPARK_REMOTE, LAMBDA_ARCH_HOME, KAFKA_BOOTSTRAP_SERVERS, LAMBDA_ARCH_TOPIC) come from
the environment, as in a Dagster run. The JSON document is the last line of stdout.

    python connect_client_child.py speed
    python connect_client_child.py catalog NAME OTHER_NAME
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from pyspark.sql import functions as F
from pyspark.sql.functions import udf

from lambda_arch.common.config import load_settings
from lambda_arch.runtime.spark import build_session

DATABASE = "connect_test"
WAIT_FOR_OTHER_S = 90.0


def server_imports_lambda_arch(_: Any) -> str:
    """Runs in the server's Python worker: can it import the project? (the test says no)."""
    try:
        import lambda_arch  # noqa: F401
    except ImportError as error:
        return f"ImportError: {error}"
    return "importable"


def speed() -> dict[str, Any]:
    """The Kafka source and the speed queries through the server."""
    from lambda_arch.batch.lake import Lake, read_play_events, read_quarantine
    from lambda_arch.ingest.kafka_options import source_options
    from lambda_arch.ingest.kafka_source import SOURCE_NAME
    from lambda_arch.speed.layer import (
        SpeedPaths,
        read_trending_speed,
        run_trending_speed,
    )
    from resources import SparkResource

    started = time.monotonic()
    seconds: dict[str, float] = {}

    def lap(step: str) -> None:
        seconds[step] = round(time.monotonic() - started, 2)

    settings = load_settings()
    # As a Dagster run gets it: build_session plus the source's registration.
    spark = SparkResource().session()
    result: dict[str, Any] = {"session": type(spark).__module__, "seconds": seconds}
    lap("session")
    probe = udf(server_imports_lambda_arch, "string")  # a UDF needs a session first
    result["server_python"] = spark.range(1).select(probe("id")).first()[0]
    lap("udf")
    options = source_options(settings.bootstrap_servers, settings.topic)
    result["batch_rows"] = spark.read.format(SOURCE_NAME).options(**options).load().count()
    lap("batch read")
    first = run_trending_speed(spark, settings, timeout_s=240)
    lap("trending")
    again = run_trending_speed(spark, settings, timeout_s=240)
    lap("trending again")
    plays = (
        read_trending_speed(spark, SpeedPaths.from_settings(settings))
        .groupBy("title_id")
        .agg(F.sum("plays").alias("plays"))
        .collect()
    )
    lap("trending read")
    result["trending"] = {
        "events_read": [first.events_read, again.events_read],
        "plays": {str(row.title_id): int(row.plays) for row in plays},
    }
    lake = Lake.from_settings(settings)
    result["landing"] = {
        "observed": first.observed,  # the counts query landed what it counted
        "events": read_play_events(spark, lake).count(),
        "quarantine": read_quarantine(spark, lake).count(),
    }
    lap("lake read")
    spark.stop()
    return result


def catalog(name: str, other: str) -> dict[str, Any]:
    """Write a table of our own to the server's Hive metastore, then read the other client's."""
    spark = build_session(load_settings())
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
    spark.sql(f"CREATE TABLE {DATABASE}.{name} (n INT) USING parquet")
    spark.sql(f"INSERT INTO {DATABASE}.{name} VALUES (1), (2), (3)")
    deadline = time.monotonic() + WAIT_FOR_OTHER_S
    while True:
        tables = sorted(row.tableName for row in spark.sql(f"SHOW TABLES IN {DATABASE}").collect())
        # The other table shows up at its CREATE, its rows at its INSERT: wait for both.
        # Refreshed first: a count that ran between the other's CREATE and INSERT leaves the
        # empty file listing cached in the server, and later counts would read it (seen: 0 rows
        # for 90 s under a loaded two-process test run).
        if other in tables:
            spark.catalog.refreshTable(f"{DATABASE}.{other}")
        rows = spark.table(f"{DATABASE}.{other}").count() if other in tables else None
        if rows == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    result = {"session": type(spark).__module__, "tables": tables, "other_rows": rows}
    spark.stop()
    return result


if __name__ == "__main__":
    job, *arguments = sys.argv[1:]
    outcome = speed() if job == "speed" else catalog(*arguments)
    print(json.dumps(outcome))
