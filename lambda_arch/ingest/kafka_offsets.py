"""Kafka offsets with plain kafka-python: partitions, earliest/end offsets, offsets for a time, gaps.

Shared by the Spark source (`lambda_arch.ingest.kafka_source`), the Kafka-lag sensor and the tests. Every
helper opens a short-lived consumer without a consumer group (Tansu joins groups slowly) and closes
it. The helpers are correct on the embedded Tansu broker, whose ListOffsets(LATEST) under-reports
the end and whose offsets_for_times always answers 0 (FACTS), and on a real Kafka cluster.

Nothing here imports Spark: the module is pickled by value to Spark workers and the Connect server.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

# Small fetches for offset discovery: only the high watermark and a record or two are wanted.
_PROBE_FETCH_BYTES = 64 * 1024
_PROBE_WAIT_MS = 10


class KafkaOffsetsError(RuntimeError):
    """Offsets could not be determined (unknown topic, broker not answering in time)."""


class KafkaDataLossError(RuntimeError):
    """Records a reader was about to read are no longer on the broker; the message names them."""


def consumer_config(bootstrap: str, **overrides: Any) -> dict[str, Any]:
    """kafka-python consumer settings for group-less, manually assigned reads."""
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": "lambda-arch-offsets",
        "group_id": None,
        "enable_auto_commit": False,
        # Asking about a missing topic must not create it (Tansu and many clusters auto-create).
        "allow_auto_create_topics": False,
        # Never jump silently: an out-of-range position is data loss and must surface.
        "auto_offset_reset": "none",
        "request_timeout_ms": 30_000,
        "bootstrap_timeout_ms": 15_000,
        "metrics_enabled": False,
    }
    config.update(overrides)
    return config


@contextmanager
def open_consumer(bootstrap: str, **overrides: Any) -> Iterator[KafkaConsumer]:
    """A short-lived consumer without a group, closed on exit."""
    try:
        consumer = KafkaConsumer(**consumer_config(bootstrap, **overrides))
    except KafkaError as error:
        raise KafkaOffsetsError(f"no Kafka broker answered at {bootstrap}: {error}") from None
    try:
        yield consumer
    finally:
        consumer.close(autocommit=False)


def _partitions(consumer: KafkaConsumer, topic: str, timeout_s: float = 10.0) -> list[int]:
    """Partition ids of topic; [] as soon as the broker answers metadata without the topic.

    partitions_for_topic returns only once a metadata request for all topics was answered, so
    an empty answer means the topic does not exist (a topic created by ensure_topic is already
    visible: it waits for it). Only while the request fails (broker still starting, metadata not
    loaded yet) is it retried, for up to timeout_s; then the last error is raised.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return sorted(consumer.partitions_for_topic(topic) or ())
        except KafkaError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def partitions_of(bootstrap: str, topic: str, *, timeout_s: float = 10.0) -> list[int]:
    """Partition ids of topic, sorted; [] when the broker's metadata does not list the topic."""
    with open_consumer(bootstrap) as consumer:
        return _partitions(consumer, topic, timeout_s)


def _require_partitions(
    consumer: KafkaConsumer, bootstrap: str, topic: str, partitions: Iterable[int] | None
) -> list[TopicPartition]:
    ids = sorted(partitions) if partitions is not None else _partitions(consumer, topic)
    if not ids:
        raise KafkaOffsetsError(f"topic {topic!r} does not exist at {bootstrap}")
    return [TopicPartition(topic, p) for p in ids]


def earliest_offsets(
    bootstrap: str, topic: str, partitions: Iterable[int] | None = None
) -> dict[int, int]:
    """First offset still on the broker per partition (ListOffsets EARLIEST is exact on Tansu)."""
    with open_consumer(bootstrap) as consumer:
        tps = _require_partitions(consumer, bootstrap, topic, partitions)
        return {tp.partition: int(o) for tp, o in consumer.beginning_offsets(tps).items()}


