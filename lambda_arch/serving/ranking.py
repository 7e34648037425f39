"""Ranking per-minute play counts into the contract's answers (CONTRACT section 3), and markdown.

`top_titles` ranks a counts DataFrame with `minute`, `title_id` and `plays` (a speed view, for the
speed asset's metadata); `ranked_rows` shapes the (key, plays) pairs the serving answers
(`lambda_arch.serving.answers`) have summed into a count view's `rows` (trending's `titles` and
discovery's `sources` are those rows); `ranked_titles` and `shares` are the older shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


@dataclass(frozen=True)
class Window:
    """The half-open event-time window [start, end) of a query: end cut down to the minute."""

    start: datetime
    end: datetime

    @classmethod
    def ending_at(cls, as_of: datetime, minutes: int) -> Window:
        if minutes < 1:
            raise ValueError("the window must be at least 1 minute")
        end = as_of.astimezone(UTC).replace(second=0, microsecond=0)
        return cls(end - timedelta(minutes=minutes), end)


def _in_window(counts: DataFrame, window: Window, country: str | None) -> DataFrame:
    from pyspark.sql import functions as F

    # Aware datetimes become instants whatever the session time zone is.
    selected = counts.where(
        (F.col("minute") >= F.lit(window.start)) & (F.col("minute") < F.lit(window.end))
    )
    return selected if country is None else selected.where(F.col("country") == country)


def top_titles(
    counts: DataFrame, window: Window, *, country: str | None = None, limit: int = 10
) -> list[dict[str, int]]:
    """Titles by plays in the window, most first, ties by title_id ascending; the top `limit`."""
    from pyspark.sql import functions as F

    ranked = (
        _in_window(counts, window, country)
        .groupBy("title_id")
        .agg(F.sum("plays").alias("plays"))
        .where(F.col("plays") > 0)
        .orderBy(F.col("plays").desc(), F.col("title_id").asc())
        .limit(limit)
        .collect()
    )
    return ranked_titles([(row["title_id"], row["plays"]) for row in ranked])


def ranked_titles(plays_by_title: Sequence[tuple[Any, Any]]) -> list[dict[str, int]]:
    """(title_id, plays) pairs already in rank order as the contract's `titles` entries."""
    return [
        {"rank": rank, "title_id": int(title), "plays": int(plays)}
        for rank, (title, plays) in enumerate(plays_by_title, start=1)
    ]


def shares(plays_by_source: Sequence[tuple[str, Any]]) -> list[dict[str, Any]]:
    """(discovery_source, plays) pairs as the contract's `sources` entries: share of all plays
    (4 decimals), most plays first, ties by name."""
    total = sum(int(plays) for _, plays in plays_by_source)
    ordered = sorted(plays_by_source, key=lambda item: (-int(item[1]), item[0]))
    return [
        {"discovery_source": source, "plays": int(plays), "share": round(int(plays) / total, 4)}
        for source, plays in ordered
    ]


def ranked_rows(
    ranked: str, form: str, plays_by_key: Sequence[tuple[Any, Any]], limit: int | None = None
) -> list[dict[str, Any]]:
    """(key, plays) pairs as a count view's `rows` (CONTRACT section 9): `top` ranks them by
    plays, ties by key ascending; `shares` adds each key's share of all the pairs' plays (4
    decimals), most plays first, ties by name. At most `limit` rows (shares of the whole)."""
    if form == "shares":
        total = sum(int(plays) for _, plays in plays_by_key)
        ordered = sorted(plays_by_key, key=lambda item: (-int(item[1]), item[0]))[:limit]
        return [
            {"rank": rank, ranked: key, "plays": int(plays), "share": round(int(plays) / total, 4)}
            for rank, (key, plays) in enumerate(ordered, start=1)
        ]
    ordered = sorted(plays_by_key, key=lambda item: (-int(item[1]), item[0]))[:limit]
    return [
        {"rank": rank, ranked: key, "plays": int(plays)}
        for rank, (key, plays) in enumerate(ordered, start=1)
    ]


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A markdown table (Dagster renders it in the asset's metadata); a line when empty."""
    if not rows:
        return "_no plays in the window_"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
