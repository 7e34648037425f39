"""Dagster resources, configured from the environment (CONTRACT section 8)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dagster import ConfigurableResource

from lambda_arch.config import Settings, load_settings

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


class SparkResource(ConfigurableResource):
    """A SparkSession from the settings: Spark Connect when SPARK_REMOTE is set (as `lambda-arch
    up` does, so every run shares one warm JVM), else a classic session on the configured master.

    The session is created on first use and reused by every asset of the run (getOrCreate), so
    a run that touches no Spark asset starts no JVM.
    """

    app_name: str = "lambda-arch"

    def session(self) -> SparkSession:
        from lambda_arch.kafka_source import register_kafka_source
        from lambda_arch.spark import build_session

        spark = build_session(load_settings(), app_name=self.app_name)
        # Data source registrations last one (Connect) session: register in every run.
        register_kafka_source(spark)
        return spark


def build_resources() -> dict[str, ConfigurableResource]:
    """The resources of the one Definitions object."""
    return {"settings": LambdaArchSettings(), "kafka": KafkaResource(), "spark": SparkResource()}