def _high_watermarks(
    consumer: KafkaConsumer, tps: list[TopicPartition], positions: Mapping[TopicPartition, int]
) -> dict[TopicPartition, int]:
    """High watermarks from one round of Fetch responses, fetching at the given positions."""
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, positions[tp])
    deadline = time.monotonic() + 15.0
    pending = set(tps)
    while pending:
        # Any records returned are ignored: the Fetch response's high watermark is what counts,
        # and kafka-python records it per partition as each response is parsed.
        consumer.poll(timeout_ms=100)
        pending = {tp for tp in pending if consumer.highwater(tp) is None}
        if pending and time.monotonic() > deadline:
            names = ", ".join(str(tp.partition) for tp in sorted(pending))
            raise KafkaOffsetsError(
                f"no fetch response with a high watermark for {tps[0].topic} partitions {names}"
            )
    return {tp: int(consumer.highwater(tp)) for tp in tps}


def end_offsets(
    bootstrap: str, topic: str, partitions: Iterable[int] | None = None
) -> dict[int, int]:
    """Offset after the last record per partition: the Fetch high watermark.

    ListOffsets(LATEST) is exact on Kafka but under-reports on Tansu, so it only serves as a
    position that is in range on both; one small fetch from there returns the high watermark.
    """
    with open_consumer(
        bootstrap,
        fetch_max_wait_ms=_PROBE_WAIT_MS,
        max_partition_fetch_bytes=_PROBE_FETCH_BYTES,
        fetch_max_bytes=_PROBE_FETCH_BYTES * 16,
    ) as consumer:
        tps = _require_partitions(consumer, bootstrap, topic, partitions)
        listed = {tp: int(o) for tp, o in consumer.end_offsets(tps).items()}
        marks = _high_watermarks(consumer, tps, listed)
        return {tp.partition: max(listed[tp], marks[tp]) for tp in tps}


def offset_bounds(
    bootstrap: str, topic: str, partitions: Iterable[int] | None = None
) -> tuple[dict[int, int], dict[int, int]]:
    """(earliest, end) offsets per partition with one consumer: cheaper than two calls."""
    bounds = topic_bounds(bootstrap, topic, partitions)
    return bounds.earliest, bounds.end


@dataclass(frozen=True)
class TopicBounds:
    """Earliest and end offsets per partition, and which incarnation of the topic they are of."""

    earliest: dict[int, int]
    end: dict[int, int]
    topic_id: str | None  # None: the broker reports no topic ids (Kafka < 2.8)


# Kafka answers the all-zero id for a topic without one.
_NO_TOPIC_ID = "00000000-0000-0000-0000-000000000000"


def topic_id_of(consumer: KafkaConsumer, topic: str) -> str | None:
    """The topic's id (KIP-516) from the metadata the consumer holds, or None.

    Kafka >= 2.8 and Tansu answer Metadata v10+ with a topic id, which kafka-python keeps per
    topic. A deleted and recreated topic, or a topic of a restarted in-memory broker, gets a new
    one: the id tells incarnations of a topic apart where offsets cannot (both start at 0).
    """
    cluster = getattr(getattr(consumer, "_client", None), "cluster", None)
    lookup = getattr(cluster, "topic_id", None)
    found = lookup(topic) if callable(lookup) else None
    text = str(found) if found is not None else None
    return None if text in (None, "", _NO_TOPIC_ID) else text


def topic_bounds(
    bootstrap: str, topic: str, partitions: Iterable[int] | None = None
) -> TopicBounds:
    """offset_bounds plus the topic id, with one consumer."""
    with open_consumer(
        bootstrap,
        fetch_max_wait_ms=_PROBE_WAIT_MS,
        max_partition_fetch_bytes=_PROBE_FETCH_BYTES,
        fetch_max_bytes=_PROBE_FETCH_BYTES * 16,
    ) as consumer:
        # Partitions from the metadata (also when given): that request brings the topic id.
        present = _partitions(consumer, topic)
        ids = sorted(partitions) if partitions is not None else present
        if not ids or not present:
            raise KafkaOffsetsError(f"topic {topic!r} does not exist at {bootstrap}")
        tps = [TopicPartition(topic, p) for p in ids]
        earliest = {tp: int(o) for tp, o in consumer.beginning_offsets(tps).items()}
        listed = {tp: int(o) for tp, o in consumer.end_offsets(tps).items()}
        marks = _high_watermarks(consumer, tps, listed)
        return TopicBounds(
            {tp.partition: earliest[tp] for tp in tps},
            {tp.partition: max(listed[tp], marks[tp]) for tp in tps},
            topic_id_of(consumer, topic),
        )


