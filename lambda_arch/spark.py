"""SparkSession construction: local mode by default, any master or Spark Connect URL by config.

Classic sessions and the embedded Spark Connect server (lambda_arch.spark_connect) share one
configuration: the Hive catalog with an embedded Derby metastore under `$LAMBDA_ARCH_HOME/metastore`,
the warehouse from the settings, UTC, and the RocksDB state store. Derby lets one JVM at a time
open a metastore folder, which is why `lambda-arch up` runs one Connect server that owns it.
"""

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


def metastore_dir(settings: Settings) -> Path:
    """Folder of the embedded Derby metastore (and derby.log)."""
    return settings.home / "metastore"


def spark_uri(location: str) -> str:
    """A lake location as Spark's Hadoop file systems name it: s3:// becomes s3a://."""
    return "s3a://" + location.removeprefix("s3://") if location.startswith("s3://") else location


def catalog_conf(settings: Settings) -> dict[str, str]:
    """SQL, catalog and state-store configuration shared by classic sessions and the Connect server."""
    metastore = metastore_dir(settings)
    return {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": os.environ.get("LAMBDA_ARCH_SHUFFLE_PARTITIONS", "8"),
        "spark.sql.warehouse.dir": spark_uri(settings.warehouse),
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.streaming.stateStore.providerClass": (
            "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
        ),
        # derby.system.home also places derby.log there instead of the working directory.
        "spark.driver.extraJavaOptions": f"-Dderby.system.home={metastore}",
        # Spark hands every spark.hadoop.* entry to the embedded Hive client's configuration.
        "spark.hadoop.javax.jdo.option.ConnectionURL": (
            f"jdbc:derby:;databaseName={metastore / 'metastore_db'};create=true"
        ),
    }


def local_session_conf(settings: Settings, *, ui: bool = False) -> dict[str, str]:
    """Spark configuration of a classic (JVM-in-process) session for these settings."""
    return {
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.ui.enabled": "true" if ui else "false",
        **catalog_conf(settings),
    }


def build_session(
    settings: Settings, *, app_name: str = "lambda-arch", ui: bool = False
) -> SparkSession:
    """A SparkSession: Spark Connect when SPARK_REMOTE is set or `lambda-arch up` runs its
    Connect server for this home, else classic (Hive catalog) on the master URL.

    Derby admits one JVM per metastore folder: a second classic session on the same
    LAMBDA_ARCH_HOME in another process fails while the first runs.
    """
    os.environ.update(spark_environment())
    from pyspark.sql import SparkSession

    remote = settings.spark_remote
    if remote is None:
        from lambda_arch.spark_connect import running_server_url

        # Next to `lambda-arch up`, its Connect server owns the metastore: share it.
        remote = running_server_url(settings)
    if remote:
        return SparkSession.builder.remote(remote).appName(app_name).getOrCreate()
    metastore_dir(settings).mkdir(parents=True, exist_ok=True)
    builder = SparkSession.builder.master(settings.spark_master).appName(app_name)
    for key, value in local_session_conf(settings, ui=ui).items():
        builder = builder.config(key, value)
    return builder.enableHiveSupport().getOrCreate()
