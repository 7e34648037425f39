"""SparkSession construction: local mode by default, any master or Spark Connect URL by config.

Classic sessions and the embedded Spark Connect server (lambda_arch.runtime.spark_connect) share one
configuration: the Hive catalog with an embedded Derby metastore under `$LAMBDA_ARCH_HOME/metastore`,
the warehouse from the settings, UTC, and the RocksDB state store. Derby lets one JVM at a time
open a metastore folder, which is why `lambda-arch up` runs one Connect server that owns it.

With the warehouse on S3 both also get Hadoop's s3a connector (`s3a_conf`). Spark 4.3 ships
Hadoop 3.5 without hadoop-aws, and no installable package has a hadoop-aws matching 3.5: the only
jars found are hadoop-aws 3.3.1 and aws-java-sdk-bundle 1.11.901 inside sagemaker-pyspark 1.4.5
(installed by `make install` without its dependencies, as it pins pyspark 3.3). They work once the
s3a settings Hadoop 3.5 writes as durations ("60s") are given as the plain numbers 3.3.1 parses,
and the credential providers name SDK v1 classes (3.5's defaults are SDK v2 classes).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from lambda_arch.common.config import Settings
from lambda_arch.common.storage import hadoop_uri, s3_endpoint, s3_region
from lambda_arch.runtime.processes import pid_file_owner

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


# HotSpot leaves methods over 8000 bytes of bytecode to the interpreter; the generated code of
# the event parse (spark_schema.parse_events) is over that, and interpreted it costs about
# twice the CPU per record. Local mode runs tasks in the driver JVM, clusters in executors.
JIT_OPTIONS = "-XX:-DontCompileHugeMethods"


def spark_environment() -> dict[str, str]:
    """Environment of a Spark process we start (the Connect server): loopback, this venv's
    Python for its workers. Never written into our own os.environ (see build_session)."""
    return {
        "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
        "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable),
        "PYSPARK_DRIVER_PYTHON": os.environ.get("PYSPARK_DRIVER_PYTHON", sys.executable),
    }


def metastore_dir(settings: Settings) -> Path:
    """Folder of the embedded Derby metastore (and derby.log)."""
    return settings.home / "metastore"


def catalog_conf(settings: Settings) -> dict[str, str]:
    """SQL, catalog and state-store configuration shared by classic sessions and the Connect server."""
    metastore = metastore_dir(settings)
    return {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(settings.shuffle_partitions),
        "spark.sql.warehouse.dir": hadoop_uri(settings.warehouse),
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.streaming.stateStore.providerClass": (
            "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
        ),
        # derby.system.home also places derby.log there instead of the working directory.
        "spark.driver.extraJavaOptions": f"-Dderby.system.home={metastore} {JIT_OPTIONS}",
        "spark.executor.extraJavaOptions": JIT_OPTIONS,
        # Spark hands every spark.hadoop.* entry to the embedded Hive client's configuration.
        "spark.hadoop.javax.jdo.option.ConnectionURL": (
            f"jdbc:derby:;databaseName={metastore / 'metastore_db'};create=true"
        ),
        **metastore_conf(settings),
    }


# Debian's libpostgresql-jdbc-java (`make postgres`): the JDBC driver of a PostgreSQL metastore.
POSTGRES_JDBC_JAR = Path("/usr/share/java/postgresql.jar")


def metastore_conf(settings: Settings) -> dict[str, str]:
    """The Hive metastore in PostgreSQL when LAMBDA_ARCH_METASTORE_URL is set (empty otherwise).

    Spark's built-in Hive client (2.3) talks to it through DataNucleus, which creates the schema
    on first use; unlike Derby, any number of drivers (local sessions, the Connect server, cluster
    drivers) share it at once. Only the driver opens the metastore, so the JDBC jar goes on the
    driver's class path (the built-in client loads classes from Spark's own loader).
    """
    url = settings.metastore_url
    if url is None:
        return {}
    if not POSTGRES_JDBC_JAR.is_file():
        raise MetastoreJarError(
            f"LAMBDA_ARCH_METASTORE_URL is set but the PostgreSQL JDBC driver {POSTGRES_JDBC_JAR} "
            "is missing: `apt-get install libpostgresql-jdbc-java` (or `make postgres`)"
        )
    query = parse_qs(urlsplit(url.removeprefix("jdbc:")).query)
    conf = {
        "spark.sql.hive.metastore.jars": "builtin",
        "spark.driver.extraClassPath": str(POSTGRES_JDBC_JAR),
        "spark.hadoop.javax.jdo.option.ConnectionURL": url,
        "spark.hadoop.javax.jdo.option.ConnectionDriverName": "org.postgresql.Driver",
        # DataNucleus creates the schema lazily, each table when first used, in a connection of
        # its own. autoCreateAll would also add foreign keys then, and on PostgreSQL the ALTER
        # TABLE ... ADD CONSTRAINT waits forever for the metastore's open transaction that holds
        # rows of the referenced table (seen on the first CREATE TABLE: TBL_PRIVS -> TBLS).
        # Tables and columns without constraints never wait.
        "spark.hadoop.datanucleus.schema.autoCreateAll": "false",
        "spark.hadoop.datanucleus.schema.autoCreateTables": "true",
        "spark.hadoop.datanucleus.schema.autoCreateColumns": "true",
        "spark.hadoop.datanucleus.schema.autoCreateConstraints": "false",
        "spark.hadoop.hive.metastore.schema.verification": "false",
    }
    # Hive's defaults (APP/mine) would otherwise be sent as the user and password.
    if "user" in query:
        conf["spark.hadoop.javax.jdo.option.ConnectionUserName"] = query["user"][0]
    if "password" in query:
        conf["spark.hadoop.javax.jdo.option.ConnectionPassword"] = query["password"][0]
    return conf


class MetastoreJarError(RuntimeError):
    """The metastore is on PostgreSQL but its JDBC driver jar is missing."""


# S3 through Hadoop's s3a connector ---------------------------------------------------------------

S3A_JARS_PACKAGE = "sagemaker_pyspark"  # the pip package whose jars/ folder holds them
# Where `make install` puts that package (`uv pip install --no-deps --target`): outside
# site-packages, as it pins pyspark 3.3 and would otherwise break `pip check` (and its Python
# code does not work with pyspark 4 anyway); only its jars are used.
S3A_JARS_TARGET = "s3a-jars"
S3A_JAR_PREFIXES = ("hadoop-aws-", "aws-java-sdk-bundle-")
# Hadoop 3.5's core-default.xml writes these as durations; hadoop-aws 3.3.1 reads them with
# getInt/getLong and fails on "60s". Values are 3.5's defaults in the units 3.3.1 expects.
S3A_NUMERIC_OVERRIDES: dict[str, str] = {
    "fs.s3a.connection.establish.timeout": "30000",  # ms (3.5: 30s)
    "fs.s3a.connection.timeout": "200000",  # ms (3.5: 200s)
    "fs.s3a.threads.keepalivetime": "60",  # s (3.5: 60s)
    "fs.s3a.multipart.purge.age": "86400",  # s (3.5: 24h)
}
# 3.5's default provider list names AWS SDK v2 classes that the v1 bundle lacks. Keys given as
# fs.s3a.access.key/secret.key first, then the SDK's chain: environment, profile, container and
# instance credentials. Keys never go into Spark's configuration (command lines, logs) by us.
S3A_CREDENTIAL_PROVIDERS = (
    "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider,"
    "com.amazonaws.auth.DefaultAWSCredentialsProviderChain"
)


class S3JarsError(RuntimeError):
    """The warehouse is on S3 but the s3a jars are not installed."""


def _s3a_jar_folders() -> list[Path]:
    """Candidate jars/ folders of sagemaker-pyspark: `<venv>/s3a-jars` (make install), then an
    importable copy (found without importing it)."""
    folders = [Path(sys.prefix) / S3A_JARS_TARGET / S3A_JARS_PACKAGE / "jars"]
    spec = importlib.util.find_spec(S3A_JARS_PACKAGE)
    if spec is not None:
        folders += [Path(location) / "jars" for location in spec.submodule_search_locations or []]
    return folders


def s3a_jars() -> list[Path]:
    """hadoop-aws 3.3.1 and aws-java-sdk-bundle 1.11.901 from sagemaker-pyspark (its other,
    newer SDK jars would clash with the bundle)."""
    for folder in _s3a_jar_folders():
        jars = [max(found) for p in S3A_JAR_PREFIXES if (found := list(folder.glob(f"{p}*.jar")))]
        if len(jars) == len(S3A_JAR_PREFIXES):
            return jars
    raise S3JarsError(
        "LAMBDA_ARCH_WAREHOUSE is an S3 URI but Spark's s3a jars (hadoop-aws, aws-java-sdk-bundle) "
        "are missing: run `make install`, or `uv pip install --no-deps --target "
        f"{Path(sys.prefix) / S3A_JARS_TARGET} sagemaker-pyspark==1.4.5`"
    )


def s3a_conf(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Spark configuration for s3a:// when the warehouse is on S3 (empty otherwise, so local
    lakes pay nothing for the 190 MB SDK bundle).

    The endpoint comes from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (an S3-compatible server:
    path-style addressing, TLS as the URL says), else the regional AWS endpoint of AWS_REGION.
    """
    if not settings.warehouse_is_s3:
        return {}
    jars = [str(jar) for jar in s3a_jars()]
    conf = {
        # Local mode runs tasks in the driver's JVM: its class path serves them, whereas
        # spark.jars would copy the 190 MB bundle into every session's work folder on the
        # first task (measured here: a few seconds on the first job). A cluster needs spark.jars,
        # which ships the jars to its executors.
        **(
            {"spark.driver.extraClassPath": os.pathsep.join(jars)}
            if settings.spark_master.startswith("local")
            else {"spark.jars": ",".join(jars)}
        ),
        "spark.hadoop.fs.s3a.aws.credentials.provider": S3A_CREDENTIAL_PROVIDERS,
        # s3:// paths written by other tools resolve to the same connector.
        "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        **{f"spark.hadoop.{key}": value for key, value in S3A_NUMERIC_OVERRIDES.items()},
    }
    endpoint, region = s3_endpoint(environ), s3_region(environ)
    if endpoint:
        conf["spark.hadoop.fs.s3a.endpoint"] = endpoint
        # Servers such as moto or MinIO have no per-bucket host names.
        conf["spark.hadoop.fs.s3a.path.style.access"] = "true"
        conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(
            endpoint.startswith("https://")
        ).lower()
    elif region:
        # hadoop-aws 3.3.1 signs for the region its endpoint names (default: us-east-1).
        conf["spark.hadoop.fs.s3a.endpoint"] = f"s3.{region}.amazonaws.com"
    return conf


