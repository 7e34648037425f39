"""S3 mode end to end on moto: landing, batch layer and state in a bucket of moto_server on
127.0.0.1, Spark through s3a (hadoop-aws 3.3.1 jars), pyarrow and dagster-aws next to it."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import boto3
import pyarrow.fs as pafs
import pytest
from botocore.config import Config

from lambda_arch.batch.lake import Lake
from lambda_arch.common.config import Settings
from lambda_arch.common.storage import (
    S3BucketError,
    check_bucket,
    hadoop_uri,
    pyarrow_filesystem,
    pyarrow_uri,
    split_s3_uri,
)
from lambda_arch.ingest.producer import ensure_topic, make_producer
from lambda_arch.runtime.broker import free_port, port_in_use
from lambda_arch.runtime.processes import spawn, stop_process
from lambda_arch.runtime.spark import s3a_conf
from lambda_arch.runtime.spark_connect import server_conf

REPO = Path(__file__).resolve().parents[3]
CHILD = Path(__file__).with_name("s3_pipeline_child.py")
MOTO_SERVER = Path(sys.executable).with_name("moto_server")
DAYS = [date(2026, 4, 1), date(2026, 4, 2)]
HOURS = (0, 9, 23)
COUNTRIES = ("US", "BR", "DE")
# Every built-in count view has a batch table (device_mix too, issue 13).
BATCH_TABLES = (
    "play_events_clean",
    "trending_batch",
    "discovery_batch",
    "device_mix_batch",
    "sessions_batch",
)


# moto_server -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An S3-compatible server (moto_server) on a free loopback port; yields its endpoint URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    process = spawn([str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)], log_path=log)
    try:
        deadline = time.monotonic() + 60
        while not port_in_use(port):
            assert process.poll() is None, f"moto_server exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "moto_server did not open its port in 60 s"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process, timeout_s=10.0)


AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
}


def s3_client(endpoint: str):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture(scope="module")
def bucket(moto: str) -> str:
    name = f"lake-{uuid.uuid4().hex[:10]}"
    s3_client(moto).create_bucket(Bucket=name)
    return name


@pytest.fixture
def aws_env(moto: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """This process's AWS variables pointed at moto (as a user would point them at S3)."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in {**AWS_TEST_ENV, "AWS_ENDPOINT_URL": moto}.items():
        monkeypatch.setenv(name, value)
    return moto


def keys(endpoint: str, bucket: str, prefix: str) -> list[str]:
    pages = (
        s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    )
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


# Traffic and its plain-Python trending counts ---------------------------------------------------


def make_events(count: int = 300, seed: int = 11) -> list[dict]:
    """Plays and heartbeats on both DAYS, ids unique. Three hours a day: every landed hour is a
    file that s3a commits by copying and pyarrow moves by copying, so few hours keep it quick."""
    rng = random.Random(seed)
    events = []
    for n in range(count):
        day = rng.choice(DAYS)
        moment = datetime(day.year, day.month, day.day, rng.choice(HOURS), tzinfo=UTC)
        moment += timedelta(seconds=rng.randrange(3600))
        events.append(
            {
                "event_id": f"e{n}",
                "event_type": rng.choice(["play_start", "play_start", "play_heartbeat"]),
                "event_time": moment.isoformat().replace("+00:00", "Z"),
                "member_id": rng.randrange(40),
                "title_id": rng.randrange(12),
                "country": rng.choice(COUNTRIES),
                "discovery_source": rng.choice(["search", "top_10", "my_list"]),
                "position_ms": rng.randrange(3_600_000),
            }
        )
    return events


def trending_oracle(events: list[dict]) -> Counter[tuple]:
    """Plays per (minute, country, title_id), each event_id once (CONTRACT section 3)."""
    plays: Counter[tuple] = Counter()
    for event in {e["event_id"]: e for e in events}.values():
        if event["event_type"] == "play_start":
            moment = datetime.fromisoformat(event["event_time"].replace("Z", "+00:00"))
            minute = moment.replace(second=0, microsecond=0, tzinfo=None).isoformat()
            plays[(minute, event["country"], event["title_id"])] += 1
    return plays


# Tests -----------------------------------------------------------------------------------------


