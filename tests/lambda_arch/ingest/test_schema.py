"""The play-event schema on one table of payloads (CASES).

The pure module gives each case's expected result, for bytes and str payloads. The same table
checks the Spark twin (`parse_events`) in test_spark_schema.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from lambda_arch.common.times import epoch_millis
from lambda_arch.ingest.schema import (
    DEFAULT_MAX_CLOCK_SKEW_MIN,
    INT64_MAX,
    INT64_MIN,
    MAX_EVENT_TIME_MS,
    MAX_JSON_DEPTH,
    MAX_KEY_UTF16_UNITS,
    MAX_NUMBER_DIGITS,
    MAX_PAYLOAD_BYTES,
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

_DROP = object()  # marks a field to leave out of a document
BASE: dict[str, Any] = {
    "event_id": "e-1",
    "event_type": "play_start",
    "event_time": "2026-03-01T12:34:56.789Z",
    "member_id": 7,
    "title_id": 42,
    "country": "US",
}
BASE_TIME = datetime(2026, 3, 1, 12, 34, 56, 789_000, tzinfo=UTC)


def doc(**changes: Any) -> bytes:
    """The base event with fields changed (or dropped with _DROP), as compact JSON bytes."""
    document = {**BASE, **changes}
    document = {key: value for key, value in document.items() if value is not _DROP}
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def raw(**changes: str) -> bytes:
    """The base event with fields replaced by raw JSON text (for what json.dumps cannot write)."""
    parts = [f'"{key}":{json.dumps(value)}' for key, value in BASE.items() if key not in changes]
    parts += [f"{json.dumps(key)}:{text}" for key, text in changes.items()]
    return ("{" + ",".join(parts) + "}").encode()


def event(event_time: datetime = BASE_TIME, **changes: Any) -> PlayEvent:
    """The normalized base event with fields changed."""
    values: dict[str, Any] = {
        "event_id": "e-1",
        "event_type": "play_start",
        "member_id": 7,
        "title_id": 42,
        "country": "US",
        "device": "other",
        "discovery_source": "other",
        "position_ms": None,
    }
    return PlayEvent(event_time=event_time, **{**values, **changes})


def at(text: str) -> PlayEvent:
    """The base event at an ISO time given as the expected UTC instant."""
    return event(datetime.fromisoformat(text).astimezone(UTC))


def nested(levels: int) -> bytes:
    """The base event with an unknown field nested so that the document has `levels` levels."""
    return raw(x="[" * (levels - 1) + "]" * (levels - 1))


@dataclass(frozen=True)
class Case:
    id: str
    payload: bytes | None
    expected: PlayEvent | str  # an event, or the rejection reason
    # The Kafka record timestamp (epoch ms) the payload came with; None: unknown (no future rule).
    record_time_ms: int | None = None


BASE_MS = 1_772_368_496_789  # BASE_TIME in epoch milliseconds
SKEW_MS = DEFAULT_MAX_CLOCK_SKEW_MIN * 60_000


ONE_MIB = MAX_PAYLOAD_BYTES
CASES: list[Case] = [
    # --- valid events -------------------------------------------------------------------------
    Case("minimal", doc(), event()),
    Case(
        "full",
        doc(
            event_type="play_heartbeat", device="tv", discovery_source="top_10", position_ms=120_000
        ),
        event(
            event_type="play_heartbeat", device="tv", discovery_source="top_10", position_ms=120_000
        ),
    ),
    Case("iso Z no fraction", doc(event_time="2026-03-01T12:34:56Z"), at("2026-03-01T12:34:56Z")),
    Case("iso lower t and z", doc(event_time="2026-03-01t12:34:56z"), at("2026-03-01T12:34:56Z")),
    Case("iso +HH:MM", doc(event_time="2026-03-01T14:04:56+01:30"), at("2026-03-01T12:34:56Z")),
    Case(
        "iso -HH:MM crosses date",
        doc(event_time="2026-02-28T23:34:56-13:00"),
        at("2026-03-01T12:34:56Z"),
    ),
    Case("iso +23:59", doc(event_time="2026-03-01T00:00:00+23:59"), at("2026-02-28T00:01:00Z")),
    Case("iso space separator", doc(event_time="2026-03-01 12:34:56Z"), at("2026-03-01T12:34:56Z")),
    *[
        Case(
            f"iso fraction {digits} digits",
            doc(event_time="2026-03-01T12:34:56." + "987654321"[:digits] + "Z"),
            at("2026-03-01T12:34:56." + ("987654321"[:digits] + "00000")[:6] + "+00:00"),
        )
        for digits in range(1, 10)
    ],
    Case(
        "iso fraction truncated not rounded",
        doc(event_time="2026-03-01T23:59:59.9999999Z"),
        at("2026-03-01T23:59:59.999999+00:00"),
    ),
    Case("iso leap day", doc(event_time="2024-02-29T00:00:00Z"), at("2024-02-29T00:00:00Z")),
    Case(
        "iso offset lands on epoch",
        doc(event_time="1969-12-31T23:00:00-01:00"),
        at("1970-01-01T00:00:00Z"),
    ),
    Case(
        "iso last instant",
        doc(event_time="9999-12-30T23:59:59.999999Z"),
        at("9999-12-30T23:59:59.999999+00:00"),
    ),
    Case("epoch ms", doc(event_time=1_772_368_496_789), event()),
    Case("epoch ms zero", doc(event_time=0), event(datetime(1970, 1, 1, tzinfo=UTC))),
    Case(
        "epoch ms last",
        doc(event_time=MAX_EVENT_TIME_MS - 1),
        event(datetime(9999, 12, 30, 23, 59, 59, 999_000, tzinfo=UTC)),
    ),
    Case(
        "null optional fields", doc(device=None, discovery_source=None, position_ms=None), event()
    ),
    Case("position zero", doc(position_ms=0), event(position_ms=0)),
    Case(
        "ids at int64 max",
        doc(member_id=INT64_MAX, title_id=0),
        event(member_id=INT64_MAX, title_id=0),
    ),
    Case(
        "unknown fields ignored",
        raw(extra='{"nested":[1,2.5,null,true,"x"]}', z='"y"', big="1" + "0" * 40, f="1e400"),
        event(),
    ),
    Case("whitespace around document", b" \n\t" + doc() + b"\r\n ", event()),
    Case("unicode event_id", doc(event_id="é-😀-\u2028"), event(event_id="é-😀-\u2028")),
    Case("escaped surrogate pair", raw(event_id='"\\ud83d\\ude00"'), event(event_id="😀")),
    Case("escaped backslash before u", raw(x='"\\\\ud800"'), event()),
    Case("nesting at the limit", nested(MAX_JSON_DEPTH), event()),
    Case("1000-digit integer", raw(x="9" * MAX_NUMBER_DIGITS), event()),
    Case("1000-digit fraction after 0", raw(x="-0." + "9" * MAX_NUMBER_DIGITS), event()),
    Case("1000 digits with exponent", raw(x="1.5e" + "9" * (MAX_NUMBER_DIGITS - 2)), event()),
    Case("longest key", raw(**{"k" * MAX_KEY_UTF16_UNITS: "1"}), event()),
    Case("longest key in UTF-16 units", raw(**{"😀" * (MAX_KEY_UTF16_UNITS // 2): "1"}), event()),
    Case("largest payload", doc()[:-1] + b" " * (ONE_MIB - len(doc())) + b"}", event()),
    # --- not a JSON object --------------------------------------------------------------------
    Case("null payload", None, REASON_EMPTY),
    Case("empty payload", b"", REASON_EMPTY),
    Case("too large", doc()[:-1] + b" " * (ONE_MIB + 1 - len(doc())) + b"}", REASON_TOO_LARGE),
    Case("bad UTF-8 byte", b"\xff" + doc(), REASON_INVALID_UTF8),
    Case(
        "overlong UTF-8", doc(event_id="\x00").replace(b"\\u0000", b"\xc0\x80"), REASON_INVALID_UTF8
    ),
    Case(
        "UTF-8 encoded surrogate",
        doc(event_id="a").replace(b'"a"', b'"\xed\xa0\x80"'),
        REASON_INVALID_UTF8,
    ),
    Case("truncated UTF-8", doc(event_id="é").replace("é".encode(), b"\xc3"), REASON_INVALID_UTF8),
    Case("whitespace only", b" \n ", REASON_INVALID_JSON),
    Case("truncated JSON", doc()[:-1], REASON_INVALID_JSON),
    Case("trailing word", doc() + b" x", REASON_INVALID_JSON),
    Case("trailing brace", doc() + b"}", REASON_INVALID_JSON),
    Case("trailing bracket", doc() + b" ]", REASON_INVALID_JSON),
    Case("trailing comma and value", doc() + b",1", REASON_INVALID_JSON),
    Case("trailing comma", doc() + b",", REASON_INVALID_JSON),
    Case("two documents", doc() + doc(), REASON_INVALID_JSON),
    Case("trailing NUL", doc() + b"\x00", REASON_INVALID_JSON),
    Case("trailing comment", doc() + b" /* c */", REASON_INVALID_JSON),
    Case("BOM", b"\xef\xbb\xbf" + doc(), REASON_INVALID_JSON),
    Case("form feed before document", b"\x0c" + doc(), REASON_INVALID_JSON),
    Case("NaN", raw(position_ms="NaN"), REASON_INVALID_JSON),
    Case("Infinity", raw(x="-Infinity"), REASON_INVALID_JSON),
    Case("duplicate key", doc()[:-1] + b',"member_id":8}', REASON_INVALID_JSON),
    Case("duplicate nested key", raw(x='{"a":1,"a":1}'), REASON_INVALID_JSON),
    Case("lone high surrogate", raw(x='"\\ud800"'), REASON_INVALID_JSON),
    Case("lone low surrogate in event_id", raw(event_id='"a\\uDC00"'), REASON_INVALID_JSON),
    Case("lone surrogate in key", doc()[:-1] + b',"\\ud800":1}', REASON_INVALID_JSON),
    Case("escaped backslash then lone surrogate", raw(x='"\\\\\\ud800"'), REASON_INVALID_JSON),
    Case("single quotes", doc().replace(b'"e-1"', b"'e-1'"), REASON_INVALID_JSON),
    Case("trailing comma in object", doc()[:-1] + b",}", REASON_INVALID_JSON),
    Case("leading zero", raw(x="007"), REASON_INVALID_JSON),
    Case(
        "raw control character in string",
        doc(event_id="a\tb").replace(b"\\t", b"\t"),
        REASON_INVALID_JSON,
    ),
    Case("invalid escape", raw(x='"\\x41"'), REASON_INVALID_JSON),
    Case("nesting past the limit", nested(MAX_JSON_DEPTH + 1), REASON_INVALID_JSON),
    Case("1001-digit integer", raw(x="9" * (MAX_NUMBER_DIGITS + 1)), REASON_INVALID_JSON),
    Case("5000-digit integer", raw(x="-" + "9" * 5000), REASON_INVALID_JSON),
    Case("1001-digit fraction", raw(x="1." + "9" * MAX_NUMBER_DIGITS), REASON_INVALID_JSON),
    Case(
        "1001 digits with exponent",
        raw(x="1.5e-" + "9" * (MAX_NUMBER_DIGITS - 1)),
        REASON_INVALID_JSON,
    ),
    Case("key too long", raw(**{"k" * (MAX_KEY_UTF16_UNITS + 1): "1"}), REASON_INVALID_JSON),
    Case(
        "key too long in UTF-16 units",
        raw(**{"😀" * (MAX_KEY_UTF16_UNITS // 2 + 1): "1"}),
        REASON_INVALID_JSON,
    ),
    Case("value then bracket", b"1 ]", REASON_INVALID_JSON),
    Case("JSON array", b"[" + doc() + b"]", REASON_NOT_OBJECT),
    Case("JSON string", b'"play_start"', REASON_NOT_OBJECT),
    Case("JSON number", b"7", REASON_NOT_OBJECT),
    Case("JSON null", b" null ", REASON_NOT_OBJECT),
    Case("JSON true", b"true", REASON_NOT_OBJECT),
    # --- field rules, in FIELD_ORDER ----------------------------------------------------------
    Case("empty object", b"{}", missing("event_id")),
    Case("missing event_id", doc(event_id=_DROP), missing("event_id")),
    Case("null event_id", doc(event_id=None), missing("event_id")),
    Case("object event_id", doc(event_id={"id": "e-1"}), wrong_type("event_id")),
    Case("number event_id", doc(event_id=1), wrong_type("event_id")),
    Case("empty event_id", doc(event_id=""), invalid_value("event_id")),
    Case("missing event_type", doc(event_type=_DROP), missing("event_type")),
    Case("array event_type", doc(event_type=["play_start"]), wrong_type("event_type")),
    Case("unknown event_type", doc(event_type="play_pause"), invalid_value("event_type")),
    Case("upper-case event_type", doc(event_type="PLAY_START"), invalid_value("event_type")),
    Case("missing event_time", doc(event_time=_DROP), missing("event_time")),
    Case("null event_time", doc(event_time=None), missing("event_time")),
    Case("bool event_time", doc(event_time=True), wrong_type("event_time")),
    Case("float event_time", doc(event_time=1_772_368_496_789.0), wrong_type("event_time")),
    Case("exponent event_time", raw(event_time="1.772368496789e12"), wrong_type("event_time")),
    Case("event_time beyond int64", doc(event_time=2**64), wrong_type("event_time")),
    Case("event_time of 39 digits", doc(event_time=10**38), wrong_type("event_time")),
    Case("epoch ms negative", doc(event_time=-1), invalid_value("event_time")),
    Case("epoch ms at the end", doc(event_time=MAX_EVENT_TIME_MS), invalid_value("event_time")),
    Case("epoch ms int64 max", doc(event_time=INT64_MAX), invalid_value("event_time")),
    Case("epoch ms as string", doc(event_time="1772368496789"), invalid_value("event_time")),
    Case("iso without offset", doc(event_time="2026-03-01T12:34:56"), invalid_value("event_time")),
    Case("iso date only", doc(event_time="2026-03-01"), invalid_value("event_time")),
    Case("iso 30 February", doc(event_time="2026-02-30T00:00:00Z"), invalid_value("event_time")),
    Case(
        "iso 29 February 2100", doc(event_time="2100-02-29T00:00:00Z"), invalid_value("event_time")
    ),
    Case("iso hour 24", doc(event_time="2026-03-01T24:00:00Z"), invalid_value("event_time")),
    Case("iso leap second", doc(event_time="2016-12-31T23:59:60Z"), invalid_value("event_time")),
    Case("iso year 0000", doc(event_time="0000-01-01T00:00:00Z"), invalid_value("event_time")),
    Case("iso year 0001", doc(event_time="0001-01-01T00:00:00Z"), invalid_value("event_time")),
    Case(
        "iso before 1970",
        doc(event_time="1969-12-31T23:59:59.999999Z"),
        invalid_value("event_time"),
    ),
    Case(
        "iso offset before 1970",
        doc(event_time="1970-01-01T00:30:00+01:00"),
        invalid_value("event_time"),
    ),
    Case("iso at the end", doc(event_time="9999-12-31T00:00:00Z"), invalid_value("event_time")),
    Case(
        "iso offset past year 9999",
        doc(event_time="9999-12-31T23:00:00-23:00"),
        invalid_value("event_time"),
    ),
    Case(
        "iso offset 24:00", doc(event_time="2026-03-01T12:34:56+24:00"), invalid_value("event_time")
    ),
    Case(
        "iso offset without colon",
        doc(event_time="2026-03-01T12:34:56+0100"),
        invalid_value("event_time"),
    ),
    Case(
        "iso empty fraction", doc(event_time="2026-03-01T12:34:56.Z"), invalid_value("event_time")
    ),
    Case(
        "iso comma fraction", doc(event_time="2026-03-01T12:34:56,5Z"), invalid_value("event_time")
    ),
    Case(
        "iso trailing newline",
        doc(event_time="2026-03-01T12:34:56Z\n"),
        invalid_value("event_time"),
    ),
    Case(
        "iso trailing line separator",
        doc(event_time="2026-03-01T12:34:56Z\u2028"),
        invalid_value("event_time"),
    ),
    Case("iso leading space", doc(event_time=" 2026-03-01T12:34:56Z"), invalid_value("event_time")),
    Case(
        "iso non-ASCII digits",
        doc(event_time="\uff12026-03-01T12:34:56Z"),
        invalid_value("event_time"),
    ),
    Case("missing member_id", doc(member_id=_DROP), missing("member_id")),
    Case("bool member_id", doc(member_id=False), wrong_type("member_id")),
    Case("float member_id 7.0", doc(member_id=7.0), wrong_type("member_id")),
    Case("string member_id", doc(member_id="7"), wrong_type("member_id")),
    Case("exponent title_id", raw(title_id="1e2"), wrong_type("title_id")),
    Case("negative zero float member_id", raw(member_id="-0.0"), wrong_type("member_id")),
    Case("negative member_id", doc(member_id=-1), out_of_range("member_id")),
    Case("member_id at int64 min", doc(member_id=INT64_MIN), out_of_range("member_id")),
    Case("member_id beyond int64", doc(member_id=INT64_MAX + 1), wrong_type("member_id")),
    Case("member_id below int64", doc(member_id=INT64_MIN - 1), wrong_type("member_id")),
    Case("member_id of 40 digits", doc(member_id=10**39), wrong_type("member_id")),
    Case("negative zero member_id", raw(member_id="-0"), event(member_id=0)),
    Case("missing title_id", doc(title_id=_DROP), missing("title_id")),
    Case("null title_id", doc(title_id=None), missing("title_id")),
    Case("negative title_id", doc(title_id=-5), out_of_range("title_id")),
    Case("missing country", doc(country=_DROP), missing("country")),
    Case("number country", doc(country=1), wrong_type("country")),
    Case("lower-case country", doc(country="us"), invalid_value("country")),
    Case("unassigned country XX", doc(country="XX"), invalid_value("country")),
    Case("alpha-3 country", doc(country="USA"), invalid_value("country")),
    Case("number device", doc(device=1), wrong_type("device")),
    Case("unknown device", doc(device="toaster"), invalid_value("device")),
    Case("bool discovery_source", doc(discovery_source=False), wrong_type("discovery_source")),
    Case(
        "unknown discovery_source",
        doc(discovery_source="homepage"),
        invalid_value("discovery_source"),
    ),
    Case("float position_ms", doc(position_ms=1.5), wrong_type("position_ms")),
    Case("string position_ms", doc(position_ms="100"), wrong_type("position_ms")),
    Case("negative position_ms", doc(position_ms=-1), out_of_range("position_ms")),
    # --- the first broken rule wins -----------------------------------------------------------
    Case(
        "first of several broken rules",
        doc(event_type="x", member_id=-1, country="xx"),
        invalid_value("event_type"),
    ),
    Case("optional after required", doc(device="toaster", country="XX"), invalid_value("country")),
    # --- events from the future: event_time vs the Kafka record timestamp ---------------------
    Case("record time equal", doc(), event(), BASE_MS),
    Case("record time later (a late event)", doc(), event(), BASE_MS + 86_400_000),
    Case("ahead by exactly the skew", doc(), event(), BASE_MS - SKEW_MS),
    Case("ahead by the skew + 1 ms", doc(), REASON_FUTURE, BASE_MS - SKEW_MS - 1),
    Case(
        "ahead by the skew + 1 us",
        doc(event_time="2026-03-01T12:34:56.789001Z"),
        REASON_FUTURE,
        BASE_MS - SKEW_MS,
    ),
    Case(
        "ahead by the skew, sub-ms fraction",
        doc(event_time="2026-03-01T12:34:56.7890009Z"),
        event(),
        BASE_MS - SKEW_MS,
    ),
    Case(
        "epoch ms ahead by the skew + 1 ms",
        doc(event_time=BASE_MS),
        REASON_FUTURE,
        BASE_MS - SKEW_MS - 1,
    ),
    Case(
        "offset time ahead by the skew + 1 ms",
        doc(event_time="2026-03-01T14:04:56.789+01:30"),
        REASON_FUTURE,
        BASE_MS - SKEW_MS - 1,
    ),
    Case("months ahead", doc(event_time="2026-09-01T00:00:00Z"), REASON_FUTURE, BASE_MS),
    Case("near the largest time", doc(event_time=MAX_EVENT_TIME_MS - 1), REASON_FUTURE, 0),
    Case("record time at the epoch", doc(event_time=0), event(datetime(1970, 1, 1, tzinfo=UTC)), 0),
    Case("record time before the epoch", doc(), REASON_FUTURE, -(2**40)),
    Case("other rules first", doc(country="XX"), invalid_value("country"), 0),
    Case("optional rules first", doc(position_ms=-1), out_of_range("position_ms"), 0),
]
assert len({case.id for case in CASES}) == len(CASES), "case ids must be unique"
IDS = [case.id for case in CASES]


def _expected_result(case: Case) -> PlayEvent | Rejection:
    return Rejection(case.expected) if isinstance(case.expected, str) else case.expected


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_pure_module(case: Case) -> None:
    assert parse_payload(case.payload, case.record_time_ms) == _expected_result(case)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_pure_module_str_payload_matches_bytes(case: Case) -> None:
    """A str payload is judged as its UTF-8 encoding (undecodable bytes as lone surrogates)."""
    text = None if case.payload is None else case.payload.decode("utf-8", "surrogateescape")
    assert parse_payload(text, case.record_time_ms) == parse_payload(
        case.payload, case.record_time_ms
    )


def test_event_time_millis_round_trip() -> None:
    assert epoch_millis(BASE_TIME) == 1_772_368_496_789