# Spark's INFO logs every query: keep warnings, plus the Connect server's start and stop lines.
LOG4J2_PROPERTIES = """\
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
logger.server.name = org.apache.spark.sql.connect.service.SparkConnectServer
logger.server.level = info
logger.service.name = org.apache.spark.sql.connect.service.SparkConnectService
logger.service.level = info
# Hive's metastore logs every ADD PARTITION as a warning.
logger.hivelog.name = hive.log
logger.hivelog.level = error
# The embedded metastore's start-up chatter (schema version, missing default database).
logger.objectstore.name = org.apache.hadoop.hive.metastore.ObjectStore
logger.objectstore.level = error
logger.hiveconf.name = org.apache.hadoop.hive.conf.HiveConf
logger.hiveconf.level = error
logger.sessionstate.name = org.apache.hadoop.hive.ql.session.SessionState
logger.sessionstate.level = error
logger.nativecode.name = org.apache.hadoop.util.NativeCodeLoader
logger.nativecode.level = error
# The Connect server logs INVALID_CURSOR.DISCONNECTED with a stack trace when an execution's
# response sender gets detached (its client released or reattached the execution; seen right
# after "Got detached from opId=..." warnings, in the foreachBatch worker's queries, hundreds
# per replay on a loaded machine, never on an idle one): the client side goes on without
# error. ErrorUtils logs it "during: async-grpc-response-sender"; failed queries are logged
# "during: execute" and stay in the log.
logger.connecterrors.name = org.apache.spark.sql.connect.utils.ErrorUtils
logger.connecterrors.level = warn
logger.connecterrors.filter.cursor.type = RegexFilter
logger.connecterrors.filter.cursor.regex = Spark Connect RPC error during: async-grpc-response-sender[.].*
logger.connecterrors.filter.cursor.onMatch = DENY
logger.connecterrors.filter.cursor.onMismatch = NEUTRAL
"""


