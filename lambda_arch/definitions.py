"""The one Dagster Definitions object of lambda-arch (code location `lambda_arch.definitions`)."""

from __future__ import annotations

from dagster import Definitions

from resources import build_resources

defs = Definitions(
    assets=[],
    resources=build_resources(),
)
