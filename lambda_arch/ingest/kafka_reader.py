"""Reading Kafka for the `lambda_kafka` source: one Spark task per Kafka partition's offset range,
yielding Arrow record batches (Spark moves Arrow buffers, not Python rows).

Data lost while reading (retention since planning, a broker reset) fails the task with a message
naming topic, partition and offsets, unless failOnDataLoss=false: then it is logged and skipped.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from kafka import TopicPartition
from kafka.errors import CorruptRecordError, KafkaError, OffsetOutOfRangeError
from pyspark.sql.datasource import InputPartition

from lambda_arch.ingest.kafka_offsets import (
    KafkaDataLossError,
    KafkaOffsetsError,
    end_offsets,
    open_consumer,
)
from lambda_arch.ingest.kafka_options import CONTINUE_HINT, SourceOptions

SCHEMA_DDL = (
    "key binary, value binary, topic string, partition int, offset bigint, timestamp timestamp"
)
# The Arrow schema Spark expects for SCHEMA_DDL (pyspark's to_arrow_schema with UTC); a batch
# with any other type is rejected, so build exactly this.
ARROW_SCHEMA = pa.schema(
    [
        ("key", pa.binary()),
        ("value", pa.binary()),
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
    ]
)

log = logging.getLogger("lambda_arch.ingest.kafka_reader")


class KafkaInputPartition(InputPartition):
    """One Kafka partition's offsets [start, end) to read in one Spark task."""

    def __init__(self, topic: str, partition: int, start: int, end: int) -> None:
        super().__init__((topic, partition, start, end))
        self.topic = topic
        self.partition = partition
        self.start = start
        self.end = end

    def __repr__(self) -> str:
        return f"KafkaInputPartition({self.topic}/{self.partition} [{self.start}, {self.end}))"


def plan_partitions(topic: str, start: Mapping[int, int], end: Mapping[int, int]) -> list:
    """One input partition per Kafka partition that has records in [start, end)."""
    return [
        KafkaInputPartition(topic, p, start[p], end[p])
        for p in sorted(end)
        if p in start and start[p] < end[p]
    ]


def _record_batch(
    topic: str, partition: int, keys: list, values: list, offsets: list, stamps: list
) -> pa.RecordBatch:
    rows = len(offsets)
    millis = pa.array(stamps, pa.int64())
    micros = pc.multiply(millis, 1000)
    if pc.min(millis).as_py() < 0:
        # -1 means "no timestamp" (pre-0.10 message format): a null, not 1969.
        micros = pc.if_else(pc.less(millis, 0), pa.scalar(None, pa.int64()), micros)
    return pa.RecordBatch.from_arrays(
        [
            pa.array(keys, pa.binary()),
            pa.array(values, pa.binary()),
            pa.repeat(pa.scalar(topic, pa.string()), rows),
            pa.repeat(pa.scalar(partition, pa.int32()), rows),
            pa.array(offsets, pa.int64()),
            micros.cast(pa.timestamp("us", tz="UTC")),
        ],
        schema=ARROW_SCHEMA,
    )


# Columnar record decoding ------------------------------------------------------------------------
# kafka-python builds a ConsumerRecord (and decodes headers, timestamp types, deserializers) for
# every record: about 10 us each, which is most of a read. For the record batches of message
# format v2 (every Kafka >= 0.11 and Tansu) the reader below decodes a whole batch straight into
# column lists instead: offsets, timestamps, keys, values, skipping headers by length. It plugs
# into kafka-python 3's fetcher, which still does the fetching, CRC checks, decompression and
# position bookkeeping; if the fetcher's internals look different it is not installed and the
# plain ConsumerRecord path is used.

