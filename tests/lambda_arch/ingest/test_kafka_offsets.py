"""Kafka offsets with plain kafka-python on a real Tansu broker: partitions, earliest and end
offsets (Fetch high watermark: Tansu under-reports ListOffsets LATEST), offsets for a time
(client-side binary search: Tansu answers 0), and data-loss gaps."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from kafka import TopicPartition

from lambda_arch.ingest.kafka_offsets import (
    Gap,
    KafkaOffsetsError,
    check_data_loss,
    describe_gaps,
    earliest_offsets,
    end_offsets,
    find_data_loss,
    offset_bounds,
    offsets_for_time,
    open_consumer,
    partitions_of,
)
from lambda_arch.ingest.producer import ensure_topic
from lambda_arch.runtime.broker import EmbeddedBroker, free_port
from tests.kafka_helpers import (
    BASE_MS,
    Produced,
    Sent,
    produce,
    produce_mixed_topic,
)


@pytest.fixture(scope="module")
def produced(broker: EmbeddedBroker) -> Produced:
    return produce_mixed_topic(broker.bootstrap_servers, "test-offsets")


def first_at(produced: Produced, ts: int) -> dict[int, int]:
    """Per partition, the offset of the first record sent with timestamp >= ts (else the end)."""
    return {
        p: next((i for i, r in enumerate(rs) if r.timestamp_ms >= ts), len(rs))
        for p, rs in produced.partitions.items()
    }


def test_end_offsets_equal_produced_counts(broker: EmbeddedBroker, produced: Produced) -> None:
    bootstrap = broker.bootstrap_servers
    assert partitions_of(bootstrap, produced.topic) == [0, 1, 2, 3]
    assert end_offsets(bootstrap, produced.topic) == produced.counts
    assert earliest_offsets(bootstrap, produced.topic) == dict.fromkeys(range(4), 0)
    assert partitions_of(bootstrap, "no-such-topic-" + uuid.uuid4().hex[:6]) == []


def test_end_offsets_of_empty_partitions(broker: EmbeddedBroker, topic: str) -> None:
    ensure_topic(broker.bootstrap_servers, topic, 3)
    assert end_offsets(broker.bootstrap_servers, topic) == {0: 0, 1: 0, 2: 0}


def test_end_offsets_take_the_fetch_high_watermark_not_list_offsets(
    broker: EmbeddedBroker, produced: Produced
) -> None:
    """Whatever ListOffsets(LATEST) says, the end is exactly what was produced."""
    bootstrap = broker.bootstrap_servers
    with open_consumer(bootstrap) as consumer:
        tps = [TopicPartition(produced.topic, p) for p in range(4)]
        listed = {tp.partition: o for tp, o in consumer.end_offsets(tps).items()}
    ours = end_offsets(bootstrap, produced.topic)
    assert ours == produced.counts
    assert all(listed[p] <= ours[p] for p in ours)  # at most the truth (Tansu: below it)
    # A subset of partitions, and both bounds with one consumer.
    assert end_offsets(bootstrap, produced.topic, [3, 1]) == {
        1: produced.counts[1],
        3: produced.counts[3],
    }
    assert earliest_offsets(bootstrap, produced.topic, [2]) == {2: 0}
    assert offset_bounds(bootstrap, produced.topic) == (dict.fromkeys(range(4), 0), ours)


def test_a_missing_topic_is_an_error_or_a_missing_gap_and_is_not_created(
    broker: EmbeddedBroker,
) -> None:
    """The broker's metadata answer without the topic settles it: no waiting (was 10 s each)."""
    bootstrap, missing = broker.bootstrap_servers, "no-such-topic-" + uuid.uuid4().hex[:6]
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        asked = [pool.submit(ask, bootstrap, missing) for ask in (end_offsets, earliest_offsets)]
        asked.append(pool.submit(offset_bounds, bootstrap, missing))
        gaps = pool.submit(check_data_loss, bootstrap, missing, {0: 4, 1: 0})
        for future in asked:
            with pytest.raises(KafkaOffsetsError, match=f"topic '{missing}' does not exist"):
                future.result()
        assert [(g.partition, g.kind) for g in gaps.result()] == [(0, "missing"), (1, "missing")]
    assert time.monotonic() - started < 5
    assert partitions_of(bootstrap, missing, timeout_s=0.5) == []  # still not auto-created


