"""The play-event schema on the JVM: the Spark twin of `lambda_arch.ingest.schema.parse_payload`.

`parse_events` decides every payload exactly as the pure-Python module does (same verdict, same
reason string, same normalized values) with built-in Spark expressions only, so that millions of
Kafka values are parsed without a Python worker. How each rule is decided:
- size and UTF-8: `octet_length` and `is_valid_utf8` on the raw value;
- JSON: `try_parse_json` (Spark's variant parser rejects duplicate keys, NaN, lone surrogates and
  Jackson's limits, as schema.py does) on `{"k":<value>}`. The variant parser ignores content
  after the first value, so the value is also wrapped as `[<value>]` and counted with
  `json_array_length`: trailing content that starts with `]` fools the array but breaks the
  object, anything else breaks the array or makes it longer than one element;
- JSON types: `schema_of_variant` of each field (`BIGINT` is exactly a JSON integer in int64:
  fractions, exponents and larger integers come out as DECIMAL or DOUBLE);
- ISO times: `rlike` with schema.ISO_TIME_PATTERN, then the fields at their fixed positions,
  the date through `try_make_timestamp_ltz(..., 'UTC')` (NULL for 30 February) and the rest as
  integer microseconds, so neither rounding nor the session time zone plays any part;
- events from the future: with a record timestamp column (the Kafka `timestamp`), an otherwise
  valid event whose event time, in epoch microseconds, is more than the allowed skew ahead of
  `unix_micros(timestamp)` gets REASON_FUTURE; a NULL timestamp skips the rule, as None does
  in schema.py.

Fast path: a payload in the canonical shape every lambda-arch producer writes (compact JSON, the
fields in FIELD_ORDER with device, discovery_source and position_ms optional, strings without
escapes, non-negative integers of at most 18 digits; `CANONICAL_PATTERN`) is a single,
duplicate-free JSON object whose field types can be read off the text, so it is parsed with
one `from_json` instead of the variant parser, the array check and a type probe per field
(about a third less work per record). Every rule after decoding (enums, ranges, times) is
still decided by the same expressions for both paths. Anything else takes the general path.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType, StringType, TimestampType

from lambda_arch.ingest.schema import (
    COUNTRIES,
    DEFAULT_DEVICE,
    DEFAULT_DISCOVERY_SOURCE,
    DEFAULT_MAX_CLOCK_SKEW_MIN,
    DEVICES,
    DISCOVERY_SOURCES,
    EVENT_TYPES,
    FIELD_ORDER,
    ISO_TIME_PATTERN,
    MAX_EVENT_TIME_MS,
    MAX_PAYLOAD_BYTES,
    MIN_EVENT_TIME_MS,
    REASON_EMPTY,
    REASON_FUTURE,
    REASON_INVALID_JSON,
    REASON_INVALID_UTF8,
    REASON_NOT_OBJECT,
    REASON_TOO_LARGE,
    invalid_value,
    missing,
    out_of_range,
    wrong_type,
)

# The added event columns with their Spark types, in order (NULL on quarantined rows), then
# the reason column (NULL on valid rows).
SPARK_EVENT_SCHEMA: tuple[tuple[str, str], ...] = (
    ("event_id", "string"),
    ("event_type", "string"),
    ("event_time", "timestamp"),
    ("member_id", "bigint"),
    ("title_id", "bigint"),
    ("country", "string"),
    ("device", "string"),
    ("discovery_source", "string"),
    ("position_ms", "bigint"),
)
SPARK_EVENT_COLUMNS: tuple[str, ...] = tuple(name for name, _ in SPARK_EVENT_SCHEMA)
QUARANTINE_REASON_COLUMN = "quarantine_reason"

# Names of the intermediate columns; the prefix keeps them clear of the caller's columns.
_P = "__play_event_"
_PRECHECK = f"{_P}precheck"
_WRAPPED = f"{_P}wrapped"
_JSON_OK = f"{_P}json_ok"
_IS_OBJECT = f"{_P}is_object"
_ISO_TEXT = f"{_P}iso_text"
_ISO_MIDNIGHT = f"{_P}iso_midnight"
_ISO_SECONDS = f"{_P}iso_seconds"
_ISO_FRACTION = f"{_P}iso_fraction"
_ISO_OFFSET = f"{_P}iso_offset"
_ISO_MICROS = f"{_P}iso_micros"
_EVENT_MICROS = f"{_P}event_micros"
_REASON = f"{_P}reason"
_FAST = f"{_P}fast"
_FAST_JSON = f"{_P}fast_json"

_INT = "BIGINT"  # schema_of_variant names every JSON integer that fits in int64 BIGINT
_STRING = "STRING"
_NULL = "VOID"  # a JSON null
_JSON_SPACE_THEN_BRACE = r"^[ \t\n\r]*\{"  # the only whitespace JSON allows before a value
_MICROS_PER_MS = 1000
_MICROS_PER_SECOND = 1_000_000
_MICROS_PER_MINUTE = 60 * _MICROS_PER_SECOND

# The canonical shape (see the module docstring), for Java's regex. A string without `"`, `\`
# or control characters is valid JSON whose text is its value; an integer without sign or
# leading zero and of at most 18 digits is a JSON integer in int64. Fixed key order means no
# key can repeat; `(?![\s\S])` is the end of the text (Java's `$` also matches before a final
# newline).
_CANONICAL_STRING = r'"[^"\\\x00-\x1f]*+"'
_CANONICAL_INT = r"(?:0|[1-9][0-9]{0,17}+)"
_CANONICAL_REQUIRED = {
    "event_id": _CANONICAL_STRING,
    "event_type": _CANONICAL_STRING,
    "event_time": f"(?:{_CANONICAL_STRING}|{_CANONICAL_INT})",
    "member_id": _CANONICAL_INT,
    "title_id": _CANONICAL_INT,
    "country": _CANONICAL_STRING,
}
_CANONICAL_OPTIONAL = {
    "device": _CANONICAL_STRING,
    "discovery_source": _CANONICAL_STRING,
    "position_ms": _CANONICAL_INT,
}
assert (*_CANONICAL_REQUIRED, *_CANONICAL_OPTIONAL) == FIELD_ORDER
CANONICAL_PATTERN = (
    r"^\{"
    + ",".join(f'"{name}":{kind}' for name, kind in _CANONICAL_REQUIRED.items())
    + "".join(f'(?:,"{name}":{kind})?' for name, kind in _CANONICAL_OPTIONAL.items())
    + r"\}(?![\s\S])"
)
# What from_json reads from a canonical payload: each field as its JSON type, except event_time
# (string or integer), which a string field takes as its text either way. (Measured faster
# than cutting the values out with substring_index: from_json has no generated code, so the
# generated code of the parse comes in two smaller halves, which the JIT compiles better.)
_FAST_SCHEMA = ", ".join(
    f"{name} {'bigint' if kind == _CANONICAL_INT else 'string'}"
    for name, kind in {**_CANONICAL_REQUIRED, **_CANONICAL_OPTIONAL}.items()
)
# In a canonical payload no value holds a quote, so this text shows a string event_time.
_CANONICAL_STRING_TIME = '"event_time":"'


def _col(name: str) -> Column:
    return F.col(f"`{name}`")


def _type(field: str) -> str:
    return f"{_P}type_{field}"


def _str(field: str) -> str:
    return f"{_P}str_{field}"


def _int(field: str) -> str:
    return f"{_P}int_{field}"


def _path(field: str) -> str:
    return f"$.k.{field}"


def _absent(field: str) -> Column:
    return _col(_type(field)).isNull() | (_col(_type(field)) == _NULL)


def _precheck_columns(value: Column) -> list[Column]:
    """The cheap checks (size, UTF-8), as a reason or NULL."""
    size = F.octet_length(value)
    text = value.cast("string")  # the bytes as they are; is_valid_utf8 judges them
    precheck = (
        F.when(value.isNull() | (size == 0), REASON_EMPTY)
        .when(size > MAX_PAYLOAD_BYTES, REASON_TOO_LARGE)
        .when(~F.is_valid_utf8(text), REASON_INVALID_UTF8)
    )
    return [precheck.alias(_PRECHECK)]


def _fast_columns(value: Column) -> list[Column]:
    """Whether a payload that passed the cheap checks is canonical."""
    text = value.cast("string")
    fast = _col(_PRECHECK).isNull() & text.rlike(CANONICAL_PATTERN)
    return [fast.alias(_FAST)]


def _decode_columns(value: Column) -> list[Column]:
    """For a payload that is not canonical: the parsed document and whether it is exactly one
    JSON object (a canonical one is both by its shape)."""
    text = value.cast("string")
    fast = _col(_FAST)
    # JSON is parsed only for payloads that passed the cheap checks (CASE evaluates lazily).
    general = _col(_PRECHECK).isNull() & ~fast
    wrapped = F.when(general, F.try_parse_json(F.concat(F.lit('{"k":'), text, F.lit("}"))))
    single = F.when(general, F.json_array_length(F.concat(F.lit("["), text, F.lit("]"))) == 1)
    is_object = F.when(general, text.rlike(_JSON_SPACE_THEN_BRACE))
    return [
        F.when(fast, F.from_json(text, _FAST_SCHEMA)).alias(_FAST_JSON),
        wrapped.alias(_WRAPPED),
        (fast | (wrapped.isNotNull() & F.coalesce(single, F.lit(False)))).alias(_JSON_OK),
        (fast | F.coalesce(is_object, F.lit(False))).alias(_IS_OBJECT),
    ]


def _type_column(field: str, value: Column) -> Column:
    """A field's JSON type as schema_of_variant names it (NULL when absent)."""
    general = F.schema_of_variant(F.try_variant_get(_col(_WRAPPED), _path(field), "variant"))
    text = value.cast("string")
    if field == "event_time":
        is_text = text.contains(_CANONICAL_STRING_TIME)
        canonical = F.when(is_text, F.lit(_STRING)).otherwise(F.lit(_INT))
    elif field in _CANONICAL_REQUIRED:
        canonical = F.lit(_INT if _CANONICAL_REQUIRED[field] == _CANONICAL_INT else _STRING)
    else:
        # A canonical payload has no nulls: an optional field is NULL only when absent.
        kind = _INT if _CANONICAL_OPTIONAL[field] == _CANONICAL_INT else _STRING
        canonical = F.when(_col(_FAST_JSON).getField(field).isNotNull(), F.lit(kind))
    return F.when(_col(_FAST), canonical).otherwise(general).alias(_type(field))


