"""`lambda-arch up` on real engines: its Spark Connect server drives the session's standalone
cluster (two 1-core workers), Dagster keeps its runs in PostgreSQL, the Hive metastore lives in
PostgreSQL. Through it: `produce`, `run` (the speed catch-up and the batch days), a two-day
backfill launched from GraphQL. The answers equal a plain-Python count of the produced events,
the master lists the application, and while the stack runs a local session and a second cluster
driver share the catalog with the Connect server (three JVMs on one metastore: Derby allows one).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, RunsFilter

from lambda_arch.runtime.broker import free_port
from tests.scaleout.engines import Postgres, SparkCluster
from tests.ui.stack import START_DATE, Stack, stack_env
from tests.ui.test_dagster_ui import BACKFILL, BATCH_ASSETS, FAILED_RUN_STATUSES, stop_automation

START = datetime.fromisoformat(f"{START_DATE}T00:00:00+00:00")
EVENTS = 1500
SPAN = timedelta(hours=60)  # two whole days and half of the third
AS_OF = "2026-03-03T12:00:00Z"
WINDOW_MIN = 60 * 60  # every event
DAYS = ["2026-03-01", "2026-03-02"]
COUNTRIES = ("US", "FR", "BR", "JP")
SOURCES = ("search", "top_10", "my_list", "because_you_watched", "trending_now")
TYPES = ("play_start", "play_heartbeat", "play_start", "play_stop")
KEPT_LOGS = Path(__file__).resolve().parents[2] / "test-artifacts" / "scaleout"
RUN_TIMEOUT_S = 900  # ~2 min alone; a loaded 2-core machine is far slower
BACKFILL_TIMEOUT_S = 600
LAUNCH_BACKFILL = """
mutation ($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""
# Each child makes a table of its own, then waits until it sees every name on its command line.
CATALOG_CHILD = """
import sys, time
from lambda_arch.common.config import Settings
from lambda_arch.runtime.spark import build_session
mine, wanted = sys.argv[1], sys.argv[2:]
spark = build_session(Settings.from_env(), app_name=mine)
spark.sql("CREATE DATABASE IF NOT EXISTS shared")
spark.sql(f"CREATE TABLE IF NOT EXISTS shared.{mine} (x INT) USING parquet")
deadline = time.monotonic() + 240
while True:
    seen = {r.tableName for r in spark.sql("SHOW TABLES IN shared").collect()}
    if set(wanted) <= seen:
        break
    assert time.monotonic() < deadline, sorted(seen)
    time.sleep(1)
print(",".join(sorted(seen)))
spark.stop()
"""


def events() -> list[dict[str, Any]]:
    """EVENTS records over SPAN from START, a duplicate of an earlier record every 25th."""
    records: list[dict[str, Any]] = []
    for n in range(EVENTS):
        if n % 25 == 24:
            records.append(dict(records[n - 7]))  # the same event again: counted once
            continue
        records.append(
            {
                "event_id": f"e{n}",
                "event_type": TYPES[n % len(TYPES)],
                "event_time": (START + SPAN * n / EVENTS).isoformat().replace("+00:00", "Z"),
                "member_id": n % 11,
                "title_id": (n * 7919) % 13,
                "country": COUNTRIES[n % len(COUNTRIES)],
                "discovery_source": SOURCES[(n // 3) % len(SOURCES)],
                "position_ms": (n % 50) * 1000,
            }
        )
    return records


def expected(records: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """Trending and discovery over every event, computed here without the product's code."""
    plays = {r["event_id"]: r for r in records if r["event_type"] == "play_start"}
    titles = Counter(r["title_id"] for r in plays.values())
    sources = Counter(r["discovery_source"] for r in plays.values())
    ranked = sorted(titles.items(), key=lambda item: (-item[1], item[0]))
    trending = [
        {"rank": rank, "title_id": title, "plays": count}
        for rank, (title, count) in enumerate(ranked, start=1)
    ]
    total = sum(sources.values())
    discovery = [
        {"discovery_source": source, "plays": count, "share": round(count / total, 4)}
        for source, count in sorted(sources.items(), key=lambda item: (-item[1], item[0]))
    ]
    return trending, discovery


def cli(stack: Stack, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    # The console script: `python -m lambda_arch.cli` exits 0 even when the command failed.
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lambda-arch"), *args],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr[-6000:]}"
    return done


def answers(stack: Stack) -> tuple[list[dict], list[dict]]:
    window = ("--as-of", AS_OF, "--window", str(WINDOW_MIN), "--json")
    trending = json.loads(cli(stack, "trending", *window, "--limit", "1000").stdout)
    discovery = json.loads(cli(stack, "discovery", *window).stdout)
    return trending["titles"], [
        {key: source[key] for key in ("discovery_source", "plays", "share")}
        for source in discovery["sources"]
    ]


def launch_backfill(stack: Stack) -> str:
    params = {
        "partitionNames": DAYS,
        "assetSelection": [{"path": [key]} for key in BATCH_ASSETS],
    }
    launched = stack.graphql(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    def done() -> bool:
        found = stack.graphql(BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
        statuses = [run["status"] for run in found["runs"]]
        assert FAILED_RUN_STATUSES.isdisjoint(statuses), found
        return found["status"] == "COMPLETED_SUCCESS" or (
            bool(statuses) and all(status == "SUCCESS" for status in statuses)
        )

    stack.poll(f"backfill {backfill_id}", done, BACKFILL_TIMEOUT_S, every_s=3.0)
    return backfill_id


def share_catalog(
    stack: Stack, cluster: SparkCluster, connect_url: str, tmp_path: Path
) -> list[str]:
    """A local session and a classic driver on the cluster, started while the Connect server
    runs, each create a table and wait to see the other's and one the server made."""
    spark_script = tmp_path / "catalog_child.py"
    spark_script.write_text(CATALOG_CHILD)
    cli_env = {key: value for key, value in stack.env.items() if key != "SPARK_REMOTE"}
    # The children must not find up's Connect server through the home's PID file.
    cli_env["LAMBDA_ARCH_HOME"] = str(tmp_path / "child-home")
    cli_env["LAMBDA_ARCH_WAREHOUSE"] = str(stack.home / "warehouse")
    wanted = ["from_local", "from_cluster_driver", "from_connect"]
    children = []
    for name, master in (("from_local", "local[1]"), ("from_cluster_driver", cluster.master_url)):
        children.append(
            subprocess.Popen(
                [sys.executable, str(spark_script), name, *wanted],
                env={**cli_env, "LAMBDA_ARCH_SPARK_MASTER": master},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        connect = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys\n"
                "from pyspark.sql import SparkSession\n"
                "s = SparkSession.builder.remote(sys.argv[1]).getOrCreate()\n"
                "s.sql('CREATE DATABASE IF NOT EXISTS shared')\n"
                "s.sql('CREATE TABLE shared.from_connect (x INT) USING parquet')\n"
                "s.sql('INSERT INTO shared.from_connect VALUES (1), (2), (3)')\n",
                connect_url,
            ],
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert connect.returncode == 0, connect.stderr[-3000:]
        outputs = []
        for child in children:
            out, err = child.communicate(timeout=300)
            assert child.returncode == 0, err[-3000:]
            outputs.append(out.strip().splitlines()[-1])
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    return outputs


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_up_on_a_spark_cluster_with_postgres_answers_as_computed(
    spark_cluster: SparkCluster, postgres: Postgres, tmp_path: Path
) -> None:
    timings: dict[str, float] = {}
    started = time.monotonic()
    postgres.create_database("up_dagster")
    postgres.create_database("up_metastore")
    home = tmp_path / "home"
    connect_port = free_port()
    env = stack_env(home, free_port(), free_port(), connect_port)
    env.update(
        {
            "LAMBDA_ARCH_SPARK_MASTER": spark_cluster.master_url,
            "LAMBDA_ARCH_DAGSTER_PG_URL": postgres.url("up_dagster"),
            "LAMBDA_ARCH_METASTORE_URL": postgres.jdbc_url("up_metastore"),
            "PYSPARK_PYTHON": sys.executable,  # the executors' Python: this venv's
        }
    )
    out_path, err_path = tmp_path / "up.out", tmp_path / "up.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "lambda_arch.cli", "up", "--no-traffic"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            cwd=tmp_path,
            start_new_session=True,
        )
    stack = Stack(process, home, env, int(env["LAMBDA_ARCH_DAGSTER_PORT"]), out_path, err_path)
    try:
        stack.wait_until_up()
        timings["up"] = stack.up_s
        stop_automation(stack)  # the test's runs are the only ones on the two worker cores
        dagster_yaml = (home / "dagster" / "dagster.yaml").read_text()
        assert "postgres_url: postgresql+psycopg2://" in dagster_yaml

        # The Connect server is an application of the cluster, with both workers' cores.
        [app] = [
            a
            for a in spark_cluster.state()["activeapps"]
            if a["name"] == "lambda-arch Spark Connect server"
        ]
        assert app["cores"] == 2, app

        records = events()
        replay = tmp_path / "events.jsonl"
        replay.write_text("".join(json.dumps(r) + "\n" for r in records))
        mark = time.monotonic()
        produced = cli(stack, "produce", "--from", str(replay), "--quiet")
        assert f"produced {EVENTS:,} records" in produced.stderr, produced.stderr
        mark, timings["produce"] = time.monotonic(), time.monotonic() - mark
        ran = cli(stack, "run", timeout_s=RUN_TIMEOUT_S)
        timings["run"] = time.monotonic() - mark
        assert f"recomputing {DAYS[0]} .. {DAYS[1]}" in ran.stdout, ran.stdout + ran.stderr[-6000:]
        want_trending, want_discovery = expected(records)
        assert answers(stack) == (want_trending, want_discovery)

        mark = time.monotonic()
        backfill_id = launch_backfill(stack)
        timings["backfill"] = time.monotonic() - mark
        assert answers(stack) == (want_trending, want_discovery)

        # Dagster's storage is PostgreSQL: the backfill and every run are rows there.
        with DagsterInstance.from_config(str(home / "dagster")) as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            assert instance.get_backfill(backfill_id) is not None
            jobs = Counter(r.dagster_run.job_name for r in instance.get_run_records())
            # A backfill launched from the UI/GraphQL over assets runs as Dagster's asset job.
            backfill_runs = instance.get_run_records(
                RunsFilter(tags={"dagster/backfill": backfill_id})
            )
        assert jobs["speed_job"] >= 1 and jobs["batch_job"] >= 1, jobs
        assert backfill_runs, jobs
        assert {r.dagster_run.status.value for r in backfill_runs} == {"SUCCESS"}
        assert postgres.query("up_dagster", "SELECT count(*) FROM runs")[0][0] == sum(jobs.values())
        # The lake's tables are in the PostgreSQL metastore.
        tables = {row[0] for row in postgres.query("up_metastore", 'SELECT "TBL_NAME" FROM "TBLS"')}
        assert {"play_events", "trending_batch"} <= tables, tables

        mark = time.monotonic()
        seen = share_catalog(stack, spark_cluster, f"sc://127.0.0.1:{connect_port}", tmp_path)
        timings["shared catalog"] = time.monotonic() - mark
        assert seen == ["from_cluster_driver,from_connect,from_local"] * 2, seen
        apps = spark_cluster.state()
        names = {a["name"] for a in apps["activeapps"] + apps["completedapps"]}
        assert {"lambda-arch Spark Connect server", "from_cluster_driver"} <= names, names
    finally:
        leftovers = stack.stop()
        # pytest keeps only the last 3 temp folders (other runs on the machine rotate them).
        shutil.copytree(home / "logs", KEPT_LOGS, dirs_exist_ok=True)
        timings["total"] = time.monotonic() - started
        print(f"\ncluster stack timings (s): { {k: round(v, 1) for k, v in timings.items()} }")
    assert leftovers == [], f"still running after up stopped (killed now): {leftovers}"
    assert process.returncode == 0, stack.output()