@pytest.mark.timeout(480)  # one JVM and three Spark phases; ~100-130 s, slower on a busy machine
def test_s3_mode_end_to_end_on_moto(broker, topic: str, moto: str, bucket: str, tmp_path) -> None:
    """Raw history, speed deltas, batch views and state live in the bucket and the batch layer
    recomputes from there; trending counts equal a plain count over the produced events."""
    events = make_events()
    sent = events + events[::10]  # every tenth event twice: counted once
    ensure_topic(broker.bootstrap_servers, topic, 2)
    producer = make_producer(broker.bootstrap_servers)
    for event in sent:
        producer.send(topic, key=str(event["member_id"]).encode(), value=json.dumps(event).encode())
    producer.flush()
    producer.close()

    warehouse = f"s3://{bucket}/warehouse"
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("LAMBDA_ARCH_", "AWS_"))
        and name not in ("KAFKA_BOOTSTRAP_SERVERS", "SPARK_REMOTE")
    }
    env.update(
        {
            **AWS_TEST_ENV,
            "AWS_ENDPOINT_URL": moto,
            "LAMBDA_ARCH_HOME": str(tmp_path / "home"),  # its own Derby metastore
            "LAMBDA_ARCH_WAREHOUSE": warehouse,
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "LAMBDA_ARCH_TOPIC": topic,
            "LAMBDA_ARCH_SPARK_MASTER": "local[2]",
            "LAMBDA_ARCH_SHUFFLE_PARTITIONS": "2",
            "PYTHONPATH": str(REPO),
        }
    )
    started = time.monotonic()
    child = subprocess.run(
        [sys.executable, str(CHILD), *(d.isoformat() for d in DAYS)],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    assert child.returncode == 0, f"child failed:\n{child.stderr[-4000:]}"
    result = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"child {time.monotonic() - started:.1f} s, phases {result['timings']}")

    # Everything Spark and pyarrow wrote is in the bucket, under the warehouse prefix.
    assert result["landing"]["events_read"] == len(sent)
    assert result["landing"]["observed"]["landing.quarantined"] == 0
    assert {table: location.split("://")[0] for table, location in result["locations"].items()} == {
        "play_events": "s3a",
        "trending_batch": "s3a",
    }
    database = "warehouse/lambda_arch.db"  # the default database (the child's env has no other)
    landed = keys(moto, bucket, f"{database}/play_events/")
    for day in DAYS:
        assert any(k.startswith(f"{database}/play_events/dt={day}/hour=") for k in landed)
        for table in BATCH_TABLES:
            assert any(
                k.endswith(".parquet") for k in keys(moto, bucket, f"{database}/{table}/dt={day}/")
            ), f"{table} has no files for {day}"
            assert keys(moto, bucket, f"{database}/_batch_state/{table}/{day}.json")
    # (S3A leaves an empty `_staging/` marker, which readers skip like the folder it stands for.)
    assert not [k for k in landed if "/_staging/" in k and not k.endswith("/")], "staging left"
    assert keys(moto, bucket, "warehouse/speed/_state/landing.json")
    assert keys(moto, bucket, "warehouse/speed/_state/trending_speed.json")
    assert any(
        k.endswith(".parquet")
        for k in keys(moto, bucket, "warehouse/speed/trending_speed/batch_id=")
    )
    assert result["landing_state"]["offsets"], "the landing state file was read back from S3"
    assert sum(rows for _, rows in result["partitions"]) == len(sent)  # raw keeps duplicates
    assert result["stale"] == []

    # The batch layer's trending counts equal a plain count over the produced events.
    oracle = trending_oracle(events)
    counts = Counter(
        {(m, country, title): plays for m, country, title, plays, _ in result["trending"]}
    )
    assert counts == oracle
    assert {r["table"] for r in result["results"]} == set(BATCH_TABLES)
    # So do the speed layer's: one micro-batch, judged against no earlier watermark, drops none.
    speed = Counter(
        {(m, country, title): plays for m, country, title, plays in result["speed_trending"]}
    )
    assert speed == oracle


def test_dagster_aws_resource_checks_the_warehouse_bucket(aws_env: str, bucket: str) -> None:
    """The Dagster layer talks to S3 through dagster-aws, configured from the environment."""
    from resources import build_resources, check_warehouse_bucket, s3_from_env

    s3 = build_resources()["s3"]
    client = s3.get_client()
    assert client.meta.endpoint_url == aws_env  # AWS_ENDPOINT_URL, read by boto3
    client.put_object(Bucket=bucket, Key="probe/hello.txt", Body=b"hi")
    assert keys(aws_env, bucket, "probe/") == ["probe/hello.txt"]

    check_warehouse_bucket(s3, Settings(LAMBDA_ARCH_WAREHOUSE=f"s3a://{bucket}/lake"))
    check_warehouse_bucket(s3, Settings(LAMBDA_ARCH_WAREHOUSE="/tmp/local-lake"))  # no-op
    with pytest.raises(S3BucketError) as missing:
        check_warehouse_bucket(s3_from_env(), Settings(LAMBDA_ARCH_WAREHOUSE="s3://no-such/lake"))
    message = str(missing.value)
    assert "'no-such'" in message and aws_env in message and "does not exist" in message


