"""The two scale-out settings: validation, and the Spark configuration the metastore URL selects."""

from __future__ import annotations

from pathlib import Path

import pytest

from lambda_arch.common.config import ConfigError, Settings
from lambda_arch.runtime import spark
from lambda_arch.runtime.spark_connect import server_conf

JDBC = "jdbc:postgresql://db.internal:5432/metastore?user=hive&password=s3cret"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LAMBDA_ARCH_DAGSTER_PG_URL", "postgresql://postgres@127.0.0.1:5432/dagster"),
        ("LAMBDA_ARCH_DAGSTER_PG_URL", "postgres://u:p@db:5432/d"),
        ("LAMBDA_ARCH_DAGSTER_PG_URL", "postgresql+psycopg2://u@db/d"),
        ("LAMBDA_ARCH_METASTORE_URL", "jdbc:postgresql://127.0.0.1:5432/metastore?user=postgres"),
    ],
)
def test_urls_are_accepted(
    env_home: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    settings = Settings.from_env()
    assert value in (settings.dagster_pg_url, settings.metastore_url)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LAMBDA_ARCH_DAGSTER_PG_URL", "mysql://u@db/dagster"),
        ("LAMBDA_ARCH_DAGSTER_PG_URL", "postgresql://db:5432"),
        ("LAMBDA_ARCH_METASTORE_URL", "postgresql://127.0.0.1/metastore"),
        ("LAMBDA_ARCH_METASTORE_URL", "jdbc:derby:;databaseName=x"),
    ],
)
def test_bad_urls_name_the_variable(
    env_home: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=f"^{variable}=.* is invalid: expected a PostgreSQL"):
        Settings.from_env()


def test_unset_keeps_derby(tmp_path: Path) -> None:
    conf = spark.local_session_conf(Settings(LAMBDA_ARCH_HOME=str(tmp_path)))
    assert conf["spark.hadoop.javax.jdo.option.ConnectionURL"].startswith("jdbc:derby:")
    assert "spark.driver.extraClassPath" not in conf


def test_the_metastore_url_configures_sessions_and_the_connect_server(tmp_path: Path) -> None:
    settings = Settings(
        LAMBDA_ARCH_HOME=str(tmp_path),
        LAMBDA_ARCH_METASTORE_URL=JDBC,
        LAMBDA_ARCH_SPARK_MASTER="spark://127.0.0.1:7077",
    )
    for conf in (spark.local_session_conf(settings), server_conf(settings, 15002)):
        assert conf["spark.hadoop.javax.jdo.option.ConnectionURL"] == JDBC
        assert conf["spark.hadoop.javax.jdo.option.ConnectionDriverName"] == "org.postgresql.Driver"
        assert conf["spark.hadoop.javax.jdo.option.ConnectionUserName"] == "hive"
        assert conf["spark.hadoop.javax.jdo.option.ConnectionPassword"] == "s3cret"
        assert conf["spark.sql.hive.metastore.jars"] == "builtin"
        assert conf["spark.hadoop.hive.metastore.schema.verification"] == "false"
        assert conf["spark.hadoop.datanucleus.schema.autoCreateTables"] == "true"
        assert conf["spark.driver.extraClassPath"] == str(spark.POSTGRES_JDBC_JAR)


def test_the_jdbc_jar_and_the_s3a_jars_share_the_driver_class_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jars = [tmp_path / "hadoop-aws-3.3.1.jar", tmp_path / "aws-java-sdk-bundle-1.11.901.jar"]
    monkeypatch.setattr(spark, "s3a_jars", lambda: jars)
    settings = Settings(
        LAMBDA_ARCH_HOME=str(tmp_path),
        LAMBDA_ARCH_METASTORE_URL=JDBC,
        LAMBDA_ARCH_WAREHOUSE="s3a://bucket/lake",
        LAMBDA_ARCH_SPARK_MASTER="local[2]",
    )
    class_path = spark.local_session_conf(settings)["spark.driver.extraClassPath"].split(":")
    assert class_path == [str(spark.POSTGRES_JDBC_JAR), *map(str, jars)]


def test_a_missing_jdbc_jar_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spark, "POSTGRES_JDBC_JAR", tmp_path / "absent.jar")
    settings = Settings(LAMBDA_ARCH_HOME=str(tmp_path), LAMBDA_ARCH_METASTORE_URL=JDBC)
    with pytest.raises(spark.MetastoreJarError, match="libpostgresql-jdbc-java"):
        spark.catalog_conf(settings)
