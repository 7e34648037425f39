"""The Spark run tag is one constant that the Dagster jobs and dagster.yaml both use."""

from __future__ import annotations

from pathlib import Path

from assets.batch import BATCH_TAGS
from assets.speed import SPARK_TAGS, STREAM_TAGS
from lambda_arch.common.config import Settings
from lambda_arch.common.tags import SPARK_BATCH, SPARK_RUN_TAG, SPARK_SPEED, SPARK_STREAM
from lambda_arch.runtime.stack import dagster_instance_config


def test_one_tag_key_three_distinct_values() -> None:
    assert SPARK_RUN_TAG == "lambda_arch/spark"
    assert len({SPARK_SPEED, SPARK_BATCH, SPARK_STREAM}) == 3
    assert SPARK_TAGS == {SPARK_RUN_TAG: SPARK_SPEED}
    assert BATCH_TAGS == {SPARK_RUN_TAG: SPARK_BATCH}
    assert STREAM_TAGS == {SPARK_RUN_TAG: SPARK_STREAM}


def test_dagster_yaml_limits_runs_by_the_same_key(tmp_path: Path) -> None:
    config = dagster_instance_config(Settings(LAMBDA_ARCH_HOME=str(tmp_path)))
    limits = config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert [limit["key"] for limit in limits] == [SPARK_RUN_TAG]