def test_open_consumer_names_an_unreachable_broker() -> None:
    closed = f"127.0.0.1:{free_port()}"
    with (
        pytest.raises(KafkaOffsetsError, match=f"no Kafka broker answered at {closed}"),
        open_consumer(closed, bootstrap_timeout_ms=500),
    ):
        pass


def test_offsets_for_time_binary_search(broker: EmbeddedBroker, produced: Produced) -> None:
    bootstrap = broker.bootstrap_servers
    for ts in (BASE_MS - 1, BASE_MS + 10 * 777 + 3, BASE_MS + 10 * 1500, BASE_MS + 10 * 5000):
        assert offsets_for_time(bootstrap, produced.topic, ts) == first_at(produced, ts), ts


def test_offsets_for_time_at_exact_timestamps_and_with_given_bounds(
    broker: EmbeddedBroker, produced: Produced
) -> None:
    """Exact record timestamps (>= is inclusive), the first and the last record of the
    topic, the plain/gzip boundary, a subset of partitions, and bounds passed in."""
    bootstrap = broker.bootstrap_servers
    earliest, end = offset_bounds(bootstrap, produced.topic)
    for sequence in (0, 1, 1199, 1200, 1999):
        ts = BASE_MS + 10 * sequence
        want = first_at(produced, ts)
        assert offsets_for_time(bootstrap, produced.topic, ts) == want, sequence
        got = offsets_for_time(bootstrap, produced.topic, ts, [1], earliest=earliest, end=end)
        assert got == {1: want[1]}, sequence


def test_offsets_for_time_of_empty_partitions_is_their_end(
    broker: EmbeddedBroker, topic: str
) -> None:
    bootstrap = broker.bootstrap_servers
    ensure_topic(bootstrap, topic, 2)
    produce(bootstrap, topic, [Sent(0, b"k", b"v", BASE_MS + i) for i in range(5)])
    assert offsets_for_time(bootstrap, topic, BASE_MS + 2) == {0: 2, 1: 0}
    assert offsets_for_time(bootstrap, topic, BASE_MS + 100) == {0: 5, 1: 0}


def test_find_data_loss_names_topic_partition_and_offsets() -> None:
    gaps = find_data_loss(
        {0: 5, 1: 40, 2: 900, 3: 7},
        {0: 0, 1: 100, 2: 0},
        {0: 10, 1: 150, 2: 20},
        topic="plays",
    )
    assert [(g.partition, g.kind) for g in gaps] == [(1, "retention"), (2, "reset"), (3, "missing")]
    retention, reset, missing = gaps
    assert retention.lost_records == 60 and retention.resume_offset == 100
    for text in ("topic 'plays' partition 1", "offset 40", "earliest offset on the broker is 100"):
        assert text in retention.describe()
    for text in ("partition 2", "offset 900", "end offset is 20"):
        assert text in reset.describe()
    assert "no longer exists" in missing.describe()
    assert reset.as_dict()["kind"] == "reset"
    assert find_data_loss({0: 10}, {0: 0}, {0: 10}, topic="plays") == []


def test_gap_is_a_value() -> None:
    gap = Gap("t", 0, 5, 10, 20)
    assert {gap} == {Gap("t", 0, 5, 10, 20)}  # hashable: logged once per gap


def test_gap_fields_and_describe_gaps() -> None:
    reset, missing = Gap("t", 2, 900, 0, 20), Gap("t", 3, 7, None, None)
    assert reset.lost_records is None and reset.resume_offset == 0  # unknowable after a reset
    assert missing.kind == "missing" and missing.resume_offset is None
    assert missing.as_dict() == {
        "topic": "t",
        "partition": 3,
        "checkpoint": 7,
        "earliest": None,
        "end": None,
        "kind": "missing",
        "lost_records": None,
    }
    assert describe_gaps([reset, missing]) == f"{reset.describe()}; {missing.describe()}"
    assert describe_gaps([]) == ""


def test_check_data_loss_against_the_broker(broker: EmbeddedBroker, produced: Produced) -> None:
    bootstrap, counts = broker.bootstrap_servers, produced.counts
    assert check_data_loss(bootstrap, produced.topic, counts) == []  # caught up
    assert check_data_loss(bootstrap, produced.topic, {0: 0, 1: 1}) == []
    beyond = {0: counts[0] + 5, 1: counts[1], 7: 3}  # past the end; a partition that is gone
    assert check_data_loss(bootstrap, produced.topic, beyond) == [
        Gap(produced.topic, 0, counts[0] + 5, 0, counts[0]),
        Gap(produced.topic, 7, 3, None, None),
    ]
