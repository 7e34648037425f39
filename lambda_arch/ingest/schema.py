"""The play-event schema (CONTRACT section 2): parse a raw Kafka value into an event or a reason.

This is the one definition of what a valid event is. `lambda_arch.ingest.spark_schema` is its twin on
the JVM side (same rules, same reason strings); both are tested on one table of cases.

Rules beyond the contract's table, chosen so that both twins can decide them identically:
- a JSON `null` counts as absent: missing for a required field, default for an optional one;
- a payload over 1 MiB (Kafka's default message limit) is rejected before it is decoded;
- a `str` payload is judged as its UTF-8 encoding (lone surrogates make it invalid UTF-8);
- the document must be exactly one JSON value (I-JSON, RFC 7493): an object with a repeated key
  (at any depth), a string with an escaped lone surrogate, NaN/Infinity or trailing content is
  invalid JSON; so is anything past the JVM parser's limits: nesting deeper than 999 levels,
  a number with more than 1000 digits (a lone leading `0` before a fraction or exponent is not
  counted) and an object key longer than 50,000 UTF-16 code units;
- integer fields take JSON integers in the signed 64-bit range; any other number (a fraction
  such as `7.0`, an exponent, or a larger integer) is the wrong type, a negative id or
  position is out of range;
- ISO-8601 times follow the RFC 3339 profile: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`
  (`T`, `t` or a space between date and time, nothing after the offset, not even a newline);
  fractions past microseconds are truncated;
- event times must lie in [1970-01-01T00:00:00Z, 9999-12-31T00:00:00Z);
- `event_id` must not be empty;
- given the Kafka record timestamp, an event_time more than the allowed clock skew (default
  `DEFAULT_MAX_CLOCK_SKEW_MIN`, LAMBDA_ARCH_MAX_CLOCK_SKEW_MIN) ahead of it is quarantined as
  `event_time in the future` (CONTRACT section 3): the last rule, judged on an otherwise valid
  event, in microseconds (ahead by exactly the skew is still on time). Without a record
  timestamp (a null one, or a caller that has none) the rule does not apply.

Reasons are a small fixed vocabulary (`<kind>: <field>`) so quarantine counts group well.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from lambda_arch.common.times import EPOCH, epoch_millis, from_epoch_millis

EVENT_TYPES: tuple[str, ...] = ("play_start", "play_heartbeat", "play_stop")
DEVICES: tuple[str, ...] = ("tv", "mobile", "web", "tablet", "console", "other")
DISCOVERY_SOURCES: tuple[str, ...] = (
    "because_you_watched",
    "trending_now",
    "continue_watching",
    "top_10",
    "search",
    "my_list",
    "new_releases",
    "genre_row",
    "billboard",
    "other",
)
DEFAULT_DEVICE = "other"
DEFAULT_DISCOVERY_SOURCE = "other"

# ISO 3166-1 alpha-2 officially assigned codes (249).
COUNTRIES: frozenset[str] = frozenset(
    """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR
    BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ
    EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW
    GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY
    KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV
    MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY
    QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG
    TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM
    ZW
    """.split()
)

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# Kafka's default message size limit; larger payloads are rejected before decoding.
MAX_PAYLOAD_BYTES = 1_048_576
# The JVM parser's limits (Jackson's StreamReadConstraints defaults, as Spark's parse_json uses
# them). The Spark twin wraps the document in one more level, so it allows 1000 - 1 levels.
MAX_JSON_DEPTH = 999
MAX_NUMBER_DIGITS = 1000
MAX_KEY_UTF16_UNITS = 50_000
# Event times are accepted in [MIN_EVENT_TIME_MS, MAX_EVENT_TIME_MS) as epoch milliseconds.
MIN_EVENT_TIME_MS = 0
MAX_EVENT_TIME_MS = 253_402_214_400_000  # 9999-12-31T00:00:00Z

# The RFC 3339 profile of ISO-8601, with field ranges in the pattern so that only impossible
# dates (30 February) are left for the calendar to reject. Written for both Python and Java regex:
# it ends in `(?![\s\S])` rather than `$`, which in both also matches before a final newline.
# Fields sit at fixed positions (year 1-4, month 6-7, day 9-10, hour 12-13, minute 15-16,
# second 18-19, optional fraction from 20, offset last), which the Spark twin relies on.
ISO_TIME_PATTERN = (
    r"^((?!0000)[0-9]{4})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt ]"
    r"([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9])(\.[0-9]+)?"
    r"([Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])(?![\s\S])"
)
_ISO_TIME = re.compile(ISO_TIME_PATTERN)

# Reason vocabulary (shared with the Spark twin).
REASON_INVALID_UTF8 = "invalid UTF-8"
REASON_INVALID_JSON = "invalid JSON"
REASON_NOT_OBJECT = "not a JSON object"
REASON_EMPTY = "empty payload"
REASON_TOO_LARGE = "payload too large"
REASON_FUTURE = "event_time in the future"

# How far an event_time may be ahead of its Kafka record timestamp (Settings.max_clock_skew_min).
DEFAULT_MAX_CLOCK_SKEW_MIN = 5


def missing(field: str) -> str:
    return f"missing field: {field}"


def wrong_type(field: str) -> str:
    return f"wrong type: {field}"


def out_of_range(field: str) -> str:
    return f"out of range: {field}"


def invalid_value(field: str) -> str:
    return f"invalid value: {field}"


# Field order is the order in which rules are checked: the first broken rule is the reason.
FIELD_ORDER: tuple[str, ...] = (
    "event_id",
    "event_type",
    "event_time",
    "member_id",
    "title_id",
    "country",
    "device",
    "discovery_source",
    "position_ms",
)


@dataclass(frozen=True, slots=True)
class PlayEvent:
    """A valid, normalized play event; event_time is an aware UTC datetime (microseconds)."""

    event_id: str
    event_type: str
    event_time: datetime
    member_id: int
    title_id: int
    country: str
    device: str
    discovery_source: str
    position_ms: int | None

    @property
    def event_time_ms(self) -> int:
        return epoch_millis(self.event_time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A payload that breaks a rule: quarantined with this reason."""

    reason: str