def log4j_file(settings: Settings) -> Path:
    return settings.home / "spark" / "log4j2.properties"


def write_log4j(settings: Settings) -> Path:
    """Write the JVM's log configuration (LOG4J2_PROPERTIES) where local_session_conf points."""
    return _write_if_changed(log4j_file(settings), LOG4J2_PROPERTIES)


def _write_if_changed(path: Path, text: str) -> Path:
    """A configuration file the JVM reads, (re)written when missing or different."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


# Spark's FIFO scheduler runs a job's stages before those of every later job: a small counts
# micro-batch waited for all queued tasks of a sessions batch or a batch day on the same driver
# (the Connect server runs them all). FAIR within the one default pool gives each running stage
# its share of the cores, so a micro-batch's few short tasks start at once.
SCHEDULER_POOLS = """<?xml version="1.0"?>
<allocations>
  <pool name="default">
    <schedulingMode>FAIR</schedulingMode>
    <weight>1</weight>
    <minShare>0</minShare>
  </pool>
</allocations>
"""


def scheduler_pools_file(settings: Settings) -> Path:
    return settings.home / "spark" / "fairscheduler.xml"


def write_scheduler_pools(settings: Settings) -> Path:
    """Write the scheduler's pools (SCHEDULER_POOLS) where local_session_conf points."""
    return _write_if_changed(scheduler_pools_file(settings), SCHEDULER_POOLS)