def test_check_bucket_names_an_unreachable_endpoint(bucket: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    client = boto3.client(
        "s3",
        endpoint_url=dead,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1}, connect_timeout=2),
    )
    with pytest.raises(S3BucketError, match="cannot be reached") as error:
        check_bucket(client, f"s3://{bucket}/w")
    assert dead in str(error.value) and bucket in str(error.value)


def test_pyarrow_reaches_the_endpoint_of_the_aws_variables(
    aws_env: str, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lake.py, batch.py and speed.py use pyarrow's S3 file system: it follows AWS_ENDPOINT_URL
    (and AWS_ENDPOINT_URL_S3, which wins) with no code of ours."""
    lake = Lake(f"s3a://{bucket}/pa", "probe_db")
    filesystem, base = lake.filesystem()
    assert filesystem.type_name == "s3" and base == f"{bucket}/pa/probe_db.db"
    with filesystem.open_output_stream(f"{base}/x/file.bin") as out:
        out.write(b"12345")
    assert keys(aws_env, bucket, "pa/") == ["pa/probe_db.db/x/file.bin"]
    # Through monkeypatch, so both are restored: a leaked AWS_ENDPOINT_URL_S3 once pointed a
    # later test's broker (its S3 client reads it too) at this module's stopped moto_server.
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", aws_env)
    filesystem, _ = pafs.FileSystem.from_uri(f"s3://{bucket}/pa")
    assert filesystem.get_file_info(f"{base}/x/file.bin").size == 5


def test_split_s3_uri_of_an_s3a_location() -> None:
    assert split_s3_uri("s3a://b/lake/") == ("b", "lake")


def test_the_connect_server_gets_the_s3a_settings(tmp_path: Path) -> None:
    settings = Settings(LAMBDA_ARCH_HOME=str(tmp_path), LAMBDA_ARCH_WAREHOUSE="s3://b/lake")
    conf = server_conf(settings, 15999)
    assert {k: v for k, v in conf.items() if k in s3a_conf(settings)} == s3a_conf(settings)
    assert conf["spark.sql.warehouse.dir"] == "s3a://b/lake"


def test_hadoop_and_pyarrow_name_the_same_bucket_each_their_way(tmp_path: Path) -> None:
    assert hadoop_uri("s3://b/lake/t") == "s3a://b/lake/t"
    assert hadoop_uri("s3a://b/lake/t") == "s3a://b/lake/t"
    assert pyarrow_uri("s3a://b/lake/t") == "s3://b/lake/t"
    assert pyarrow_uri("s3://b/lake/t") == "s3://b/lake/t"
    for local in ("/tmp/lake", "lake/t", "file:///tmp/lake"):
        assert hadoop_uri(local) == local
        assert pyarrow_uri(local) == local
    # Only the scheme at the start changes, never a "s3://" later in a key.
    assert pyarrow_uri("s3a://b/s3a://x") == "s3://b/s3a://x"
    assert hadoop_uri(pyarrow_uri("s3a://b/k")) == "s3a://b/k"


def test_pyarrow_filesystem_of_a_plain_path_is_local(tmp_path: Path) -> None:
    filesystem, path = pyarrow_filesystem(str(tmp_path))
    assert isinstance(filesystem, pafs.LocalFileSystem)
    assert path == str(tmp_path)
    filesystem, path = pyarrow_filesystem(f"file://{tmp_path}")
    assert isinstance(filesystem, pafs.LocalFileSystem)
    assert path == str(tmp_path)
    filesystem, path = pyarrow_filesystem("relative/folder")
    assert isinstance(filesystem, pafs.LocalFileSystem)
    assert path == "relative/folder"


def test_pyarrow_filesystem_reads_s3a_as_s3(aws_env: str, bucket: str) -> None:
    filesystem, path = pyarrow_filesystem(f"s3a://{bucket}/lake/x")
    assert isinstance(filesystem, pafs.S3FileSystem)
    assert path == f"{bucket}/lake/x"
