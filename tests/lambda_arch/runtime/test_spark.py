"""SparkSession construction: the shared catalog configuration, the classic session's extras, the
JVM's log configuration, the s3a settings, and the suite's real session built by build_session."""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lambda_arch.common.config import Settings
from lambda_arch.runtime.spark import (
    JIT_OPTIONS,
    LOG4J2_PROPERTIES,
    SCHEDULER_POOLS,
    build_session,
    catalog_conf,
    local_session_conf,
    log4j_file,
    metastore_dir,
    s3a_conf,
    s3a_jars,
    scheduler_pools_file,
    spark_environment,
    write_log4j,
)


def test_spark_environment_defaults_to_loopback_and_this_python(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("SPARK_LOCAL_IP", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON"):
        monkeypatch.delenv(name, raising=False)
    assert spark_environment() == {
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    }
    monkeypatch.setenv("SPARK_LOCAL_IP", "10.0.0.5")
    monkeypatch.setenv("PYSPARK_PYTHON", "/opt/python")
    assert spark_environment()["SPARK_LOCAL_IP"] == "10.0.0.5"
    assert spark_environment()["PYSPARK_PYTHON"] == "/opt/python"


def test_catalog_conf_puts_the_metastore_in_the_home(tmp_path: Path) -> None:
    settings = Settings(LAMBDA_ARCH_HOME=str(tmp_path))
    assert metastore_dir(settings) == tmp_path / "metastore"
    conf = catalog_conf(settings)
    assert conf["spark.sql.session.timeZone"] == "UTC"
    assert conf["spark.sql.catalogImplementation"] == "hive"
    assert conf["spark.sql.shuffle.partitions"].isdigit()
    assert conf["spark.sql.warehouse.dir"] == str(tmp_path / "warehouse")
    assert conf["spark.sql.streaming.stateStore.providerClass"].endswith(
        "RocksDBStateStoreProvider"
    )
    assert conf["spark.driver.extraJavaOptions"] == (
        f"-Dderby.system.home={tmp_path / 'metastore'} {JIT_OPTIONS}"
    )
    assert conf["spark.executor.extraJavaOptions"] == JIT_OPTIONS
    assert conf["spark.hadoop.javax.jdo.option.ConnectionURL"] == (
        f"jdbc:derby:;databaseName={tmp_path / 'metastore' / 'metastore_db'};create=true"
    )
    on_s3 = catalog_conf(Settings(LAMBDA_ARCH_HOME=str(tmp_path), LAMBDA_ARCH_WAREHOUSE="s3://b/l"))
    assert on_s3["spark.sql.warehouse.dir"] == "s3a://b/l"  # Hadoop's connector for s3://


def test_local_session_conf_binds_loopback_and_points_at_the_log_config(tmp_path: Path) -> None:
    settings = Settings(LAMBDA_ARCH_HOME=str(tmp_path))
    conf = local_session_conf(settings)
    assert conf["spark.driver.host"] == conf["spark.driver.bindAddress"] == "127.0.0.1"
    assert conf["spark.ui.enabled"] == "false" and conf["spark.ui.showConsoleProgress"] == "false"
    assert local_session_conf(settings, ui=True)["spark.ui.enabled"] == "true"
    assert conf["spark.driver.extraJavaOptions"] == (
        catalog_conf(settings)["spark.driver.extraJavaOptions"]
        + f" -Dlog4j2.configurationFile=file:{log4j_file(settings)}"
    )
    assert not any(key.startswith("spark.hadoop.fs.s3a") for key in conf)  # local lake


def test_write_log4j_writes_once_and_repairs(tmp_path: Path) -> None:
    settings = Settings(LAMBDA_ARCH_HOME=str(tmp_path))
    path = write_log4j(settings)
    assert path == log4j_file(settings) == tmp_path / "spark" / "log4j2.properties"
    assert path.read_text() == LOG4J2_PROPERTIES
    assert "rootLogger.level = warn" in LOG4J2_PROPERTIES
    written = path.stat().st_mtime_ns
    write_log4j(settings)
    assert path.stat().st_mtime_ns == written  # unchanged: not rewritten
    path.write_text("rootLogger.level = info\n")
    write_log4j(settings)
    assert path.read_text() == LOG4J2_PROPERTIES


def test_s3a_conf_only_for_an_s3_warehouse() -> None:
    assert s3a_conf(Settings(LAMBDA_ARCH_WAREHOUSE="/tmp/lake"), {}) == {}
    conf = s3a_conf(
        Settings(LAMBDA_ARCH_WAREHOUSE="s3://b/lake", LAMBDA_ARCH_SPARK_MASTER="local[2]"),
        {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ENDPOINT_URL_S3": "https://s3.example:9"},
    )
    jars = [str(jar) for jar in s3a_jars()]
    assert [Path(jar).name for jar in jars] == [
        "hadoop-aws-3.3.1.jar",
        "aws-java-sdk-bundle-1.11.901.jar",
    ]
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "https://s3.example:9"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "true"
    # Hadoop 3.5 writes these as "60s"; hadoop-aws 3.3.1 needs plain numbers.
    assert conf["spark.hadoop.fs.s3a.threads.keepalivetime"] == "60"
    aws = s3a_conf(Settings(LAMBDA_ARCH_WAREHOUSE="s3a://b/lake"), {"AWS_REGION": "eu-west-1"})
    assert aws["spark.hadoop.fs.s3a.endpoint"] == "s3.eu-west-1.amazonaws.com"
    assert "spark.hadoop.fs.s3a.path.style.access" not in aws
    # Local mode: the driver's class path (tasks share its JVM); a cluster: spark.jars.
    assert set(conf["spark.driver.extraClassPath"].split(os.pathsep)) == set(jars)
    cluster = Settings(LAMBDA_ARCH_WAREHOUSE="s3://b/l", LAMBDA_ARCH_SPARK_MASTER="spark://h:7077")
    assert s3a_conf(cluster, {})["spark.jars"].split(",") == jars


def test_s3a_conf_of_a_plain_http_endpoint_and_the_session_conf() -> None:
    settings = Settings(LAMBDA_ARCH_WAREHOUSE="s3://b/lake", LAMBDA_ARCH_SPARK_MASTER="local[2]")
    conf = s3a_conf(settings, {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert conf["spark.hadoop.fs.s3a.aws.credentials.provider"].startswith(
        "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider,"
    )
    assert conf["spark.hadoop.fs.s3.impl"] == "org.apache.hadoop.fs.s3a.S3AFileSystem"
    assert "spark.hadoop.fs.s3a.endpoint" not in s3a_conf(settings, {})  # AWS's default
    assert not any("secret" in key or "access.key" in key for key in conf)  # no keys in conf
    # The classic session gets them all (from the process environment).
    assert set(s3a_conf(settings)) <= set(local_session_conf(settings))


def test_build_session_gives_a_hive_session_in_its_home(spark, session_home: Path) -> None:
    """The suite's session (tests/conftest.py builds it with build_session)."""
    from pyspark.sql import functions as F

    conf = spark.sparkContext.getConf()
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    assert conf.get("spark.sql.catalogImplementation") == "hive"
    assert conf.get("spark.driver.host") == "127.0.0.1"
    assert conf.get("spark.ui.enabled") == "false"
    assert spark.conf.get("spark.sql.warehouse.dir").endswith(str(session_home / "warehouse"))
    # Python workers run this venv's Python without PYSPARK_PYTHON in our environment, and
    # building a session writes nothing into os.environ (issue 11).
    assert spark.sparkContext.pythonExec == os.environ.get("PYSPARK_PYTHON", sys.executable)
    worker = spark.range(1).select(F.udf(lambda _: sys.executable, "string")("id")).first()[0]
    assert worker == spark.sparkContext.pythonExec
    environment = dict(os.environ)
    settings = Settings(LAMBDA_ARCH_HOME=str(session_home), LAMBDA_ARCH_SPARK_MASTER="local[2]")
    assert build_session(settings, app_name="lambda-arch-tests") is spark
    assert dict(os.environ) == environment
    assert log4j_file(Settings(LAMBDA_ARCH_HOME=str(session_home))).exists()
    # A Hive table: its metadata in the home's Derby metastore, its folder in the warehouse.
    spark.sql("CREATE TABLE IF NOT EXISTS test_spark_probe (n INT) USING parquet")
    try:
        assert spark.catalog.tableExists("test_spark_probe")
        assert (session_home / "metastore" / "metastore_db").is_dir()
        assert (session_home / "warehouse" / "test_spark_probe").is_dir()
    finally:
        spark.sql("DROP TABLE test_spark_probe")


def test_a_small_job_is_not_queued_behind_a_long_one(spark, session_home: Path) -> None:
    """FAIR within the default pool: a micro-batch's short job, submitted while a long job has
    many tasks queued on the session's two cores, runs beside it. FIFO made it wait until every
    task of the long job had started: 24 x 0.5 s on 2 cores, 22 or more of them done by then."""
    assert scheduler_pools_file(Settings(LAMBDA_ARCH_HOME=str(session_home))).read_text() == (
        SCHEDULER_POOLS
    )
    context = spark.sparkContext
    assert context.getConf().get("spark.scheduler.mode") == "FAIR"

    def slow(value: int) -> int:
        import time

        time.sleep(0.5)
        return value

    def long_job() -> int:
        context.setJobGroup("long-job", "24 tasks of 0.5 s")
        return context.parallelize(range(24), 24).map(slow).count()

    tracker = context.statusTracker()
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(long_job)
        time.sleep(1.0)  # the long job's first tasks are running, the rest queued
        assert spark.range(4, numPartitions=2).count() == 4
        (job_id,) = tracker.getJobIdsForGroup("long-job")
        stages = [tracker.getStageInfo(s) for s in tracker.getJobInfo(job_id).stageIds]
        done_then = sum(stage.numCompletedTasks for stage in stages if stage is not None)
        assert running.result() == 24
    assert done_then <= 16, f"the short job waited for {done_then} of the long job's 24 tasks"