def current_topic_id(bootstrap: str, topic: str) -> str | None:
    """The topic's id now (None: no such topic, or a broker without topic ids)."""
    with open_consumer(bootstrap) as consumer:
        return topic_id_of(consumer, topic) if _partitions(consumer, topic) else None


# Offsets for a time -----------------------------------------------------------------------------


def _records_from(
    consumer: KafkaConsumer, tp: TopicPartition, offset: int, end: int, timeout_s: float = 10.0
) -> list[tuple[int, int]]:
    """(offset, timestamp) of the records that one fetch returns from offset, below end."""
    consumer.seek(tp, offset)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        records = consumer.poll(timeout_ms=200, max_records=10_000).get(tp, [])
        if records:
            return [(r.offset, r.timestamp) for r in records if r.offset < end]
        if consumer.position(tp) >= end:
            return []  # only control records or compacted-away offsets up to the end
    raise KafkaOffsetsError(f"no records came back from {tp.topic}/{tp.partition} at {offset}")


def _first_at_or_after(
    consumer: KafkaConsumer, tp: TopicPartition, timestamp_ms: int, lo: int, hi: int
) -> int:
    """Smallest offset in [lo, hi] whose record has timestamp >= timestamp_ms (hi when none).

    Binary search assumes timestamps do not decrease within a partition, which holds for
    LogAppendTime and for CreateTime from well-behaved producers. Each probe fetches a whole
    batch and uses all of its records, so the search needs few round trips.
    """
    while lo < hi:
        mid = (lo + hi) // 2
        records = _records_from(consumer, tp, mid, hi)
        if not records:
            hi = mid
            continue
        index = next((i for i, (_, ts) in enumerate(records) if ts >= timestamp_ms), None)
        if index is None:
            lo = records[-1][0] + 1
        elif index == 0:
            # Offsets [mid, first record) hold nothing, so the answer is at or before mid.
            hi = mid
        else:
            return records[index][0]
    return lo


def offsets_for_time(
    bootstrap: str,
    topic: str,
    timestamp_ms: int,
    partitions: Iterable[int] | None = None,
    *,
    earliest: Mapping[int, int] | None = None,
    end: Mapping[int, int] | None = None,
) -> dict[int, int]:
    """Per partition, the first offset whose record timestamp is >= timestamp_ms (else the end).

    The broker's offsets_for_times answer is used when one probe confirms it (Kafka's time
    index also handles out-of-order CreateTime); otherwise (Tansu always answers 0) the offset
    is found by a client-side binary search over record timestamps.
    """
    if earliest is None or end is None:
        earliest, end = offset_bounds(bootstrap, topic, partitions)
    ids = sorted(partitions) if partitions is not None else sorted(end)
    result: dict[int, int] = {}
    with open_consumer(
        bootstrap,
        fetch_max_wait_ms=_PROBE_WAIT_MS,
        max_partition_fetch_bytes=_PROBE_FETCH_BYTES,
    ) as consumer:
        tps = [TopicPartition(topic, p) for p in ids]
        try:
            answers = consumer.offsets_for_times(dict.fromkeys(tps, int(timestamp_ms)))
        except KafkaError:
            answers = {}
        for tp in tps:
            lo, hi = earliest[tp.partition], end[tp.partition]
            consumer.assign([tp])
            answer = answers.get(tp)
            if lo >= hi:
                result[tp.partition] = hi
                continue
            if answer is not None and lo <= answer.offset < hi:
                # Confirm: the record at the answer is late enough and the one before is not.
                records = _records_from(consumer, tp, max(lo, answer.offset - 1), hi)
                before = [ts for o, ts in records if o < answer.offset]
                at = [ts for o, ts in records if o == answer.offset]
                if at and at[0] >= timestamp_ms and all(ts < timestamp_ms for ts in before):
                    result[tp.partition] = answer.offset
                    continue
            result[tp.partition] = _first_at_or_after(consumer, tp, int(timestamp_ms), lo, hi)
    return result