def local_session_conf(settings: Settings, *, ui: bool = False) -> dict[str, str]:
    """Spark configuration of a classic (JVM-in-process) session for these settings."""
    catalog, s3a = catalog_conf(settings), s3a_conf(settings)
    conf = {
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.ui.enabled": "true" if ui else "false",
        # Progress bars belong to a terminal, not to Dagster's captured logs.
        "spark.ui.showConsoleProgress": "false",
        "spark.scheduler.mode": "FAIR",
        "spark.scheduler.allocation.file": str(scheduler_pools_file(settings)),
        **catalog,
        **s3a,
    }
    # Both may put jars on the driver's class path (the metastore's JDBC driver, s3a locally).
    key = "spark.driver.extraClassPath"
    if class_path := [part[key] for part in (catalog, s3a) if key in part]:
        conf[key] = os.pathsep.join(class_path)
    conf["spark.driver.extraJavaOptions"] += (
        f" -Dlog4j2.configurationFile=file:{log4j_file(settings)}"
    )
    return conf


# Where the Connect server of a home answers. The client side lives here, with the session
# builder that needs it; the server process (lambda_arch.runtime.spark_connect) builds on this
# module's configuration, so the dependency runs one way only.
CONNECT_SERVER_NAME = "spark-connect"  # `up` names its log and PID file after it


def connect_url(port: int) -> str:
    """The Spark Connect URL of a server on this machine's loopback port."""
    return f"sc://127.0.0.1:{port}"


def running_server_url(settings: Settings) -> str | None:
    """The URL of the Connect server a `lambda-arch up` runs for this home, if one runs.

    Lets commands started next to `up` (run, trending, ...) share its JVM and metastore
    instead of failing on Derby's one-JVM lock.
    """
    if pid_file_owner(settings.run_dir / f"{CONNECT_SERVER_NAME}.pid") is None:
        return None
    return connect_url(settings.spark_connect_port)


def build_session(
    settings: Settings, *, app_name: str = "lambda-arch", ui: bool = False
) -> SparkSession:
    """A SparkSession: Spark Connect when SPARK_REMOTE is set or `lambda-arch up` runs its
    Connect server for this home, else classic (Hive catalog) on the master URL.

    Derby admits one JVM per metastore folder: a second classic session on the same
    LAMBDA_ARCH_HOME in another process fails while the first runs.

    The process environment is left alone. Every socket of a classic session binds
    spark.driver.bindAddress (127.0.0.1); only the web UI (ui=True) binds SPARK_LOCAL_IP, else
    0.0.0.0, and reads nothing else: the CLI entry point sets SPARK_LOCAL_IP for that.
    """
    from pyspark.sql import SparkSession

    remote = settings.spark_remote
    if remote is None:
        # Next to `lambda-arch up`, its Connect server owns the metastore: share it.
        remote = running_server_url(settings)
    if remote:
        return SparkSession.builder.remote(remote).appName(app_name).getOrCreate()
    metastore_dir(settings).mkdir(parents=True, exist_ok=True)
    write_log4j(settings)
    write_scheduler_pools(settings)
    builder = SparkSession.builder.master(settings.spark_master).appName(app_name)
    for key, value in local_session_conf(settings, ui=ui).items():
        builder = builder.config(key, value)
    session = builder.enableHiveSupport().getOrCreate()
    # The Python that runs UDFs and Python data sources (in local mode and on a cluster's
    # executors) is the SparkContext's pythonExec, which pyspark 4.3 takes from PYSPARK_PYTHON
    # alone ("python3" on PATH otherwise, without this venv's packages): spark.pyspark.python
    # does not reach it. Setting it here replaces writing PYSPARK_PYTHON into os.environ.
    session.sparkContext.pythonExec = spark_environment()["PYSPARK_PYTHON"]
    return session
