"""The Spark twin of the play-event schema: `parse_events` against `schema.parse_payload`.

Every payload of test_schema's table (CASES: valid events, every rejection reason, the edge cases
of event_time) is parsed both ways and must get the same verdict, reason and normalized values,
row by row, with a BINARY and a STRING value column and under a non-UTC session time zone; so
must generated traffic and seeded random event times. Then the fast path's pattern, and how
parse_events treats the other columns of its input.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from lambda_arch.ingest.schema import (
    FIELD_ORDER,
    MAX_EVENT_TIME_MS,
    REASON_EMPTY,
    REASON_FUTURE,
    REASON_INVALID_JSON,
    REASON_INVALID_UTF8,
    REASON_NOT_OBJECT,
    REASON_TOO_LARGE,
    PlayEvent,
    Rejection,
    invalid_value,
    missing,
    out_of_range,
    parse_payload,
    wrong_type,
)
from tests.lambda_arch.ingest.test_schema import BASE_TIME, CASES, IDS, Case, doc

VARIANTS = {
    "binary-UTC": ("binary", "UTC"),
    "string-UTC": ("string", "UTC"),
    "binary-New_York": ("binary", "America/New_York"),
}


def _as_row(result: PlayEvent | Rejection) -> dict[str, Any]:
    """A pure-module result in the shape of a parse_events row (event_time as epoch micros)."""
    if isinstance(result, Rejection):
        return {"quarantine_reason": result.reason, "event": None}
    values = result.to_dict()
    delta = result.event_time - datetime(1970, 1, 1, tzinfo=UTC)
    values["event_time"] = delta // timedelta(microseconds=1)
    return {"quarantine_reason": None, "event": values}


@pytest.fixture(scope="module", params=list(VARIANTS), ids=list(VARIANTS))
def spark_rows(request: pytest.FixtureRequest, spark: Any) -> Iterator[dict[str, dict[str, Any]]]:
    """parse_events over every case at once, per variant: case id -> row in _as_row's shape."""
    from pyspark.sql import functions as F

    from lambda_arch.ingest.spark_schema import SPARK_EVENT_COLUMNS, parse_events

    column_type, time_zone = VARIANTS[request.param]
    previous = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", time_zone)
    try:
        frame = spark.createDataFrame(
            [(case.id, case.payload, case.record_time_ms) for case in CASES],
            "case string, value binary, record_ms bigint",
        )
        # The record timestamp as the Kafka source gives it: a TIMESTAMP (NULL: unknown).
        frame = frame.select("case", "value", F.timestamp_millis("record_ms").alias("timestamp"))
        if column_type == "string":
            frame = frame.withColumn("value", F.col("value").cast("string"))
        parsed = parse_events(frame, timestamp_col="timestamp")
        assert parsed.columns == [
            "case",
            "value",
            "timestamp",
            *SPARK_EVENT_COLUMNS,
            "quarantine_reason",
        ]
        types = dict(parsed.dtypes)
        assert [types[name] for name in SPARK_EVENT_COLUMNS] == [
            "string",
            "string",
            "timestamp",
            "bigint",
            "bigint",
            "string",
            "string",
            "string",
            "bigint",
        ]
        columns = [
            F.unix_micros("event_time").alias("event_time") if name == "event_time" else name
            for name in SPARK_EVENT_COLUMNS
        ]
        rows = parsed.select("case", "quarantine_reason", *columns).collect()
    finally:
        spark.conf.set("spark.sql.session.timeZone", previous)
    result = {}
    for row in rows:
        values = {name: row[name] for name in SPARK_EVENT_COLUMNS}
        if row["quarantine_reason"] is not None:
            assert set(values.values()) == {None}, "a quarantined row has no event values"
            result[row["case"]] = {"quarantine_reason": row["quarantine_reason"], "event": None}
        else:
            result[row["case"]] = {"quarantine_reason": None, "event": values}
    assert len(result) == len(CASES)
    yield result


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_spark_twin_matches_pure_module(case: Case, spark_rows: dict[str, dict[str, Any]]) -> None:
    assert spark_rows[case.id] == _as_row(parse_payload(case.payload, case.record_time_ms))


