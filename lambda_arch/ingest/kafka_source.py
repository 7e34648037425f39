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
- `read()` yields Arrow record batches, so Spark moves Arrow buffers, not Python rows.

Options: bootstrap.servers (or kafka.bootstrap.servers), topic, maxEventsPerBatch,
startingOffsets (earliest | latest | JSON {"0": 42, "1": -2}; -2 earliest, -1 latest),
endingOffsets (latest | JSON; batch only), startingTimestamp / endingTimestamp (epoch ms),
failOnDataLoss (true), chunkRows (rows per Arrow batch, 20000), checkCrcs (auto: on when a C
crc32c is installed), fetchTimeoutMs (60000), and `kafka.<setting>` passed to kafka-python
(e.g. kafka.security_protocol).
"""

from __future__ import annotations

import bisect
import json
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
from kafka import TopicPartition
from kafka.errors import CorruptRecordError, KafkaError, OffsetOutOfRangeError
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

from lambda_arch.ingest.kafka_offsets import (
    Gap,
    KafkaDataLossError,
    KafkaOffsetsError,
    check_data_loss,
    describe_gaps,
    end_offsets,
    find_data_loss,
    offset_bounds,
    offsets_for_time,
    open_consumer,
    partitions_of,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

SOURCE_NAME = "lambda_kafka"
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
DEFAULT_CHUNK_ROWS = 20_000
DEFAULT_FETCH_TIMEOUT_MS = 60_000
EARLIEST, LATEST = -2, -1  # the JSON offset markers Spark's Kafka source uses

log = logging.getLogger("lambda_arch.ingest.kafka_source")


# Options ---------------------------------------------------------------------------------------


def _c_crc32c_available() -> bool:
    # kafka-python checks CRCs in pure Python unless the `crc32c` C package is installed; that
    # costs about 5x the read time, so "auto" checks only when it is cheap. Brokers validate
    # CRCs on produce and TCP protects the wire.
    try:
        import crc32c  # noqa: F401
    except ImportError:
        return False
    return True


def _coerce(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(text)
    except ValueError:
        return text


def _flag(options: Mapping[str, str], name: str, default: bool) -> bool:
    text = options.get(name.lower())
    if text is None or text == "":
        return default
    if str(text).strip().lower() not in ("true", "false"):
        raise ValueError(f"option {name} must be true or false, not {text!r}")
    return str(text).strip().lower() == "true"


def _positive_int(options: Mapping[str, str], name: str) -> int | None:
    text = options.get(name.lower())
    if text is None or str(text).strip() == "":
        return None
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ValueError(f"option {name} must be a whole number, not {text!r}") from None
    if value < 1:
        raise ValueError(f"option {name} must be >= 1, not {value}")
    return value


def _timestamp(options: Mapping[str, str], name: str) -> int | None:
    text = options.get(name.lower())
    if text is None or str(text).strip() == "":
        return None
    try:
        return int(str(text).strip())
    except ValueError:
        raise ValueError(f"option {name} must be epoch milliseconds, not {text!r}") from None


def _offsets_spec(text: str | None, name: str, default: str) -> str | dict[int, int]:
    """earliest | latest, or a JSON object of partition -> offset (-2 earliest, -1 latest)."""
    spec = (text or default).strip()
    if spec.lower() in ("earliest", "latest"):
        return spec.lower()
    try:
        parsed = json.loads(spec)
        if not isinstance(parsed, dict):
            raise ValueError
        # Spark's Kafka source nests offsets under the topic name: accept that shape too.
        if len(parsed) == 1 and isinstance(next(iter(parsed.values())), dict):
            parsed = next(iter(parsed.values()))
        return {int(p): int(o) for p, o in parsed.items()}
    except (ValueError, TypeError):
        raise ValueError(
            f'option {name} must be earliest, latest or JSON like {{"0": 42, "1": -2}}, '
            f"not {spec!r}"
        ) from None


@dataclass(frozen=True)
class SourceOptions:
    """The source's options, parsed and checked once on the driver."""

    bootstrap: str
    topic: str
    max_events_per_batch: int | None = None
    starting_offsets: str | dict[int, int] = "earliest"
    ending_offsets: str | dict[int, int] = "latest"
    starting_timestamp: int | None = None
    ending_timestamp: int | None = None
    fail_on_data_loss: bool = True
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    check_crcs: bool = False
    fetch_timeout_s: float = DEFAULT_FETCH_TIMEOUT_MS / 1000
    kafka: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Mapping[str, str]) -> SourceOptions:
        """Parse Spark's (case-insensitive) options; a bad value raises ValueError naming it."""
        options = {str(k).lower(): v for k, v in raw.items()}
        bootstrap = options.get("bootstrap.servers") or options.get("kafka.bootstrap.servers")
        if not bootstrap:
            raise ValueError("option bootstrap.servers is required (host:port[,host:port])")
        topic = options.get("topic") or options.get("subscribe")
        if not topic:
            raise ValueError("option topic is required")
        crcs = str(options.get("checkcrcs", "auto")).strip().lower()
        kafka = {
            k.removeprefix("kafka."): _coerce(str(v))
            for k, v in options.items()
            if k.startswith("kafka.") and k != "kafka.bootstrap.servers"
        }
        return cls(
            bootstrap=str(bootstrap),
            topic=str(topic),
            max_events_per_batch=_positive_int(options, "maxEventsPerBatch"),
            starting_offsets=_offsets_spec(
                options.get("startingoffsets"), "startingOffsets", "earliest"
            ),
            ending_offsets=_offsets_spec(options.get("endingoffsets"), "endingOffsets", "latest"),
            starting_timestamp=_timestamp(options, "startingTimestamp"),
            ending_timestamp=_timestamp(options, "endingTimestamp"),
            fail_on_data_loss=_flag(options, "failOnDataLoss", True),
            chunk_rows=_positive_int(options, "chunkRows") or DEFAULT_CHUNK_ROWS,
            check_crcs=_c_crc32c_available()
            if crcs == "auto"
            else _flag(options, "checkCrcs", False),
            fetch_timeout_s=(_positive_int(options, "fetchTimeoutMs") or DEFAULT_FETCH_TIMEOUT_MS)
            / 1000,
            kafka=kafka,
        )