def _value_columns(field: str) -> list[Column]:
    """A field's value as string and as bigint, each only when that is its JSON type."""
    # The casts alone would also turn a JSON "7" or 7.0 into a bigint.
    wrapped, json_type, fast = _col(_WRAPPED), _col(_type(field)), _col(_FAST)
    canonical = _col(_FAST_JSON).getField(field)  # event_time: its text, whatever its type
    as_string = F.when(
        json_type == _STRING,
        F.when(fast, canonical).otherwise(F.try_variant_get(wrapped, _path(field), "string")),
    )
    as_int = F.when(
        json_type == _INT,
        F.when(fast, canonical.cast("bigint")).otherwise(
            F.try_variant_get(wrapped, _path(field), "bigint")
        ),
    )
    return [as_string.alias(_str(field)), as_int.alias(_int(field))]


def _iso_part_columns(matched: Column) -> list[Column]:
    """Midnight of the date (epoch micros, NULL for 30 February), seconds of the day, fraction
    (micros) and offset (minutes) of an ISO text that matched schema.ISO_TIME_PATTERN."""

    def number(position: int, length: int) -> Column:
        return F.substring(matched, position, length).cast("bigint")

    offset_length = F.when(F.right(matched, F.lit(1)).isin("Z", "z"), 1).otherwise(6)
    # Digits between the dot at position 20 and the offset (none: an empty string), truncated
    # to microseconds before anything numeric happens, as schema.py does.
    fraction = F.substr(
        matched, F.lit(21), F.greatest(F.length(matched) - 20 - offset_length, F.lit(0))
    )
    fraction_micros = F.rpad(F.substr(fraction, F.lit(1), F.lit(6)), 6, "0").cast("bigint")
    offset_sign = F.when(F.substr(matched, F.lit(-6), F.lit(1)) == "-", -1).otherwise(1)
    offset_minutes = F.when(offset_length == 1, F.lit(0)).otherwise(
        offset_sign
        * (
            F.substr(matched, F.lit(-5), F.lit(2)).cast("bigint") * 60
            + F.substr(matched, F.lit(-2), F.lit(2)).cast("bigint")
        )
    )
    # An explicit UTC zone keeps the session time zone out; the time of day is added as integers.
    midnight = F.try_make_timestamp_ltz(
        number(1, 4), number(6, 2), number(9, 2), F.lit(0), F.lit(0), F.lit(0), F.lit("UTC")
    )
    seconds_of_day = (number(12, 2) * 60 + number(15, 2)) * 60 + number(18, 2)
    return [
        F.unix_micros(midnight).alias(_ISO_MIDNIGHT),
        seconds_of_day.alias(_ISO_SECONDS),
        fraction_micros.alias(_ISO_FRACTION),
        offset_minutes.alias(_ISO_OFFSET),
    ]


