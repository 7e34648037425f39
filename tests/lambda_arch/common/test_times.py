"""The one ISO-8601 Z formatter and parser every layer shares, and epoch milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from lambda_arch.common.times import (
    EPOCH,
    epoch_millis,
    format_optional_time,
    format_time,
    from_epoch_millis,
    from_epoch_seconds,
    parse_optional_time,
    parse_time,
)

MOMENT = datetime(2026, 3, 1, 12, 34, 56, 789000, tzinfo=UTC)


def test_milliseconds_are_fixed_width_with_z() -> None:
    assert format_time(MOMENT) == "2026-03-01T12:34:56.789Z"
    assert format_time(MOMENT.replace(microsecond=0)) == "2026-03-01T12:34:56.000Z"
    # Microseconds are cut, not rounded: the state files always held three digits.
    assert format_time(MOMENT.replace(microsecond=789999)) == "2026-03-01T12:34:56.789Z"


def test_offsets_print_as_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert format_time(datetime(2026, 3, 1, 14, 0, tzinfo=plus_two)) == "2026-03-01T12:00:00.000Z"
    assert format_time(datetime(2026, 3, 1, 0, 30, tzinfo=plus_two)) == "2026-02-28T22:30:00.000Z"


@pytest.mark.parametrize(
    ("microsecond", "text"),
    [
        (0, "2026-03-01T12:34:56Z"),
        (500000, "2026-03-01T12:34:56.500Z"),
        (123456, "2026-03-01T12:34:56.123456Z"),
    ],
)
def test_shortest_keeps_only_digits_that_carry_information(microsecond: int, text: str) -> None:
    moment = MOMENT.replace(microsecond=microsecond)
    assert format_time(moment, "shortest") == text
    assert parse_time(text) == moment


def test_optional_formatting_passes_none_through() -> None:
    assert format_optional_time(None) is None
    assert format_optional_time(None, "shortest") is None
    assert format_optional_time(MOMENT) == format_time(MOMENT)


@pytest.mark.parametrize(
    "text",
    [
        "2026-03-01T12:34:56.789Z",
        "2026-03-01T12:34:56.789z",
        "2026-03-01 12:34:56.789Z",
        "2026-03-01T14:34:56.789+02:00",
        "2026-03-01T07:34:56.789-05:00",
        "  2026-03-01T12:34:56.789+00:00 ",
    ],
)
def test_parse_accepts_z_and_offsets_as_utc(text: str) -> None:
    parsed = parse_time(text)
    assert parsed == MOMENT
    assert parsed.utcoffset() == timedelta(0)
    assert format_time(parsed) == "2026-03-01T12:34:56.789Z"


def test_round_trip_is_exact() -> None:
    for moment in (MOMENT, EPOCH, MOMENT.replace(microsecond=1)):
        assert parse_time(format_time(moment, "shortest")) == moment
    assert parse_time(format_time(MOMENT)) == MOMENT


def test_a_time_without_offset_is_an_error_unless_utc_is_assumed() -> None:
    with pytest.raises(ValueError, match="no UTC offset"):
        parse_time("2026-03-01T12:00:00")
    assert parse_time("2026-03-01T12:00:00", assume_utc=True) == datetime(
        2026, 3, 1, 12, tzinfo=UTC
    )


@pytest.mark.parametrize("text", ["yesterday", "2026-02-30T00:00:00Z", "", "12:00Z"])
def test_text_that_is_not_a_time_is_an_error(text: str) -> None:
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_time(text)


def test_optional_parse_treats_missing_as_none() -> None:
    assert parse_optional_time(None) is None
    assert parse_optional_time("") is None
    assert parse_optional_time("2026-03-01T12:34:56.789Z") == MOMENT


def test_epoch_millis_floor_and_back() -> None:
    assert epoch_millis(EPOCH) == 0
    assert epoch_millis(MOMENT) == 1_772_368_496_789
    assert epoch_millis(MOMENT.replace(microsecond=789999)) == 1_772_368_496_789
    # Floor, not truncation towards zero, before the epoch.
    assert epoch_millis(EPOCH - timedelta(microseconds=1)) == -1
    assert from_epoch_millis(1_772_368_496_789) == MOMENT
    assert from_epoch_millis(epoch_millis(MOMENT)) == MOMENT


def test_epoch_seconds_are_aware_utc() -> None:
    assert from_epoch_seconds(0) == EPOCH
    assert from_epoch_seconds(1_772_368_496.789).tzinfo == UTC
    assert format_time(from_epoch_seconds(1_772_368_496.5)) == "2026-03-01T12:34:56.500Z"
