"""SparkSession construction: local mode by default, any master or Spark Connect URL by config."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lambda_arch.config import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def spark_environment() -> dict[str, str]:
    """Process environment Spark needs on a laptop: loopback driver, the venv's Python workers."""
    return {
        "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
        "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable),
        "PYSPARK_DRIVER_PYTHON": os.environ.get("PYSPARK_DRIVER_PYTHON", sys.executable),
    }


def local_session_conf(settings: Settings, *, ui: bool = False) -> dict[str, str]:
    """Spark configuration of a classic (JVM-in-process) session for these settings."""
    metastore = settings.home / "metastore"
    return {
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.ui.enabled": "true" if ui else "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": os.environ.get("LAMBDA_ARCH_SHUFFLE_PARTITIONS", "8"),
        "spark.sql.warehouse.dir": settings.warehouse,
        "spark.sql.streaming.stateStore.providerClass": (
            "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
        ),
        "spark.driver.extraJavaOptions": f"-Dderby.system.home={metastore}",
        "javax.jdo.option.ConnectionURL": (
            f"jdbc:derby:;databaseName={metastore / 'metastore_db'};create=true"
        ),
    }


def build_session(
    settings: Settings, *, app_name: str = "lambda-arch", ui: bool = False
) -> SparkSession:
    """A SparkSession: Spark Connect when SPARK_REMOTE is set, else classic on the master URL."""
    os.environ.update(spark_environment())
    from pyspark.sql import SparkSession

    if settings.spark_remote:
        return SparkSession.builder.remote(settings.spark_remote).appName(app_name).getOrCreate()
    Path(settings.home / "metastore").mkdir(parents=True, exist_ok=True)
    builder = SparkSession.builder.master(settings.spark_master).appName(app_name)
    for key, value in local_session_conf(settings, ui=ui).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()