def _event_micros() -> Column:
    """Epoch microseconds of a valid event_time (integer or ISO string), NULL otherwise."""
    json_type, millis, iso = _col(_type("event_time")), _col(_int("event_time")), _col(_ISO_MICROS)
    # Bounds first, then the multiplication: it cannot overflow on what passes them.
    in_range = (millis >= MIN_EVENT_TIME_MS) & (millis < MAX_EVENT_TIME_MS)
    from_millis = F.when(in_range, millis) * F.lit(_MICROS_PER_MS)
    iso_in_range = (iso >= MIN_EVENT_TIME_MS * _MICROS_PER_MS) & (
        iso < MAX_EVENT_TIME_MS * _MICROS_PER_MS
    )
    from_iso = F.when(iso_in_range, iso)
    return F.when(json_type == _INT, from_millis).when(json_type == _STRING, from_iso)


def _reason(record_time: Column | None, max_clock_skew_min: int) -> Column:
    """The first broken rule, in schema.py's order; NULL for a valid event. `record_time`
    (a timestamp column, or None) adds the last rule: an event_time from the future."""
    t = {field: _col(_type(field)) for field in FIELD_ORDER}
    s = {field: _col(_str(field)) for field in FIELD_ORDER}
    i = {field: _col(_int(field)) for field in FIELD_ORDER}
    precheck = _col(_PRECHECK)
    chain = F.when(precheck == REASON_EMPTY, REASON_EMPTY)
    chain = chain.when(precheck == REASON_TOO_LARGE, REASON_TOO_LARGE)
    chain = chain.when(precheck == REASON_INVALID_UTF8, REASON_INVALID_UTF8)
    chain = chain.when(~_col(_JSON_OK), REASON_INVALID_JSON)
    chain = chain.when(~_col(_IS_OBJECT), REASON_NOT_OBJECT)

    def required_string(chain: Column, field: str) -> Column:
        chain = chain.when(_absent(field), missing(field))
        return chain.when(t[field] != _STRING, wrong_type(field))

    def enum(chain: Column, field: str, allowed: tuple[str, ...] | frozenset[str]) -> Column:
        return chain.when(~s[field].isin(*sorted(allowed)), invalid_value(field))

    def non_negative_int(chain: Column, field: str) -> Column:
        chain = chain.when(t[field] != _INT, wrong_type(field))
        return chain.when(i[field] < 0, out_of_range(field))

    chain = required_string(chain, "event_id")
    chain = chain.when(s["event_id"] == "", invalid_value("event_id"))
    chain = required_string(chain, "event_type")
    chain = enum(chain, "event_type", EVENT_TYPES)
    chain = chain.when(_absent("event_time"), missing("event_time"))
    chain = chain.when(~t["event_time"].isin(_INT, _STRING), wrong_type("event_time"))
    chain = chain.when(_col(_EVENT_MICROS).isNull(), invalid_value("event_time"))
    for field in ("member_id", "title_id"):
        chain = chain.when(_absent(field), missing(field))
        chain = non_negative_int(chain, field)
    chain = required_string(chain, "country")
    chain = enum(chain, "country", COUNTRIES)
    for field, allowed in (("device", DEVICES), ("discovery_source", DISCOVERY_SOURCES)):
        # Optional: absent or null means the default, and the chain moves on.
        present = ~_absent(field)
        chain = chain.when(present & (t[field] != _STRING), wrong_type(field))
        chain = chain.when(present & ~s[field].isin(*allowed), invalid_value(field))
    present = ~_absent("position_ms")
    chain = chain.when(present & (t["position_ms"] != _INT), wrong_type("position_ms"))
    chain = chain.when(present & (i["position_ms"] < 0), out_of_range("position_ms"))
    if record_time is None:
        return chain
    # event - skew > record, arranged so that no subtraction can overflow a bigint (ANSI mode
    # would fail the query): event micros and the skew are far from the bigint limits.
    skew_us = F.lit(max_clock_skew_min * _MICROS_PER_MINUTE).cast("bigint")
    ahead = _col(_EVENT_MICROS) - skew_us > F.unix_micros(record_time)
    return chain.when(ahead, REASON_FUTURE)


