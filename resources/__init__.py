"""Dagster resources, configured from the environment (CONTRACT section 8)."""

from __future__ import annotations

from dagster import ConfigurableResource

from lambda_arch.config import Settings, load_settings


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


def build_resources() -> dict[str, ConfigurableResource]:
    """The resources of the one Definitions object."""
    return {"settings": LambdaArchSettings(), "kafka": KafkaResource()}
