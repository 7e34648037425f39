"""A backfill of a day range from the `dagster` CLI: one run, in a process and JVM of its own,
over a lake landed by this process (so its fresh metastore must find the lake's partitions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dagster import AssetKey, DagsterInstance

from lambda_arch.batch import layer as batch
from lambda_arch.batch.lake import Lake
from lambda_arch.common.config import Settings
from lambda_arch.ingest.producer import ensure_topic, make_producer
from lambda_arch.speed.layer import run_landing

ASSETS = ",".join(batch.BATCH_VIEWS)


def test_dagster_cli_backfills_a_range_in_one_run(
    spark, speed_env: Settings, tmp_path: Path
) -> None:
    ensure_topic(speed_env.bootstrap_servers, speed_env.topic, 3)
    producer = make_producer(speed_env.bootstrap_servers)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    for n in range(96):  # a play every hour for four days, titles 0-4
        moment = start + timedelta(hours=n)
        producer.send(
            speed_env.topic,
            value=json.dumps(
                {
                    "event_id": f"e{n}",
                    "event_type": "play_start",
                    "event_time": moment.isoformat(),
                    "member_id": 1,
                    "title_id": n % 5,
                    "country": "SE",
                }
            ).encode(),
        )
    producer.flush()
    producer.close()
    lake = Lake.from_settings(speed_env)
    run_landing(spark, speed_env, lake)

    dagster_home = tmp_path / "dagster-home"
    dagster_home.mkdir()
    env = {
        **os.environ,
        # Another LAMBDA_ARCH_HOME (its own Derby metastore) over this test's warehouse.
        "LAMBDA_ARCH_HOME": str(tmp_path / "cli-home"),
        "LAMBDA_ARCH_WAREHOUSE": speed_env.warehouse,
        "LAMBDA_ARCH_SPARK_MASTER": "local[1]",
        "LAMBDA_ARCH_SHUFFLE_PARTITIONS": "2",
        "DAGSTER_HOME": str(dagster_home),
    }
    command = [
        str(Path(sys.executable).with_name("dagster")),
        "asset",
        "materialize",
        "-m",
        "lambda_arch.definitions",
        "--select",
        ASSETS,
        "--partition-range",
        "2026-03-01...2026-03-03",
    ]
    log = tmp_path / "dagster-cli.log"
    with log.open("w") as out:
        done = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=240)
    assert done.returncode == 0, log.read_text()[-3000:]

    with DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_run_records()
        assert len(runs) == 1
        for name in batch.BATCH_VIEWS:
            keys = instance.get_materialized_partitions(AssetKey(name))
            assert keys == {"2026-03-01", "2026-03-02", "2026-03-03"}

    # This process's metastore learns the tables (and their partitions) from the lake.
    batch.ensure_batch_tables(spark, lake)
    rows = batch.read_batch_view(spark, lake, batch.TRENDING_TABLE).collect()
    plays: Counter[str] = Counter()
    for row in rows:
        plays[row.dt] += row.plays
    assert plays == {"2026-03-01": 24, "2026-03-02": 24, "2026-03-03": 24}