Chunk = tuple[list[int], list[int], list["bytes | None"], list["bytes | None"]]


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint (Kafka's varint/varlong) at pos: (value, next position)."""
    byte = buf[pos]
    if byte < 0x80:
        return (byte >> 1) ^ -(byte & 1), pos + 1
    value = byte & 0x7F
    shift = 7
    pos += 1
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (value >> 1) ^ -(value & 1), pos
        shift += 7
        if shift > 63:
            raise CorruptRecordError(f"varint longer than 64 bits at byte {pos}")


def decode_records(
    buf: bytes,
    pos: int,
    count: int,
    base_offset: int,
    first_timestamp: int,
    append_time: int | None,
    min_offset: int,
) -> Chunk:
    """Columns of the `count` v2 records in buf from pos; records below min_offset are skipped.

    Record: length, attributes (int8), timestamp delta, offset delta, key, value, headers; the
    integers are zigzag varints and the length lets headers be skipped without decoding them.
    """
    offsets: list[int] = []
    stamps: list[int] = []
    keys: list[bytes | None] = []
    values: list[bytes | None] = []
    varint = _varint
    for _ in range(count):
        length, pos = varint(buf, pos)
        record_end = pos + length
        ts_delta, pos = varint(buf, pos + 1)  # + 1: the attributes byte, unused in v2
        offset_delta, pos = varint(buf, pos)
        key_length, pos = varint(buf, pos)
        if key_length >= 0:
            key: bytes | None = buf[pos : pos + key_length]
            pos += key_length
        else:
            key = None
        value_length, pos = varint(buf, pos)
        value = buf[pos : pos + value_length] if value_length >= 0 else None
        if pos + max(value_length, 0) > record_end:
            raise CorruptRecordError(f"record at offset {base_offset + offset_delta} overruns")
        pos = record_end
        offset = base_offset + offset_delta
        if offset < min_offset:
            continue
        offsets.append(offset)
        stamps.append(first_timestamp + ts_delta if append_time is None else append_time)
        keys.append(key)
        values.append(value)
    if pos != len(buf):
        raise CorruptRecordError(f"{len(buf) - pos} bytes left after the records of a batch")
    return offsets, stamps, keys, values


def _columnar_partition_records(base: type) -> type:
    """A subclass of kafka-python's Fetcher.PartitionRecords yielding one Chunk per batch."""

    class ColumnarPartitionRecords(base):  # type: ignore[misc, valid-type]
        def _maybe_skip_record(self, record: Any) -> bool:
            return False  # decode_records skips offsets below the fetch offset itself

        def _unpack_records(self, tp: Any, records: Any, key_des: Any, value_des: Any) -> Any:
            try:
                batch = records.next_batch()
                last_batch = None
                while batch is not None:
                    last_batch = batch
                    if self.check_crcs and not batch.validate_crc():
                        raise CorruptRecordError(
                            f"record batch of {tp} at offset {batch.base_offset} failed its "
                            "CRC check"
                        )
                    if batch.magic != 2:
                        # Pre-0.11 message sets: rare, decoded by kafka-python.
                        kept = [r for r in batch if r.offset >= self.fetch_offset]
                        chunk: Chunk = (
                            [r.offset for r in kept],
                            [r.timestamp for r in kept],
                            [r.key for r in kept],
                            [r.value for r in kept],
                        )
                        next_offset = kept[-1].offset + 1 if kept else self.next_fetch_offset
                    elif batch.is_control_batch:
                        self.next_fetch_offset = batch.next_offset
                        batch = records.next_batch()
                        continue
                    else:
                        self.leader_epoch = batch.leader_epoch
                        batch._maybe_uncompress()
                        data = bytes(batch._buffer)
                        chunk = decode_records(
                            data,
                            batch._pos,
                            batch.records_count,
                            batch.base_offset,
                            batch.first_timestamp,
                            batch.max_timestamp if batch.timestamp_type == 1 else None,
                            self.fetch_offset,
                        )
                        next_offset = batch.next_offset
                    self.records_read += len(chunk[0])
                    self.bytes_read += batch.size_in_bytes
                    # Set before yielding: take() may stop right after this chunk.
                    self.next_fetch_offset = max(self.next_fetch_offset, next_offset)
                    if chunk[0]:
                        yield chunk
                    batch = records.next_batch()
                else:
                    if last_batch is not None and last_batch.magic == 2:
                        self.next_fetch_offset = max(self.next_fetch_offset, last_batch.next_offset)
                    self.drain()
            except StopIteration:
                raise RuntimeError("StopIteration while unpacking a record set") from None

    return ColumnarPartitionRecords


def _install_columnar(consumer: Any) -> bool:
    """Make consumer.poll() return Chunks instead of ConsumerRecords, when possible."""
    fetcher = getattr(consumer, "_fetcher", None)
    base = getattr(fetcher, "PartitionRecords", None)
    config = getattr(consumer, "config", {})
    if (
        base is None
        or not hasattr(base, "_unpack_records")
        or str(config.get("isolation_level", "read_uncommitted")) != "read_uncommitted"
    ):
        return False
    fetcher.PartitionRecords = _columnar_partition_records(base)
    return True


def _as_chunks(items: list, columnar: bool) -> list[Chunk]:
    """poll() results as Chunks, whichever decoding path produced them."""
    if columnar or not items:
        return items
    return [
        (
            [r.offset for r in items],
            [r.timestamp for r in items],
            [r.key for r in items],
            [r.value for r in items],
        )
    ]


def read_partition(options: SourceOptions, split: InputPartition) -> Iterator[pa.RecordBatch]:
    """Arrow batches of one Kafka partition's records in [start, end), chunkRows rows each."""
    # Spark hands a bare InputPartition when planning found nothing to read; duck typing (not
    # isinstance) because the class travels by value and may arrive as a distinct copy.
    if getattr(split, "end", None) is None or getattr(split, "start", None) is None:
        return iter(())
    return _read_range(options, split.topic, split.partition, split.start, split.end)


def _read_range(
    options: SourceOptions, topic: str, partition: int, start: int, end: int
) -> Iterator[pa.RecordBatch]:
    tp = TopicPartition(topic, partition)
    chunk_rows = options.chunk_rows
    with open_consumer(
        options.bootstrap,
        client_id="lambda-arch-spark-source",
        check_crcs=options.check_crcs,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        fetch_max_wait_ms=100,
        **options.kafka,
    ) as consumer:
        columnar = _install_columnar(consumer)
        consumer.assign([tp])
        consumer.seek(tp, start)
        keys: list[bytes | None] = []
        values: list[bytes | None] = []
        offsets: list[int] = []
        stamps: list[int] = []
        position = start
        last_progress = time.monotonic()
        while position < end:
            try:
                polled = consumer.poll(timeout_ms=500, max_records=64).get(tp, [])
            except OffsetOutOfRangeError:
                position = _skip_lost(options, consumer, tp, position, end)
                continue
            for chunk_offsets, chunk_stamps, chunk_keys, chunk_values in _as_chunks(
                polled, columnar
            ):
                if not chunk_offsets:
                    continue
                if chunk_offsets[-1] >= end:
                    cut = bisect.bisect_left(chunk_offsets, end)
                    chunk_offsets, chunk_stamps = chunk_offsets[:cut], chunk_stamps[:cut]
                    chunk_keys, chunk_values = chunk_keys[:cut], chunk_values[:cut]
                    if not chunk_offsets:
                        continue
                offsets += chunk_offsets
                stamps += chunk_stamps
                keys += chunk_keys
                values += chunk_values
                position = chunk_offsets[-1] + 1
                last_progress = time.monotonic()
                if len(offsets) >= chunk_rows:
                    yield _record_batch(topic, partition, keys, values, offsets, stamps)
                    keys, values, offsets, stamps = [], [], [], []
            if position >= end:
                break
            # Control records or compacted offsets advance the position without records.
            position = max(position, consumer.position(tp))
            if time.monotonic() - last_progress > options.fetch_timeout_s:
                position = _stalled(options, consumer, tp, position, end)
                last_progress = time.monotonic()
        if offsets:
            yield _record_batch(topic, partition, keys, values, offsets, stamps)


def _skip_lost(
    options: SourceOptions, consumer: Any, tp: TopicPartition, position: int, end: int
) -> int:
    """The broker no longer has `position` (retention since planning): fail, or jump ahead."""
    earliest = int(consumer.beginning_offsets([tp])[tp])
    message = (
        f"data loss on topic {tp.topic!r} partition {tp.partition}: offset {position} is out of "
        f"range on the broker (earliest offset now {earliest})"
    )
    # Only a position below the earliest offset can be skipped over; anything else is a reset.
    if options.fail_on_data_loss or earliest <= position:
        raise KafkaDataLossError(message + CONTINUE_HINT)
    log.warning("%s; continuing from %s (failOnDataLoss=false)", message, earliest)
    resume = min(earliest, end)
    consumer.seek(tp, resume)
    return resume


def _stalled(
    options: SourceOptions, consumer: Any, tp: TopicPartition, position: int, end: int
) -> int:
    """No records for fetchTimeoutMs before reaching `end`: data vanished, or the broker hangs."""
    try:
        high = end_offsets(options.bootstrap, tp.topic, [tp.partition])[tp.partition]
    except (KafkaError, KafkaOffsetsError) as error:
        raise KafkaOffsetsError(
            f"reading topic {tp.topic!r} partition {tp.partition} stalled at offset {position} "
            f"(planned end {end}) and the broker does not answer: {error}"
        ) from None
    if high >= end:
        raise KafkaOffsetsError(
            f"reading topic {tp.topic!r} partition {tp.partition} stalled at offset {position} "
            f"for {options.fetch_timeout_s:.0f} s although the broker reports end offset {high}"
        )
    message = (
        f"data loss on topic {tp.topic!r} partition {tp.partition}: the batch was planned up to "
        f"offset {end} but the broker's end offset is now {high} (read up to {position})"
    )
    if options.fail_on_data_loss:
        raise KafkaDataLossError(message + CONTINUE_HINT)
    log.warning("%s; ending this partition's batch early (failOnDataLoss=false)", message)
    return end