def parse_events(
    df: DataFrame,
    value_col: str = "value",
    timestamp_col: str | None = None,
    max_clock_skew_min: int = DEFAULT_MAX_CLOCK_SKEW_MIN,
) -> DataFrame:
    """Add the event columns (SPARK_EVENT_SCHEMA) and `quarantine_reason` to a DataFrame of payloads.

    `value_col` is a BINARY or STRING column of raw Kafka values. A valid row gets its normalized
    event and a NULL reason; any other row gets schema.py's reason and NULL event columns.
    `timestamp_col` (a TIMESTAMP column: the Kafka record timestamp) is schema.parse_payload's
    `record_time_ms`: an event_time more than `max_clock_skew_min` minutes ahead of it is
    quarantined as REASON_FUTURE; None leaves that rule out.
    """
    value_type = df.schema[value_col].dataType
    if not isinstance(value_type, BinaryType | StringType):
        raise TypeError(f"{value_col} must be BINARY or STRING, not {value_type.simpleString()}")
    if timestamp_col is not None:
        time_type = df.schema[timestamp_col].dataType
        if not isinstance(time_type, TimestampType):
            raise TypeError(f"{timestamp_col} must be TIMESTAMP, not {time_type.simpleString()}")
    # One projection per step: an expression used several times later (the parsed document, a
    # field's JSON type, the matched ISO text) is computed once per row, not once per use.
    value = _col(value_col)
    stage = df.select(*[df[name] for name in df.columns], *_precheck_columns(df[value_col]))
    stage = stage.select("*", *_fast_columns(value))
    stage = stage.select("*", *_decode_columns(value))
    stage = stage.select("*", *[_type_column(field, value) for field in FIELD_ORDER])
    stage = stage.select(
        "*", *[column for field in FIELD_ORDER for column in _value_columns(field)]
    )
    # Text that is not an ISO time becomes NULL here, so no cast below sees a malformed field.
    iso_text = _col(_str("event_time"))
    stage = stage.select("*", F.when(iso_text.rlike(ISO_TIME_PATTERN), iso_text).alias(_ISO_TEXT))
    stage = stage.select("*", *_iso_part_columns(_col(_ISO_TEXT)))
    iso_micros = (
        _col(_ISO_MIDNIGHT)
        + _col(_ISO_SECONDS) * _MICROS_PER_SECOND
        + _col(_ISO_FRACTION)
        - _col(_ISO_OFFSET) * _MICROS_PER_MINUTE
    )
    stage = stage.select("*", iso_micros.alias(_ISO_MICROS))
    stage = stage.select("*", _event_micros().alias(_EVENT_MICROS))
    record_time = None if timestamp_col is None else _col(timestamp_col)
    stage = stage.select("*", _reason(record_time, max_clock_skew_min).alias(_REASON))

    valid = _col(_REASON).isNull()
    values = {
        "event_id": _col(_str("event_id")),
        "event_type": _col(_str("event_type")),
        "event_time": F.timestamp_micros(_col(_EVENT_MICROS)),
        "member_id": _col(_int("member_id")),
        "title_id": _col(_int("title_id")),
        "country": _col(_str("country")),
        "device": F.coalesce(_col(_str("device")), F.lit(DEFAULT_DEVICE)),
        "discovery_source": F.coalesce(
            _col(_str("discovery_source")), F.lit(DEFAULT_DISCOVERY_SOURCE)
        ),
        "position_ms": _col(_int("position_ms")),
    }
    added = {*SPARK_EVENT_COLUMNS, QUARANTINE_REASON_COLUMN}
    return stage.select(
        *[_col(name) for name in df.columns if name not in added],
        *[
            F.when(valid, values[name]).cast(spark_type).alias(name)
            for name, spark_type in SPARK_EVENT_SCHEMA
        ],
        _col(_REASON).alias(QUARANTINE_REASON_COLUMN),
    )
