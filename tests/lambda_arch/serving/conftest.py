"""Fixtures of the serving tests: real pipelines on the suite's broker and SparkSession.

A test that changes a pipeline gets its own (`pipeline`); tests that only read a served store
share one (`served`, built once per session), so no test depends on what another left behind.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lambda_arch.runtime.broker import EmbeddedBroker
from tests.lambda_arch.serving.pipeline import Pipeline, new_pipeline, served_pipeline


@pytest.fixture
def pipeline(spark: object, broker: EmbeddedBroker, tmp_path: Path) -> Pipeline:
    """An empty pipeline of this test's own."""
    return new_pipeline(spark, broker, tmp_path)


@pytest.fixture(scope="session")
def served(
    spark: object, broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> Pipeline:
    """A pipeline serving DAY from the batch layer and the rest from the speed layer, shared by
    the tests that only read it (they must not send, compute or refresh into its store)."""
    return served_pipeline(spark, broker, tmp_path_factory.mktemp("served"))