# Data loss ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gap:
    """Offsets a reader would resume from that the broker no longer holds."""

    topic: str
    partition: int
    checkpoint: int  # the offset the reader would resume from
    earliest: int | None  # first offset still on the broker (None: the partition is gone)
    end: int | None  # offset after the last record on the broker (None: the partition is gone)

    @property
    def kind(self) -> str:
        """`retention` (checkpoint below earliest), `reset` (above end) or `missing`."""
        if self.earliest is None or self.end is None:
            return "missing"
        return "retention" if self.checkpoint < self.earliest else "reset"

    @property
    def lost_records(self) -> int | None:
        """Records known to be lost (retention), None when unknowable (a reset broker)."""
        if self.kind == "retention" and self.earliest is not None:
            return self.earliest - self.checkpoint
        return None

    @property
    def resume_offset(self) -> int | None:
        """Where a reader that continues despite the gap resumes: the earliest offset."""
        return self.earliest

    def describe(self) -> str:
        """One sentence naming the topic, the partition and both offsets."""
        where = f"topic {self.topic!r} partition {self.partition}"
        if self.kind == "missing":
            return (
                f"data loss on {where}: the checkpoint is at offset {self.checkpoint} but the "
                "partition no longer exists on the broker (topic deleted or recreated)"
            )
        if self.kind == "retention":
            return (
                f"data loss on {where}: the checkpoint is at offset {self.checkpoint} but the "
                f"earliest offset on the broker is {self.earliest} "
                f"({self.lost_records} records removed, e.g. by retention)"
            )
        return (
            f"data loss on {where}: the checkpoint is at offset {self.checkpoint} but the "
            f"broker's end offset is {self.end} (earliest {self.earliest}): the broker or "
            "topic was reset (e.g. a restarted in-memory broker) and records may be missing"
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form, e.g. for Dagster metadata."""
        return {**asdict(self), "kind": self.kind, "lost_records": self.lost_records}


def find_data_loss(
    checkpoint: Mapping[int, int],
    earliest: Mapping[int, int],
    end: Mapping[int, int],
    *,
    topic: str,
) -> list[Gap]:
    """Gaps between resume offsets and the broker: below earliest, above end, or partition gone."""
    gaps: list[Gap] = []
    for partition in sorted(checkpoint):
        offset = int(checkpoint[partition])
        first, last = earliest.get(partition), end.get(partition)
        if first is None or last is None:
            gaps.append(Gap(topic, partition, offset, None, None))
        elif offset < first or offset > last:
            gaps.append(Gap(topic, partition, offset, int(first), int(last)))
    return gaps


def check_data_loss(
    bootstrap: str, topic: str, checkpoint: Mapping[int, int], *, topic_id: str | None = None
) -> list[Gap]:
    """find_data_loss against the broker's current offsets (e.g. before a run, for metadata).

    `topic_id`: the incarnation the checkpoint is of. Offsets of another incarnation than the
    broker's are no gap on this topic (the source reads the new one from its start; what the old
    one lost is `lambda_arch.ingest.incarnations`' to count): [] then.
    """
    present = partitions_of(bootstrap, topic)
    if not present:
        return find_data_loss(checkpoint, {}, {}, topic=topic)
    bounds = topic_bounds(bootstrap, topic, present)
    if topic_id is not None and bounds.topic_id is not None and topic_id != bounds.topic_id:
        return []
    return find_data_loss(checkpoint, bounds.earliest, bounds.end, topic=topic)


def describe_gaps(gaps: Iterable[Gap]) -> str:
    """All gaps, one sentence each, for an error message or a log line."""
    return "; ".join(gap.describe() for gap in gaps)
