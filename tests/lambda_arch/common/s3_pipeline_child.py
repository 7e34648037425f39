"""Child process of test_s3: land a topic in an S3 warehouse, run the trending speed view,
recompute batch days, print JSON.

Runs in its own process because the suite's shared SparkSession was started without the s3a
jars (jars cannot be added to a running JVM) and because it needs a Derby metastore of its own.
Everything comes from the environment (LAMBDA_ARCH_WAREHOUSE=s3://..., AWS_ENDPOINT_URL, ...);
the days to compute are the arguments. The JSON document is the last line of stdout.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import date


def main(days: list[date]) -> dict:
    from lambda_arch.batch.lake import Lake
    from lambda_arch.batch.layer import TRENDING_TABLE, compute_days, read_batch_view, stale_days
    from lambda_arch.common.config import Settings
    from lambda_arch.runtime.spark import build_session
    from lambda_arch.speed.layer import (
        LANDING,
        SpeedPaths,
        read_speed_state,
        read_trending_speed,
        run_landing,
        run_trending_speed,
    )

    settings = Settings.from_env()
    lake = Lake.from_settings(settings)
    timings: dict[str, float] = {}
    started = time.monotonic()
    spark = build_session(settings, app_name="lambda-arch-s3-test")
    spark.range(1).count()
    timings["session_s"] = time.monotonic() - started
    try:
        started = time.monotonic()
        report = run_landing(spark, settings, lake, timeout_s=240)
        timings["landing_s"] = time.monotonic() - started
        # One speed view too: its deltas go to <warehouse>/speed through s3a.
        started = time.monotonic()
        run_trending_speed(spark, settings, timeout_s=240)
        speed_rows = read_trending_speed(spark, SpeedPaths.from_settings(settings)).collect()
        timings["speed_s"] = time.monotonic() - started
        started = time.monotonic()
        results = compute_days(spark, lake, days, lock_dir=settings.home / "locks")
        timings["batch_s"] = time.monotonic() - started
        rows = read_batch_view(spark, lake, TRENDING_TABLE, days).collect()
        # Where the catalog says the tables live (s3a:// for an S3 warehouse).
        locations = {
            table: row.data_type
            for table in ("play_events", TRENDING_TABLE)
            for row in spark.sql(f"DESCRIBE TABLE EXTENDED {lake.table(table)}").collect()
            if row.col_name == "Location"
        }
    finally:
        spark.stop()
    return {
        "landing": {
            "events_read": report.events_read,
            "observed": report.observed,
            "watermark": report.watermark.isoformat() if report.watermark else None,
        },
        "results": [{"table": r.table, "day": r.day, "rows": r.rows} for r in results],
        "trending": [
            [row.minute.isoformat(), row.country, row.title_id, row.plays, row.dt] for row in rows
        ],
        "speed_trending": [
            [row.minute.isoformat(), row.country, row.title_id, row.plays] for row in speed_rows
        ],
        "landing_state": read_speed_state(SpeedPaths.from_settings(settings), LANDING),
        "stale": [d.isoformat() for d in stale_days(lake, days)],
        "partitions": [(p.dt, p.rows) for p in lake.partition_dates()],
        "locations": locations,
        "timings": timings,
    }


if __name__ == "__main__":
    print(json.dumps(main([date.fromisoformat(arg) for arg in sys.argv[1:]])))