class _Invalid(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Invalid(REASON_INVALID_JSON)
        # Cheap guard first: a key of n code points has at most 2n UTF-16 units.
        if len(key) * 2 > MAX_KEY_UTF16_UNITS and _utf16_units(key) > MAX_KEY_UTF16_UNITS:
            raise _Invalid(REASON_INVALID_JSON)
        result[key] = value
    return result


def _reject_constant(_: str) -> Any:
    # NaN and Infinity are not JSON.
    raise _Invalid(REASON_INVALID_JSON)


def _parse_int(literal: str) -> int:
    # A sign is not a digit; checking the length first keeps int() clear of its 4300-digit limit.
    if len(literal) > MAX_NUMBER_DIGITS and len(literal.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise _Invalid(REASON_INVALID_JSON)
    return int(literal)


def _parse_float(literal: str) -> float:
    if len(literal) > MAX_NUMBER_DIGITS:
        digits = sum(char.isdigit() for char in literal)
        # JSON allows no leading zero except a lone `0` integer part, which Jackson does not count.
        if literal.lstrip("-").startswith("0"):
            digits -= 1
        if digits > MAX_NUMBER_DIGITS:
            raise _Invalid(REASON_INVALID_JSON)
    return float(literal)


def _utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


_DECODER = json.JSONDecoder(
    object_pairs_hook=_reject_duplicate_keys,
    parse_constant=_reject_constant,
    parse_int=_parse_int,
    parse_float=_parse_float,
)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Python's parser recurses once per nesting level; the headroom it has depends on the caller's
# stack, so a deep document that fails is retried (one at a time) with the limit raised.
_RECURSION_LOCK = threading.Lock()


def _raw_decode(text: str) -> Any:
    try:
        return _DECODER.decode(text)
    except ValueError:  # includes JSONDecodeError and UnicodeDecodeError
        raise _Invalid(REASON_INVALID_JSON) from None


def _decode_json(text: str) -> Any:
    try:
        document = _raw_decode(text)
    except RecursionError:
        with _RECURSION_LOCK:
            limit = sys.getrecursionlimit()
            sys.setrecursionlimit(limit + MAX_JSON_DEPTH + 100)
            try:
                document = _raw_decode(text)
            except RecursionError:
                raise _Invalid(REASON_INVALID_JSON) from None
            finally:
                sys.setrecursionlimit(limit)
    # Only documents that could break a rule are walked: ones with many brackets or with an
    # escape in the surrogate range (a raw surrogate cannot come out of valid UTF-8).
    suspicious = text.count("[") + text.count("{") > MAX_JSON_DEPTH or (
        "\\u" in text and _SURROGATE_ESCAPE.search(text) is not None
    )
    if suspicious and not _within_limits(document):
        raise _Invalid(REASON_INVALID_JSON)
    return document


def _within_limits(document: Any) -> bool:
    """Whether a decoded document nests at most MAX_JSON_DEPTH levels and has no lone surrogate."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return False
        elif isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                return False
            if isinstance(value, dict):
                stack.extend((key, depth) for key in value)
                value = value.values()
            stack.extend((item, depth + 1) for item in value)
    return True


def decode_payload(payload: bytes | str | None) -> dict[str, Any]:
    """Decode a raw value into a JSON object, raising _Invalid with the reason otherwise."""
    if payload is None or len(payload) == 0:
        raise _Invalid(REASON_EMPTY)
    if isinstance(payload, str):
        try:
            data = payload.encode("utf-8")
        except UnicodeEncodeError:
            raise _Invalid(REASON_INVALID_UTF8) from None
    else:
        data = bytes(payload)
    if len(data) > MAX_PAYLOAD_BYTES:
        raise _Invalid(REASON_TOO_LARGE)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Invalid(REASON_INVALID_UTF8) from None
    document = _decode_json(text)
    if not isinstance(document, dict):
        raise _Invalid(REASON_NOT_OBJECT)
    return document


def _is_int(value: Any) -> bool:
    """A JSON integer in the signed 64-bit range (JSON true/false are bools, not integers)."""
    return (
        isinstance(value, int) and not isinstance(value, bool) and INT64_MIN <= value <= INT64_MAX
    )


def _string(document: dict[str, Any], field: str) -> str:
    value = document.get(field)
    if value is None:
        raise _Invalid(missing(field))
    if not isinstance(value, str):
        raise _Invalid(wrong_type(field))
    return value


def _non_negative_int(value: Any, field: str) -> int:
    if not _is_int(value):
        raise _Invalid(wrong_type(field))
    if value < 0:
        raise _Invalid(out_of_range(field))
    return int(value)


def _enum(document: dict[str, Any], field: str, allowed: tuple[str, ...], default: str) -> str:
    value = document.get(field)
    if value is None:
        return default
    if not isinstance(value, str):
        raise _Invalid(wrong_type(field))
    if value not in allowed:
        raise _Invalid(invalid_value(field))
    return value


def parse_event_time(value: Any) -> datetime:
    """An ISO-8601 string with offset or epoch milliseconds, as an aware UTC datetime."""
    if value is None:
        raise _Invalid(missing("event_time"))
    if _is_int(value):
        if not MIN_EVENT_TIME_MS <= value < MAX_EVENT_TIME_MS:
            raise _Invalid(invalid_value("event_time"))
        return from_epoch_millis(value)
    if not isinstance(value, str):
        raise _Invalid(wrong_type("event_time"))
    match = _ISO_TIME.match(value)
    if match is None:
        raise _Invalid(invalid_value("event_time"))
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    micros = int((fraction[1:] + "000000")[:6]) if fraction else 0
    try:
        local = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micros
        )
    except ValueError:
        raise _Invalid(invalid_value("event_time")) from None
    if offset in ("Z", "z"):
        offset_delta = timedelta(0)
    else:
        sign = 1 if offset[0] == "+" else -1
        offset_delta = sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
    try:
        utc = (local - offset_delta).replace(tzinfo=UTC)
    except OverflowError:
        raise _Invalid(invalid_value("event_time")) from None
    if not MIN_EVENT_TIME_MS <= epoch_millis(utc) < MAX_EVENT_TIME_MS:
        raise _Invalid(invalid_value("event_time"))
    return utc


def validate_event(document: dict[str, Any]) -> PlayEvent:
    """Validate a decoded JSON object, raising _Invalid with the first broken rule."""
    event_id = _string(document, "event_id")
    if event_id == "":
        raise _Invalid(invalid_value("event_id"))
    event_type = _string(document, "event_type")
    if event_type not in EVENT_TYPES:
        raise _Invalid(invalid_value("event_type"))
    event_time = parse_event_time(document.get("event_time"))
    ids = {}
    for field in ("member_id", "title_id"):
        value = document.get(field)
        if value is None:
            raise _Invalid(missing(field))
        ids[field] = _non_negative_int(value, field)
    country = _string(document, "country")
    if country not in COUNTRIES:
        raise _Invalid(invalid_value("country"))
    device = _enum(document, "device", DEVICES, DEFAULT_DEVICE)
    discovery_source = _enum(
        document, "discovery_source", DISCOVERY_SOURCES, DEFAULT_DISCOVERY_SOURCE
    )
    raw_position = document.get("position_ms")
    position_ms = None if raw_position is None else _non_negative_int(raw_position, "position_ms")
    return PlayEvent(
        event_id=event_id,
        event_type=event_type,
        event_time=event_time,
        member_id=ids["member_id"],
        title_id=ids["title_id"],
        country=country,
        device=device,
        discovery_source=discovery_source,
        position_ms=position_ms,
    )


def is_future(
    event_time: datetime, record_time_ms: int, max_clock_skew_min: int = DEFAULT_MAX_CLOCK_SKEW_MIN
) -> bool:
    """Whether an event_time is more than the allowed skew ahead of its record's Kafka
    timestamp (epoch milliseconds), compared exactly in microseconds."""
    event_us = (event_time - EPOCH) // timedelta(microseconds=1)
    return event_us - record_time_ms * 1000 > max_clock_skew_min * 60_000_000


def parse_payload(
    payload: bytes | str | None,
    record_time_ms: int | None = None,
    max_clock_skew_min: int = DEFAULT_MAX_CLOCK_SKEW_MIN,
) -> PlayEvent | Rejection:
    """Parse one raw Kafka value: a normalized PlayEvent, or a Rejection with its reason.

    `record_time_ms` is the Kafka record timestamp (epoch milliseconds; None: unknown, no
    future check): an otherwise valid event whose event_time is more than `max_clock_skew_min`
    minutes ahead of it is rejected with REASON_FUTURE.
    """
    try:
        event = validate_event(decode_payload(payload))
    except _Invalid as invalid:
        return Rejection(invalid.reason)
    if record_time_ms is not None and is_future(
        event.event_time, record_time_ms, max_clock_skew_min
    ):
        return Rejection(REASON_FUTURE)
    return event