# Offsets as Spark keeps them ---------------------------------------------------------------------


def encode_offsets(offsets: Mapping[int, int]) -> dict[str, int]:
    """Offsets as Spark stores them: JSON keys are text; sorted so equal offsets compare equal."""
    return {str(p): int(offsets[p]) for p in sorted(offsets)}


def decode_offsets(offsets: Mapping[str, Any] | None) -> dict[int, int]:
    """The inverse of encode_offsets."""
    return {int(p): int(o) for p, o in (offsets or {}).items()}


def admit(start: Mapping[int, int], end: Mapping[int, int], max_rows: int | None) -> dict[int, int]:
    """End offsets of the next batch: everything up to end, or at most max_rows in all.

    The cap is shared in proportion to each partition's backlog (largest remainder, so the batch
    holds exactly max_rows), as Spark's Kafka source does: partitions then advance evenly in time,
    which keeps an event-time watermark from outrunning a busy partition.
    """
    available = {p: max(0, end[p] - start.get(p, end[p])) for p in end}
    total = sum(available.values())
    if max_rows is None or total <= max_rows:
        return dict(end)
    shares = {p: available[p] * max_rows / total for p in available}
    taken = {p: int(shares[p]) for p in shares}
    leftover = max_rows - sum(taken.values())
    for p in sorted(shares, key=lambda p: (taken[p] - shares[p], p))[:leftover]:
        taken[p] += 1
    return {p: start.get(p, end[p]) + taken[p] if available[p] else end[p] for p in end}


def _resolve(
    spec: str | dict[int, int], earliest: Mapping[int, int], end: Mapping[int, int]
) -> dict[int, int]:
    """Offsets for earliest | latest | {partition: offset or -2/-1}; unnamed partitions: earliest."""
    if spec == "earliest":
        return dict(earliest)
    if spec == "latest":
        return dict(end)
    assert isinstance(spec, dict)
    resolved = dict(earliest)
    for partition, offset in spec.items():
        if offset == EARLIEST:
            resolved[partition] = earliest.get(partition, 0)
        elif offset == LATEST:
            resolved[partition] = end.get(partition, 0)
        else:
            resolved[partition] = offset
    return resolved


# Reading -------------------------------------------------------------------------------------------


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
        raise KafkaDataLossError(message + _CONTINUE_HINT)
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
        raise KafkaDataLossError(message + _CONTINUE_HINT)
    log.warning("%s; ending this partition's batch early (failOnDataLoss=false)", message)
    return end


_CONTINUE_HINT = (
    ". Set the source option failOnDataLoss=false to continue from the earliest available offset."
)


# Data loss before planning -------------------------------------------------------------------------


def resume_offsets(
    options: SourceOptions, start: Mapping[int, int], *, reported: set[Gap] | None = None
) -> tuple[dict[int, int], dict[int, int], dict[int, int]]:
    """(resume offsets, earliest, end) for a batch starting at `start`, after the data-loss check.

    Partitions new on the broker start at their earliest offset. A gap raises KafkaDataLossError
    naming topic, partition and offsets, or with failOnDataLoss=false resumes that partition
    from its earliest offset and logs the gap (once per gap when `reported` is given).
    """
    present = partitions_of(options.bootstrap, options.topic)
    if not present:
        if not start:
            raise KafkaOffsetsError(
                f"topic {options.topic!r} does not exist at {options.bootstrap}"
            )
        earliest, end = {}, {}
    else:
        earliest, end = offset_bounds(options.bootstrap, options.topic, present)
    gaps = find_data_loss(start, earliest, end, topic=options.topic)
    if gaps and options.fail_on_data_loss:
        raise KafkaDataLossError(describe_gaps(gaps) + _CONTINUE_HINT)
    for gap in gaps:
        if reported is None or gap not in reported:
            log.warning(
                "%s; continuing from the earliest offset (failOnDataLoss=false)", gap.describe()
            )
            if reported is not None:
                reported.add(gap)
    lost = {gap.partition for gap in gaps}
    resume = {p: (earliest[p] if p in lost or p not in start else start[p]) for p in end}
    return resume, earliest, end


