"""The play-event schema (CONTRACT section 2): parse a raw Kafka value into an event or a reason.

This is the one definition of what a valid event is. `lambda_arch.spark_schema` is its twin on
the JVM side (same rules, same reason strings); both are tested on one table of cases.

Rules beyond the contract's table, chosen so that both twins can decide them identically:
- a JSON `null` counts as absent: missing for a required field, default for an optional one;
- an object with a repeated key is invalid JSON (which value was meant is ambiguous);
- ISO-8601 times follow the RFC 3339 profile: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`
  (`T`, `t` or a space between date and time); fractions past microseconds are truncated;
- event times must lie in [1970-01-01T00:00:00Z, 9999-12-31T00:00:00Z);
- integers must fit in a signed 64-bit integer; `event_id` must not be empty.

Reasons are a small fixed vocabulary (`<kind>: <field>`) so quarantine counts group well.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

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

INT64_MAX = 2**63 - 1
# Event times are accepted in [MIN_EVENT_TIME_MS, MAX_EVENT_TIME_MS) as epoch milliseconds.
MIN_EVENT_TIME_MS = 0
MAX_EVENT_TIME_MS = 253_402_214_400_000  # 9999-12-31T00:00:00Z

# The RFC 3339 profile of ISO-8601, with field ranges in the pattern so that only impossible
# dates (30 February) are left for the calendar to reject. Written for both Python and Java regex.
ISO_TIME_PATTERN = (
    r"^((?!0000)[0-9]{4})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt ]"
    r"([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9])(\.[0-9]+)?"
    r"([Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$"
)
_ISO_TIME = re.compile(ISO_TIME_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Reason vocabulary (shared with the Spark twin).
REASON_INVALID_UTF8 = "invalid UTF-8"
REASON_INVALID_JSON = "invalid JSON"
REASON_NOT_OBJECT = "not a JSON object"
REASON_EMPTY = "empty payload"


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
        result[key] = value
    return result


def _reject_constant(_: str) -> Any:
    # NaN and Infinity are not JSON.
    raise _Invalid(REASON_INVALID_JSON)


def decode_payload(payload: bytes | str | None) -> dict[str, Any]:
    """Decode a raw value into a JSON object, raising _Invalid with the reason otherwise."""
    if payload is None or len(payload) == 0:
        raise _Invalid(REASON_EMPTY)
    if isinstance(payload, bytes):
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise _Invalid(REASON_INVALID_UTF8) from None
    else:
        text = payload
    try:
        document = json.loads(
            text, object_pairs_hook=_reject_duplicate_keys, parse_constant=_reject_constant
        )
    except (ValueError, RecursionError):
        raise _Invalid(REASON_INVALID_JSON) from None
    if not isinstance(document, dict):
        raise _Invalid(REASON_NOT_OBJECT)
    return document


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
    if value < 0 or value > INT64_MAX:
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
        return _EPOCH + timedelta(milliseconds=value)
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


def epoch_millis(moment: datetime) -> int:
    """Milliseconds since the epoch (floor) of an aware datetime."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


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


def parse_payload(payload: bytes | str | None) -> PlayEvent | Rejection:
    """Parse one raw Kafka value: a normalized PlayEvent, or a Rejection with its reason."""
    try:
        return validate_event(decode_payload(payload))
    except _Invalid as invalid:
        return Rejection(invalid.reason)


def format_event_time(moment: datetime) -> str:
    """The canonical ISO-8601 text of a UTC time, as the generator and the APIs write it."""
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")