def test_canonical_shape_takes_the_fast_path() -> None:
    """The producers' compact JSON is canonical (parsed with from_json); anything that could
    parse differently is not, and takes the general path (both checked above against schema.py).
    Python's re reads the pattern (possessive quantifiers included) as Java's regex does."""
    import itertools
    import re

    from lambda_arch.ingest.generator import TrafficConfig, generate
    from lambda_arch.ingest.spark_schema import CANONICAL_PATTERN

    canonical = re.compile(CANONICAL_PATTERN)
    generated = [
        r.value.decode()
        for r in itertools.islice(generate(TrafficConfig(seed=1, start=BASE_TIME)), 2000)
        if r.kind == "event" and b"app_version" not in r.value
    ]
    assert generated and all(canonical.search(text) for text in generated)
    for payload in (doc(), doc(event_time=1_772_368_496_789), doc(device="tv", position_ms=0)):
        assert canonical.search(payload.decode())
    base = doc().decode()
    assert '"member_id":7,' in base

    def changed(old: str, new: str) -> str:
        return base.replace(old, new, 1)

    for payload in (
        changed('"member_id":7', '"member_id":7,"member_id":8'),  # a repeated key
        changed('"member_id":7', '"member_id":1234567890123456789'),  # 19 digits
        changed('"member_id":7', '"member_id":-7'),
        changed('"member_id":7', '"member_id":7.0'),
        changed('"member_id":7', '"member_id":07'),
        changed('"member_id":7', '"member_id":null'),
        changed('"e-1"', '"e\\u0031"'),  # an escape
        changed('"e-1"', '"e\t1"'),  # a raw control character
        changed('"member_id":7', '"member_id": 7'),  # whitespace
        changed('"member_id":7', '"x":1,"member_id":7'),  # an unknown field
        changed('"member_id":7,"title_id":42', '"title_id":42,"member_id":7'),  # order
        base + "\n",
        " " + base,
    ):
        assert not canonical.search(payload), payload


def parse_both(spark: Any, payloads: list[bytes | None]) -> list[tuple[Any, Any]]:
    """(Spark row, pure-module row) per payload, in _as_row's shape."""
    from pyspark.sql import functions as F

    from lambda_arch.ingest.spark_schema import SPARK_EVENT_COLUMNS, parse_events

    frame = spark.createDataFrame(list(enumerate(payloads)), "i int, value binary")
    columns = [
        F.unix_micros("event_time").alias("event_time") if name == "event_time" else name
        for name in SPARK_EVENT_COLUMNS
    ]
    rows = parse_events(frame).select("i", "quarantine_reason", *columns).collect()
    got = {}
    for row in rows:
        values = {name: row[name] for name in SPARK_EVENT_COLUMNS}
        reason = row["quarantine_reason"]
        got[row["i"]] = {"quarantine_reason": reason, "event": None if reason else values}
    return [(got[i], _as_row(parse_payload(p))) for i, p in enumerate(payloads)]


# Every reason the pure module can give (FIELD_ORDER's rules), each of which CASES exercises.
REQUIRED = ("event_id", "event_type", "event_time", "member_id", "title_id", "country")
EVERY_REASON = {
    REASON_EMPTY,
    REASON_TOO_LARGE,
    REASON_INVALID_UTF8,
    REASON_INVALID_JSON,
    REASON_NOT_OBJECT,
    REASON_FUTURE,
    *(missing(field) for field in REQUIRED),
    *(wrong_type(field) for field in FIELD_ORDER),
    *(invalid_value(field) for field in ("event_id", "event_type", "event_time", "country")),
    *(invalid_value(field) for field in ("device", "discovery_source")),
    *(out_of_range(field) for field in ("member_id", "title_id", "position_ms")),
}


