"""ISO-8601 UTC times with a `Z`, as every layer writes and reads them, and epoch milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Precision = Literal["milliseconds", "shortest"]


def format_time(moment: datetime, precision: Precision = "milliseconds") -> str:
    """A time as UTC ISO-8601 ending in `Z`.

    "milliseconds" always writes three fraction digits (state files, events, alerts);
    "shortest" writes whole seconds bare and keeps only the fraction digits that carry
    information (the serving answers), so a round trip through `parse_time` is exact.
    """
    moment = moment.astimezone(UTC)
    timespec = "milliseconds"
    if precision == "shortest":
        timespec = "seconds"
        if moment.microsecond:
            timespec = "milliseconds" if moment.microsecond % 1000 == 0 else "microseconds"
    return moment.isoformat(timespec=timespec).replace("+00:00", "Z")


def format_optional_time(
    moment: datetime | None, precision: Precision = "milliseconds"
) -> str | None:
    """`format_time`, with None (no time yet) passed through."""
    return None if moment is None else format_time(moment, precision)


def parse_time(text: str, *, assume_utc: bool = False) -> datetime:
    """An ISO-8601 time with `Z`/`z` or an offset as an aware UTC datetime.

    ValueError when the text is not a time, or has no offset unless `assume_utc` says whoever
    wrote it meant UTC (Spark's progress reports).
    """
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{_quoted(text)} is not an ISO-8601 time such as 2026-03-01T12:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        if not assume_utc:
            raise ValueError(f"{_quoted(text)} has no UTC offset: add Z or +HH:MM")
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def parse_optional_time(text: object, *, assume_utc: bool = False) -> datetime | None:
    """`parse_time` of a state-file field, None when the field is missing or empty."""
    if not text:
        return None
    return parse_time(str(text), assume_utc=assume_utc)


def epoch_millis(moment: datetime) -> int:
    """Milliseconds since the epoch (floor) of an aware datetime."""
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def from_epoch_millis(millis: int) -> datetime:
    """The aware UTC datetime of epoch milliseconds (exact: no float on the way)."""
    return EPOCH + timedelta(milliseconds=millis)


def from_epoch_seconds(seconds: float) -> datetime:
    """The aware UTC datetime of epoch seconds, as `time.time()` and Kafka clients give them."""
    return datetime.fromtimestamp(seconds, tz=UTC)


def _quoted(text: str, most: int = 60) -> str:
    """The text as an error message quotes it: repr, cut to `most` characters (a hostile
    request may send kilobytes)."""
    return repr(text if len(text) <= most else text[:most] + "...")
