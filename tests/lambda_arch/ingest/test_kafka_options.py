"""The lambda_kafka source's options: parsed and checked on the driver, built from Python values."""

from __future__ import annotations

import pytest

from lambda_arch.ingest.kafka_options import (
    DEFAULT_CHUNK_ROWS,
    EARLIEST,
    LATEST,
    SourceOptions,
    source_options,
)


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match=r"bootstrap\.servers"):
        SourceOptions.parse({"topic": "t"})
    with pytest.raises(ValueError, match="maxEventsPerBatch"):
        SourceOptions.parse({"bootstrap.servers": "h:1", "topic": "t", "maxEventsPerBatch": "0"})
    with pytest.raises(ValueError, match="startingOffsets"):
        SourceOptions.parse({"bootstrap.servers": "h:1", "topic": "t", "startingOffsets": "{x"})
    options = SourceOptions.parse(
        source_options(
            "h:1", "t", max_events_per_batch=7, startingOffsets={0: 3}, failOnDataLoss=False
        )
    )
    assert options.max_events_per_batch == 7
    assert options.starting_offsets == {0: 3}
    assert options.fail_on_data_loss is False


def test_defaults_and_kafka_settings() -> None:
    options = SourceOptions.parse(
        {
            "Kafka.Bootstrap.Servers": "h:1",
            "subscribe": "t",
            "kafka.security_protocol": "SSL",
            "kafka.max_poll_records": "500",
            "checkCrcs": "false",
        }
    )
    assert (options.bootstrap, options.topic) == ("h:1", "t")
    assert options.starting_offsets == "earliest" and options.ending_offsets == "latest"
    assert options.chunk_rows == DEFAULT_CHUNK_ROWS and options.fail_on_data_loss is True
    assert options.kafka == {"security_protocol": "SSL", "max_poll_records": 500}
    assert options.check_crcs is False


def test_offsets_accept_spark_kafka_shapes_and_markers() -> None:
    nested = SourceOptions.parse(
        {"bootstrap.servers": "h:1", "topic": "t", "startingOffsets": '{"t": {"0": 5, "1": -2}}'}
    )
    assert nested.starting_offsets == {0: 5, 1: EARLIEST}
    latest = SourceOptions.parse(
        {"bootstrap.servers": "h:1", "topic": "t", "endingOffsets": '{"0": -1}'}
    )
    assert latest.ending_offsets == {0: LATEST}
    with pytest.raises(ValueError, match="failOnDataLoss"):
        SourceOptions.parse({"bootstrap.servers": "h:1", "topic": "t", "failOnDataLoss": "maybe"})


def test_source_options_are_text() -> None:
    assert source_options("h:1", "t", chunkRows=5, failOnDataLoss=True, endingOffsets={1: 9}) == {
        "bootstrap.servers": "h:1",
        "topic": "t",
        "chunkRows": "5",
        "failOnDataLoss": "true",
        "endingOffsets": '{"1": 9}',
    }
