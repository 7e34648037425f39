"""Typed settings read from the environment (CONTRACT section 8), with errors that name the variable.

Every value has a default that runs the embedded stack on one machine; scale-out is a matter of
setting variables (a Kafka cluster, a Spark master or Connect URL, an S3 warehouse), never of code.
"""

from __future__ import annotations

import logging
import re
from datetime import date
from functools import cache, cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_HOST_PORT = re.compile(r"^[A-Za-z0-9._\-\[\]:]+:\d{1,5}$")
_URL = re.compile(r"^https?://\S+$")

# What each variable expects, in words, for error messages.
EXPECTED: dict[str, str] = {
    "LAMBDA_ARCH_HOME": "a folder path",
    "KAFKA_BOOTSTRAP_SERVERS": "comma-separated host:port pairs, e.g. kafka1:9092,kafka2:9092",
    "LAMBDA_ARCH_TOPIC": "a Kafka topic name of 1-249 characters from [A-Za-z0-9._-]",
    "LAMBDA_ARCH_FAIL_ON_DATA_LOSS": "true or false",
    "LAMBDA_ARCH_DATABASE": "a SQL identifier: a letter or _, then letters, digits or _",
    "LAMBDA_ARCH_WAREHOUSE": "a folder path or an s3://, s3a:// URI",
    "LAMBDA_ARCH_SPARK_MASTER": "a Spark master URL, e.g. local[*], local[4] or spark://host:7077",
    "SPARK_REMOTE": "a Spark Connect URL, e.g. sc://host:15002",
    "LAMBDA_ARCH_START_DATE": "a date in the form YYYY-MM-DD",
    "LAMBDA_ARCH_ALLOWED_LATENESS_MIN": "a whole number of minutes >= 0",
    "LAMBDA_ARCH_MAX_EVENTS_PER_BATCH": "a whole number >= 1",
    "LAMBDA_ARCH_ALERT_WEBHOOK": "an http:// or https:// URL",
    "LAMBDA_ARCH_ALERT_MIN_SEVERITY": "WARN or ERROR",
    "LAMBDA_ARCH_BROKER_PORT": "a TCP port number from 1 to 65535",
    "LAMBDA_ARCH_BROKER_STORAGE": "memory or an s3://BUCKET/ URI",
    "LAMBDA_ARCH_DAGSTER_PORT": "a TCP port number from 1 to 65535",
    "LAMBDA_ARCH_SPARK_CONNECT_PORT": "a TCP port number from 1 to 65535",
    "LAMBDA_ARCH_TOPIC_PARTITIONS": "a whole number from 1 to 1024",
    "LAMBDA_ARCH_MAX_CONCURRENT_RUNS": "a whole number >= 1",
    "LAMBDA_ARCH_MAX_SPARK_RUNS": "a whole number >= 1",
    "LAMBDA_ARCH_QUARANTINE_WARN_RATIO": "a ratio from 0 to 1, e.g. 0.01",
    "LAMBDA_ARCH_QUARANTINE_ERROR_RATIO": "a ratio from 0 to 1, e.g. 0.05",
    "LAMBDA_ARCH_SPEED_FRESHNESS_MIN": "a whole number of minutes >= 1",
    "LAMBDA_ARCH_QUALITY_MAX_ROWS": "a whole number >= 1",
    "LAMBDA_ARCH_SPEED_STREAM_S": "a whole number of seconds >= 0 (0: no continuous views)",
    "LAMBDA_ARCH_SPEED_TRIGGER_S": "a number of seconds from 0.1 to 600, e.g. 2",
    "LAMBDA_ARCH_SHUFFLE_PARTITIONS": "a whole number from 1 to 10000",
    "LAMBDA_ARCH_SPEED_RETENTION_HOURS": "a whole number of hours >= 0",
    "LAMBDA_ARCH_QUARANTINE_RETENTION_DAYS": "a whole number of days >= 1",
    "LAMBDA_ARCH_LOG_MAX_MB": "a number of megabytes > 0, e.g. 50",
    "LAMBDA_ARCH_LOG_KEEP": "a whole number of rotated files from 1 to 100",
    "LAMBDA_ARCH_DAGSTER_PG_URL": "a PostgreSQL URL, e.g. postgresql://user:password@host:5432/dagster",
    "LAMBDA_ARCH_VIEWS_FILE": "the path of a TOML file of [views.NAME] tables",
    "LAMBDA_ARCH_METASTORE_URL": (
        "a PostgreSQL JDBC URL, e.g. jdbc:postgresql://host:5432/metastore?user=hive"
    ),
}

Port = Annotated[int, Field(ge=1, le=65535)]