# Spark interfaces --------------------------------------------------------------------------------


class KafkaBatchReader(DataSourceReader):
    """Batch read of an offset range or a time range: one input partition per Kafka partition."""

    def __init__(self, options: SourceOptions) -> None:
        self.options = options

    def plan(self) -> tuple[dict[int, int], dict[int, int]]:
        """(start, end) offsets per partition for this read."""
        opts = self.options
        if opts.starting_timestamp is None:
            earliest, end = offset_bounds(opts.bootstrap, opts.topic)
            start = _resolve(opts.starting_offsets, earliest, end)
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
            stop = _resolve(opts.ending_offsets, end, end)
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
        earliest, end = offset_bounds(opts.bootstrap, opts.topic)
        if opts.starting_timestamp is not None:
            start = offsets_for_time(
                opts.bootstrap, opts.topic, opts.starting_timestamp, earliest=earliest, end=end
            )
        else:
            start = _resolve(opts.starting_offsets, earliest, end)
        return encode_offsets(start)

    def getDefaultReadLimit(self) -> ReadLimit:
        limit = self.options.max_events_per_batch
        return ReadAllAvailable() if limit is None else ReadMaxRows(limit)

    def prepareForTriggerAvailableNow(self) -> None:
        self._target = end_offsets(self.options.bootstrap, self.options.topic)

    def latestOffset(self, start: dict, limit: ReadLimit) -> dict:
        resume, _, end = resume_offsets(
            self.options, decode_offsets(start), reported=self._reported
        )
        self._latest = end
        if self._target is not None:
            # availableNow: nothing produced after the run started (partitions created since
            # then wait for the next run); never below the resume offset.
            end = {p: max(resume[p], min(end[p], self._target.get(p, resume[p]))) for p in end}
        max_rows = limit.max_rows if isinstance(limit, ReadMaxRows) else None
        return encode_offsets(admit(resume, end, max_rows))

    def reportLatestOffset(self) -> dict | None:
        return None if self._latest is None else encode_offsets(self._latest)

    def partitions(self, start: dict, end: dict) -> list:
        first, last = decode_offsets(start), decode_offsets(end)
        if first == last:
            return []
        resume, _, _ = resume_offsets(self.options, first, reported=self._reported)
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
    project installed fails with ModuleNotFoundError).
    """
    from pyspark import cloudpickle

    from lambda_arch.ingest import kafka_offsets

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cloudpickle.register_pickle_by_value(kafka_offsets)
    spark.dataSource.register(KafkaDataSource)


def source_options(
    bootstrap: str, topic: str, *, max_events_per_batch: int | None = None, **extra: Any
) -> dict[str, str]:
    """Options for `.options(**...)` from Python values (e.g. from lambda_arch Settings)."""
    options = {"bootstrap.servers": bootstrap, "topic": topic}
    if max_events_per_batch is not None:
        options["maxEventsPerBatch"] = str(max_events_per_batch)
    for name, value in extra.items():
        if isinstance(value, dict):
            options[name] = json.dumps({str(k): v for k, v in value.items()})
        elif isinstance(value, bool):
            options[name] = "true" if value else "false"
        else:
            options[name] = str(value)
    return options


# Checkpoints (for a Dagster asset or sensor, before a run) ------------------------------------------


def checkpoint_offsets(checkpoint_dir: str | Path, source_index: int = 0) -> dict[int, int] | None:
    """Where a streaming query with this checkpoint resumes: the end of its last committed batch.

    Reads Spark's offset log (`offsets/<batch>`: a version line, a metadata line, then one line
    per source). None when no batch was committed yet.
    """
    root = Path(str(checkpoint_dir).removeprefix("file://").removeprefix("file:"))
    commits = root / "commits"
    if not commits.is_dir():
        return None
    committed = sorted(int(f.name) for f in commits.iterdir() if f.name.isdigit())
    if not committed:
        return None
    lines = (root / "offsets" / str(committed[-1])).read_text().splitlines()
    entry = lines[2 + source_index].strip()
    if not entry or entry == "-":
        return None
    return decode_offsets(json.loads(entry))


def pending_data_loss(checkpoint_dir: str | Path, bootstrap: str, topic: str) -> list[Gap]:
    """Gaps the next streaming run from this checkpoint would hit (for run metadata); [] if none."""
    resume = checkpoint_offsets(checkpoint_dir)
    if not resume:
        return []
    return check_data_loss(bootstrap, topic, resume)