def test_the_twin_gives_every_rejection_reason(spark_rows: dict[str, dict[str, Any]]) -> None:
    given = {row["quarantine_reason"] for row in spark_rows.values()} - {None}
    assert given == EVERY_REASON
    valid = {case.id for case in CASES if isinstance(case.expected, PlayEvent)}
    assert {case for case, row in spark_rows.items() if row["event"] is not None} == valid


def random_event_time(rng: random.Random) -> Any:
    """An event_time near or across every boundary the rules have, as ISO text or epoch ms."""
    if rng.random() < 0.25:
        near_ends = [rng.randrange(-5, 5), MAX_EVENT_TIME_MS + rng.randrange(-5, 5)]
        return rng.choice(
            [*near_ends, rng.randrange(MAX_EVENT_TIME_MS), str(rng.randrange(10**13))]
        )
    year = rng.choice([1969, 1970, 2000, 2024, 2026, 2100, 9999, rng.randrange(1, 10000)])
    month, day = rng.randrange(0, 14), rng.randrange(0, 33)
    hour, minute, second = rng.randrange(0, 26), rng.randrange(0, 61), rng.randrange(0, 62)
    separator = rng.choice("TTTt ")
    fraction = "." + "".join(rng.choices("0123456789", k=rng.randrange(1, 10)))
    offset_hours = rng.randrange(0, 25)
    offset = f"{offset_hours:02d}:{rng.randrange(0, 60):02d}"
    zone = rng.choice(["Z", "z", f"+{offset}", f"-{offset}", "", "+0100"])
    return (
        f"{year:04d}-{month:02d}-{day:02d}{separator}{hour:02d}:{minute:02d}:{second:02d}"
        f"{fraction if rng.random() < 0.6 else ''}{zone}"
    )


def test_the_twin_agrees_on_random_event_times_and_generated_traffic(spark: Any) -> None:
    import itertools

    from lambda_arch.ingest.generator import TrafficConfig, generate

    rng = random.Random(20261)
    timed = [doc(event_time=random_event_time(rng)) for _ in range(1500)]
    config = TrafficConfig(
        seed=7, start=BASE_TIME, duplicate_rate=0.05, late_rate=0.1, malformed_rate=0.2
    )
    traffic = [r.value for r in itertools.islice(generate(config), 2000)]
    pairs = parse_both(spark, timed + traffic)
    disagreements = [(p, s, w) for p, (s, w) in zip(timed + traffic, pairs, strict=True) if s != w]
    assert disagreements == []
    verdicts = [w["quarantine_reason"] for _, w in pairs]
    # Both verdicts occur in both sets (the comparison is not vacuous).
    assert {None, invalid_value("event_time")} <= set(verdicts[:1500])
    assert None in verdicts[1500:] and len(set(verdicts[1500:])) > 3


def test_other_columns_are_kept_and_event_columns_replaced(spark: Any) -> None:
    from lambda_arch.ingest.spark_schema import (
        QUARANTINE_REASON_COLUMN,
        SPARK_EVENT_COLUMNS,
        parse_events,
    )

    frame = spark.createDataFrame(
        [(1, "stale", "old", doc()), (2, "stale", "old", b"{}")],
        "offset long, event_id string, quarantine_reason string, payload binary",
    )
    parsed = parse_events(frame, value_col="payload")
    assert parsed.columns == ["offset", "payload", *SPARK_EVENT_COLUMNS, QUARANTINE_REASON_COLUMN]
    rows = {row["offset"]: row for row in parsed.collect()}
    assert rows[1]["event_id"] == "e-1" and rows[1][QUARANTINE_REASON_COLUMN] is None
    assert rows[1]["event_time"].astimezone(UTC) == BASE_TIME  # session time zone UTC
    assert rows[2]["event_id"] is None and rows[2][QUARANTINE_REASON_COLUMN] == missing("event_id")
    with pytest.raises(TypeError, match="offset must be BINARY or STRING, not bigint"):
        parse_events(frame, value_col="offset")
    with pytest.raises(TypeError, match="offset must be TIMESTAMP, not bigint"):
        parse_events(frame, value_col="payload", timestamp_col="offset")
