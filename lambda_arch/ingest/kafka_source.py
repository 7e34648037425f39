"""A direct Kafka source for Spark on kafka-python and the Python Data Source API (`lambda_kafka`).

    register_kafka_source(spark)
    spark.readStream.format("lambda_kafka").option("bootstrap.servers", ...).option("topic", ...)

- Offsets per Kafka partition, `{"<partition>": next offset}`, live in Spark's checkpoint: there is
  no consumer group and nothing is committed to Kafka. One input partition per Kafka partition.
- Admission control: `maxEventsPerBatch` caps every micro-batch (`getDefaultReadLimit()` returns
  `ReadMaxRows`), shared between partitions in proportion to their backlog so that partitions
  stay level in time; `trigger(availableNow=True)` drains what was there at the start in
  bounded batches.
- Batch reads by offset range (`startingOffsets`/`endingOffsets`) or time range
  (`startingTimestamp`/`endingTimestamp`, epoch ms, half-open), correct on Tansu and on Kafka.
- Data loss (a resume offset below the broker's earliest or above its end) fails the query with a
  message naming topic, partition and both offsets, unless `failOnDataLoss=false`: then reading
  continues from the earliest offset and the gap is logged. `pending_data_loss()` tells the same
  before a run, from a checkpoint folder.
- A new incarnation of the topic (its Kafka topic id, kept with the offsets, changed: a
  restarted in-memory broker, a recreated topic) is read from its start, whatever
  failOnDataLoss says; `lambda_arch.ingest.incarnations` counts what the old one lost.
- `read()` yields Arrow record batches, so Spark moves Arrow buffers, not Python rows.

This module holds the Spark interfaces and their registration; the options are in
`kafka_options`, the offsets and checkpoints in `source_offsets`, the reading in `kafka_reader`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from pyspark import cloudpickle
from pyspark.sql.datasource import (
    DataSource,
    DataSourceReader,
    DataSourceStreamReader,
    InputPartition,
)
from pyspark.sql.streaming.datasource import (
    ReadAllAvailable,
    ReadLimit,
    ReadMaxRows,
    SupportsTriggerAvailableNow,
)

from lambda_arch.ingest import kafka_offsets, kafka_options, kafka_reader, source_offsets
from lambda_arch.ingest.kafka_offsets import (
    Gap,
    end_offsets,
    offset_bounds,
    offsets_for_time,
    topic_bounds,
)
from lambda_arch.ingest.kafka_options import SourceOptions
from lambda_arch.ingest.kafka_reader import SCHEMA_DDL, plan_partitions, read_partition
from lambda_arch.ingest.source_offsets import (
    admit,
    decode_offsets,
    encode_offsets,
    offsets_topic_id,
    resolve_offsets,
    resume_offsets,
    resume_position,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

SOURCE_NAME = "lambda_kafka"

log = logging.getLogger("lambda_arch.ingest.kafka_source")


class KafkaBatchReader(DataSourceReader):
    """Batch read of an offset range or a time range: one input partition per Kafka partition."""

    def __init__(self, options: SourceOptions) -> None:
        self.options = options

    def plan(self) -> tuple[dict[int, int], dict[int, int]]:
        """(start, end) offsets per partition for this read."""
        opts = self.options
        if opts.starting_timestamp is None:
            earliest, end = offset_bounds(opts.bootstrap, opts.topic)
            start = resolve_offsets(opts.starting_offsets, earliest, end)
            if isinstance(opts.starting_offsets, dict):
                # Explicit offsets are a checkpoint of sorts: check them like one.
                start, earliest, end = resume_offsets(opts, start)
        else:
            earliest, end = offset_bounds(opts.bootstrap, opts.topic)
            start = offsets_for_time(
                opts.bootstrap, opts.topic, opts.starting_timestamp, earliest=earliest, end=end
            )
        if opts.ending_timestamp is not None:
            stop = offsets_for_time(
                opts.bootstrap, opts.topic, opts.ending_timestamp, earliest=earliest, end=end
            )
        else:
            stop = resolve_offsets(opts.ending_offsets, end, end)
        for p, offset in stop.items():
            if p in end and offset > end[p]:
                log.warning(
                    "endingOffsets asks for topic %r partition %s up to %s but its end offset "
                    "is %s: reading up to the end",
                    opts.topic,
                    p,
                    offset,
                    end[p],
                )
        stop = {p: min(stop.get(p, end[p]), end[p]) for p in end}
        return {p: start.get(p, earliest[p]) for p in end}, stop

    def partitions(self) -> list:
        start, end = self.plan()
        return plan_partitions(self.options.topic, start, end)

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        return read_partition(self.options, partition)


class KafkaStreamReader(DataSourceStreamReader, SupportsTriggerAvailableNow):
    """Micro-batches over Kafka offsets kept in Spark's checkpoint, with admission control."""

    def __init__(self, options: SourceOptions) -> None:
        self.options = options
        self._target: dict[int, int] | None = None  # availableNow: the end to drain up to
        self._latest: dict[int, int] | None = None
        self._reported: set[Gap] = set()

    def initialOffset(self) -> dict:
        opts = self.options
        bounds = topic_bounds(opts.bootstrap, opts.topic)
        earliest, end = bounds.earliest, bounds.end
        if opts.starting_timestamp is not None:
            start = offsets_for_time(
                opts.bootstrap, opts.topic, opts.starting_timestamp, earliest=earliest, end=end
            )
        else:
            start = resolve_offsets(opts.starting_offsets, earliest, end)
        return encode_offsets(start, bounds.topic_id)

    def getDefaultReadLimit(self) -> ReadLimit:
        limit = self.options.max_events_per_batch
        return ReadAllAvailable() if limit is None else ReadMaxRows(limit)

    def prepareForTriggerAvailableNow(self) -> None:
        self._target = end_offsets(self.options.bootstrap, self.options.topic)

    def latestOffset(self, start: dict, limit: ReadLimit) -> dict:
        position = resume_position(
            self.options,
            decode_offsets(start),
            topic_id=offsets_topic_id(start),
            reported=self._reported,
        )
        resume, end = position.resume, position.bounds.end
        self._latest = end
        if self._target is not None:
            # availableNow: nothing produced after the run started (partitions created since
            # then wait for the next run); never below the resume offset.
            end = {p: max(resume[p], min(end[p], self._target.get(p, resume[p]))) for p in end}
        max_rows = limit.max_rows if isinstance(limit, ReadMaxRows) else None
        # The broker's topic id, or the one the offsets had when it reports none now.
        topic_id = position.bounds.topic_id or offsets_topic_id(start)
        return encode_offsets(admit(resume, end, max_rows), topic_id)

    def reportLatestOffset(self) -> dict | None:
        return None if self._latest is None else encode_offsets(self._latest)

    def partitions(self, start: dict, end: dict) -> list:
        first, last = decode_offsets(start), decode_offsets(end)
        if first == last and offsets_topic_id(start) == offsets_topic_id(end):
            return []
        resume, _, _ = resume_offsets(
            self.options, first, topic_id=offsets_topic_id(start), reported=self._reported
        )
        return plan_partitions(self.options.topic, resume, last)

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        return read_partition(self.options, partition)

    def commit(self, end: dict) -> None:
        # Offsets live in Spark's checkpoint only; nothing is committed to Kafka.
        return None


class KafkaDataSource(DataSource):
    """`spark.read(Stream).format("lambda_kafka")`: Kafka records as key, value, topic, partition,
    offset, timestamp."""

    @classmethod
    def name(cls) -> str:
        return SOURCE_NAME

    def schema(self) -> str:
        return SCHEMA_DDL

    def reader(self, schema: Any) -> DataSourceReader:
        return KafkaBatchReader(SourceOptions.parse(self.options))

    def streamReader(self, schema: Any) -> DataSourceStreamReader:
        return KafkaStreamReader(SourceOptions.parse(self.options))


def register_kafka_source(spark: SparkSession) -> None:
    """Register `lambda_kafka` with a classic or a Spark Connect session (once per session).

    The source's modules travel by value (FACTS: by reference, a Connect server without the
    project installed fails with ModuleNotFoundError): this one and every module its readers
    call into.
    """
    for module in (
        sys.modules[__name__],
        kafka_options,
        source_offsets,
        kafka_reader,
        kafka_offsets,
    ):
        cloudpickle.register_pickle_by_value(module)
    spark.dataSource.register(KafkaDataSource)
