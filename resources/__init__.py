"""Dagster resources, configured from the environment (CONTRACT section 8).

Every value comes from the typed `Settings` (lambda_arch.common.config), read when a run or a
sensor evaluation uses the resource, never when the code location loads. Fields a deployment may
want to pin per code location (Kafka's bootstrap servers and topic, the Spark app name) are
resource fields whose `None` means "from Settings"; set them in the Definitions, as constants or
as `EnvVar(...)`, the way dagster-open-platform configures its resources.

Why not `EnvVar("KAFKA_BOOTSTRAP_SERVERS")` here, as dagster-open-platform does for its
credentials: every lambda-arch variable has a default (unset bootstrap servers mean the embedded
broker), and an EnvVar of an unset variable fails the run, so it would break the defaults; it
would also skip Settings' validation and its error naming the variable and what it expects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dagster import ConfigurableResource
from dagster_aws.s3 import S3Resource

from lambda_arch.common.config import Settings, load_settings
from lambda_arch.common.storage import check_bucket

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


class LambdaArchSettings(ConfigurableResource):
    """The process's lambda-arch settings, read from the environment when a run starts."""

    def get(self) -> Settings:
        return load_settings()


class KafkaResource(ConfigurableResource):
    """Where the play events live: bootstrap servers and topic (env unless overridden)."""

    bootstrap_servers: str | None = None
    topic: str | None = None

    def resolved_bootstrap_servers(self) -> str:
        return self.bootstrap_servers or load_settings().bootstrap_servers

    def resolved_topic(self) -> str:
        return self.topic or load_settings().topic


def s3_from_env() -> S3Resource:
    """dagster-aws's S3 resource as the project configures it: from the environment.

    Nothing is fixed at load time: boto3 reads the endpoint (AWS_ENDPOINT_URL_S3, then
    AWS_ENDPOINT_URL), region and credentials (keys, AWS_PROFILE, instance roles) when a run
    creates the client, as pyarrow and Spark's s3a (lambda_arch.runtime.spark.s3a_conf) do.
    """
    return S3Resource()


def check_warehouse_bucket(s3: S3Resource, settings: Settings) -> None:
    """With the warehouse on S3, fail fast unless its bucket exists and answers
    (lambda_arch.common.storage.S3BucketError names the bucket and the endpoint); no-op for a local lake."""
    if settings.warehouse_is_s3:
        check_bucket(s3.get_client(), settings.warehouse)


class SparkResource(ConfigurableResource):
    """A SparkSession from the settings: Spark Connect when SPARK_REMOTE is set (as `lambda-arch
    up` does, so every run shares one warm JVM), else a classic session on the configured master.

    The session is created on first use and reused by every asset of the run (getOrCreate), so
    a run that touches no Spark asset starts no JVM. With an S3 warehouse the bucket is checked
    through `s3` (dagster-aws) first: a missing bucket or a wrong endpoint is one clear error
    before a JVM starts, not a Hadoop stack trace after it.
    """

    app_name: str = "lambda-arch"
    s3: S3Resource | None = None  # None: s3_from_env() when the warehouse is on S3

    def session(self) -> SparkSession:
        from lambda_arch.ingest.kafka_source import register_kafka_source
        from lambda_arch.runtime.spark import build_session

        settings = load_settings()
        check_warehouse_bucket(self.s3 or s3_from_env(), settings)
        spark = build_session(settings, app_name=self.app_name)
        # Data source registrations last one (Connect) session: register in every run.
        register_kafka_source(spark)
        return spark


def build_resources() -> dict[str, ConfigurableResource]:
    """The resources of the one Definitions object."""
    s3 = s3_from_env()
    return {
        "settings": LambdaArchSettings(),
        "kafka": KafkaResource(),
        "s3": s3,
        "spark": SparkResource(s3=s3),
    }