class ConfigError(ValueError):
    """A configuration variable has a value that does not fit; the message names it."""


class Settings(BaseSettings):
    """All configuration of lambda-arch, from environment variables (empty counts as unset)."""

    model_config = SettingsConfigDict(
        case_sensitive=True, env_ignore_empty=True, extra="ignore", frozen=True
    )

    home: Path = Field(Path(".lambda-arch"), validation_alias="LAMBDA_ARCH_HOME")
    kafka_bootstrap_servers: str | None = Field(None, validation_alias="KAFKA_BOOTSTRAP_SERVERS")
    topic: str = Field("play-events", validation_alias="LAMBDA_ARCH_TOPIC")
    # Hive database of the lake's tables: another name lets teams or test runs share a metastore.
    database: str = Field(
        "lambda_arch",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$",
        validation_alias="LAMBDA_ARCH_DATABASE",
    )
    warehouse_setting: str | None = Field(None, validation_alias="LAMBDA_ARCH_WAREHOUSE")
    spark_master: str = Field("local[*]", validation_alias="LAMBDA_ARCH_SPARK_MASTER")
    spark_remote: str | None = Field(None, validation_alias="SPARK_REMOTE")
    start_date: date = Field(date(2026, 1, 1), validation_alias="LAMBDA_ARCH_START_DATE")
    allowed_lateness_min: int = Field(
        10, ge=0, le=7 * 24 * 60, validation_alias="LAMBDA_ARCH_ALLOWED_LATENESS_MIN"
    )
    max_events_per_batch: int = Field(
        500_000, ge=1, validation_alias="LAMBDA_ARCH_MAX_EVENTS_PER_BATCH"
    )
    # An event_time more than this many minutes ahead of its Kafka record timestamp is
    # quarantined as "event_time in the future" (CONTRACT section 3): it never moves a watermark.
    max_clock_skew_min: int = Field(
        5, ge=0, le=7 * 24 * 60, validation_alias="LAMBDA_ARCH_MAX_CLOCK_SKEW_MIN"
    )
    alert_webhook: str | None = Field(None, validation_alias="LAMBDA_ARCH_ALERT_WEBHOOK")
    # Failed checks below this severity are not alerted on (failed runs always are).
    alert_min_severity: Literal["WARN", "ERROR"] = Field(
        "WARN", validation_alias="LAMBDA_ARCH_ALERT_MIN_SEVERITY"
    )
    # A checkpoint behind the broker's earliest offset (retention, a restarted memory broker)
    # fails the speed runs; false makes them go on from the earliest offset and report the gap.
    fail_on_data_loss: bool = Field(True, validation_alias="LAMBDA_ARCH_FAIL_ON_DATA_LOSS")
    # Additions to CONTRACT section 8 for the embedded stack (documented in the README).
    broker_port: Port = Field(9092, validation_alias="LAMBDA_ARCH_BROKER_PORT")
    broker_storage: str = Field("memory", validation_alias="LAMBDA_ARCH_BROKER_STORAGE")
    dagster_port: Port = Field(3000, validation_alias="LAMBDA_ARCH_DAGSTER_PORT")
    # The embedded Spark Connect server `up` starts when SPARK_REMOTE is not set.
    spark_connect_port: Port = Field(15002, validation_alias="LAMBDA_ARCH_SPARK_CONNECT_PORT")
    topic_partitions: int = Field(8, ge=1, le=1024, validation_alias="LAMBDA_ARCH_TOPIC_PARTITIONS")
    max_concurrent_runs: int = Field(4, ge=1, validation_alias="LAMBDA_ARCH_MAX_CONCURRENT_RUNS")
    max_spark_runs: int = Field(1, ge=1, validation_alias="LAMBDA_ARCH_MAX_SPARK_RUNS")
    # Data quality (assets/checks.py): quarantined share of a landing run that warns / errs.
    quarantine_warn_ratio: float = Field(
        0.01, ge=0, le=1, validation_alias="LAMBDA_ARCH_QUARANTINE_WARN_RATIO"
    )
    quarantine_error_ratio: float = Field(
        0.05, ge=0, le=1, validation_alias="LAMBDA_ARCH_QUARANTINE_ERROR_RATIO"
    )
    # A speed asset not updated for this long fails its freshness check (read at load time).
    speed_freshness_min: int = Field(15, ge=1, validation_alias="LAMBDA_ARCH_SPEED_FRESHNESS_MIN")
    # Most rows a Great Expectations check brings to the driver; larger scopes are sampled.
    quality_max_rows: int = Field(200_000, ge=1, validation_alias="LAMBDA_ARCH_QUALITY_MAX_ROWS")
    # > 0: trending and discovery also run as continuous queries (views_stream_job, kept running
    # by a sensor) of this many seconds per run, a micro-batch every speed_trigger_s seconds and
    # the serving store refreshed after each; 0: only availableNow runs (speed_job).
    speed_stream_s: int = Field(0, ge=0, validation_alias="LAMBDA_ARCH_SPEED_STREAM_S")
    speed_trigger_s: float = Field(
        2.0, ge=0.1, le=600, validation_alias="LAMBDA_ARCH_SPEED_TRIGGER_S"
    )
    # The sessions query's trigger in a continuous run: a session closes 30 minutes of event
    # time after its last event, so a slower trigger leaves the CPU to the count views.
    sessions_trigger_s: float = Field(
        30.0, ge=0.1, le=3600, validation_alias="LAMBDA_ARCH_SESSIONS_TRIGGER_S"
    )
    # spark.sql.shuffle.partitions of classic sessions and the embedded Connect server: Spark's
    # 200 makes hundreds of tiny tasks per micro-batch on a laptop; raise it on a cluster.
    shuffle_partitions: int = Field(
        8, ge=1, le=10_000, validation_alias="LAMBDA_ARCH_SHUFFLE_PARTITIONS"
    )
    # Bounded disk (README "Disk use"). A speed micro-batch's folder is removed once serving has
    # read it and every row of it is this many hours older than the batch watermark (0: as soon
    # as the batch layer covers it); the margin keeps the newest computed day comparable by the
    # speed-vs-batch check and answerable if that day is lost and recomputed.
    speed_retention_hours: int = Field(
        24, ge=0, le=24 * 366, validation_alias="LAMBDA_ARCH_SPEED_RETENTION_HOURS"
    )
    # Quarantine partitions (dt) older than this many days before today (UTC) are dropped.
    quarantine_retention_days: int = Field(
        30, ge=1, validation_alias="LAMBDA_ARCH_QUARANTINE_RETENTION_DAYS"
    )
    # Logs under logs_dir rotate past this size, keeping this many older files (name.log.1..K).
    log_max_mb: float = Field(50.0, gt=0, validation_alias="LAMBDA_ARCH_LOG_MAX_MB")
    log_keep: int = Field(3, ge=1, le=100, validation_alias="LAMBDA_ARCH_LOG_KEEP")
    # Scale-out of the state stores (CONTRACT section 8): Dagster's runs, events and schedules in
    # PostgreSQL instead of SQLite files, and the Hive metastore in PostgreSQL instead of Derby
    # (which admits one JVM), so that several drivers share one catalog.
    dagster_pg_url: str | None = Field(None, validation_alias="LAMBDA_ARCH_DAGSTER_PG_URL")
    metastore_url: str | None = Field(None, validation_alias="LAMBDA_ARCH_METASTORE_URL")
    # A TOML file of count views beyond the built-in ones (CONTRACT section 9).
    views_file: Path | None = Field(None, validation_alias="LAMBDA_ARCH_VIEWS_FILE")

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, value: str | None) -> str | None:
        if value is None:
            return None
        servers = [s.strip() for s in value.split(",")]
        if not servers or not all(_HOST_PORT.match(s) for s in servers):
            raise ValueError("not host:port pairs")
        return ",".join(servers)

    @field_validator("topic")
    @classmethod
    def _check_topic(cls, value: str) -> str:
        if not _TOPIC_NAME.match(value) or value in {".", ".."}:
            raise ValueError("not a topic name")
        return value

    @field_validator("warehouse_setting")
    @classmethod
    def _check_warehouse(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if "://" in value and not re.match(r"^s3a?://[^/\s]+(/\S*)?$", value):
            raise ValueError("not a folder or S3 URI")
        return value.rstrip("/") if "://" in value else value

    @field_validator("spark_master")
    @classmethod
    def _check_master(cls, value: str) -> str:
        if not re.match(r"^(local(\[(\*|\d+)(,\d+)?\])?|(spark|k8s|yarn|mesos)(://\S+)?)$", value):
            raise ValueError("not a Spark master URL")
        return value

    @field_validator("spark_remote")
    @classmethod
    def _check_remote(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^sc://\S+$", value):
            raise ValueError("not a Spark Connect URL")
        return value

    @field_validator("dagster_pg_url")
    @classmethod
    def _check_pg_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^postgres(ql)?(\+psycopg2)?://\S+/\w\S*$", value):
            raise ValueError("not a PostgreSQL URL")
        return value

    @field_validator("metastore_url")
    @classmethod
    def _check_metastore_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^jdbc:postgresql://\S+/\w\S*$", value):
            raise ValueError("not a PostgreSQL JDBC URL")
        return value

    @field_validator("alert_webhook")
    @classmethod
    def _check_webhook(cls, value: str | None) -> str | None:
        if value is not None and not _URL.match(value):
            raise ValueError("not a URL")
        return value

    @field_validator("broker_storage")
    @classmethod
    def _check_storage(cls, value: str) -> str:
        if value != "memory" and not re.match(r"^s3://[^/\s]+/?$", value):
            raise ValueError("not memory or s3://BUCKET/")
        return value

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    # Derived locations -------------------------------------------------------------------------

    @property
    def embedded_broker(self) -> bool:
        """True when no external Kafka is configured and `up` runs the embedded broker."""
        return self.kafka_bootstrap_servers is None

    @property
    def bootstrap_servers(self) -> str:
        """The Kafka bootstrap servers to talk to: the external cluster or the embedded broker."""
        return self.kafka_bootstrap_servers or f"127.0.0.1:{self.broker_port}"

    @cached_property
    def warehouse(self) -> str:
        """Lake root: a local folder (absolute) or an S3 URI."""
        if self.warehouse_setting is None:
            return str(self.home / "warehouse")
        if "://" in self.warehouse_setting:
            return self.warehouse_setting
        return str(Path(self.warehouse_setting).expanduser().absolute())

    @property
    def warehouse_is_s3(self) -> bool:
        return self.warehouse.startswith(("s3://", "s3a://"))

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def log_max_bytes(self) -> int:
        return int(self.log_max_mb * 1024 * 1024)

    @property
    def run_dir(self) -> Path:
        """PID files of the processes `lambda-arch up` owns."""
        return self.home / "run"

    @property
    def checkpoints_dir(self) -> Path:
        return self.home / "checkpoints"

    @property
    def topic_ends_file(self) -> Path:
        """The ledger of the topic's end offsets per incarnation (lambda_arch.ingest.incarnations)."""
        return self.home / "broker" / "topic-ends.json"

    @classmethod
    def from_env(cls) -> Settings:
        """Read the settings from the environment, raising ConfigError naming the bad variable."""
        try:
            return cls()
        except ValidationError as error:
            raise ConfigError(_describe(error)) from None


def _describe(error: ValidationError) -> str:
    first: dict[str, Any] = error.errors()[0]
    variable = str(first["loc"][0]) if first.get("loc") else "configuration"
    value = first.get("input")
    shown = f"{value!r}" if isinstance(value, str) else "the value"
    expected = EXPECTED.get(variable, first.get("msg", "a valid value"))
    return f"{variable}={shown} is invalid: expected {expected}"


def load_settings() -> Settings:
    """The settings of this process (read once per call; cheap)."""
    return Settings.from_env()


def settings_or_defaults() -> tuple[Settings, ConfigError | None]:
    """The settings with every invalid variable replaced by its default, and the first error.

    For building the Dagster definitions (lambda_arch.definitions), which must load whatever the
    environment holds: a bad variable then shows where someone looks, as the clear ConfigError
    of every run and sensor evaluation (they read `load_settings()`), instead of as a code
    location that fails to load. Only the values the definitions need up front use it.
    """
    try:
        return Settings.from_env(), None
    except ConfigError as error:
        first = error
    # Values given to the constructor take precedence over the environment (pydantic-settings):
    # pin each offending variable to its field's default until the rest validates.
    by_alias = {str(f.validation_alias): name for name, f in Settings.model_fields.items()}
    defaults: dict[str, Any] = {}
    while True:
        try:
            return Settings(**defaults), first
        except ValidationError as error:
            bad = {str(e["loc"][0]) for e in error.errors() if e.get("loc")} - defaults.keys()
            if not bad or not bad <= by_alias.keys():
                raise first from None  # not a single variable's fault: nothing to fall back on
            for alias in bad:
                defaults[alias] = Settings.model_fields[by_alias[alias]].default


@cache
def definition_settings() -> Settings:
    """The settings the Dagster definitions are built from, read once per process, never raising.

    Dagster fixes a few values when the code location loads (the first daily partition, the speed
    freshness window); everything else is read by each run and sensor evaluation. An invalid
    variable here is logged and replaced by its default, so the location still loads and the
    runs and sensors report the variable by name (settings_or_defaults).
    """
    settings, error = settings_or_defaults()
    if error is not None:
        logging.getLogger(__name__).warning(
            "%s; the Dagster definitions load with its default and every run and sensor "
            "evaluation fails with this error until it is fixed",
            error,
        )
    return settings
