"""Ranking counts into the contract's entries (CONTRACT section 3): the window of a query, titles
in rank order, shares per discovery source, and the markdown table of the assets' metadata."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from lambda_arch.serving.ranking import Window, markdown_table, ranked_titles, shares


def test_a_window_ends_at_the_whole_minute_in_utc() -> None:
    as_of = datetime(2026, 3, 2, 2, 17, 41, tzinfo=timezone(timedelta(hours=2)))
    window = Window.ending_at(as_of, 30)
    assert window.end == datetime(2026, 3, 2, 0, 17, tzinfo=UTC)
    assert window.start == datetime(2026, 3, 1, 23, 47, tzinfo=UTC)
    with pytest.raises(ValueError, match="at least 1 minute"):
        Window.ending_at(as_of, 0)


def test_titles_keep_their_order_and_get_ranks() -> None:
    assert ranked_titles([(7, 9), ("3", 9.0), (1, 2)]) == [
        {"rank": 1, "title_id": 7, "plays": 9},
        {"rank": 2, "title_id": 3, "plays": 9},
        {"rank": 3, "title_id": 1, "plays": 2},
    ]
    assert ranked_titles([]) == []


def test_shares_are_ordered_by_plays_then_name_with_four_decimals() -> None:
    assert shares([("search", 1), ("row", 1), ("home", 4)]) == [
        {"discovery_source": "home", "plays": 4, "share": 0.6667},
        {"discovery_source": "row", "plays": 1, "share": 0.1667},
        {"discovery_source": "search", "plays": 1, "share": 0.1667},
    ]
    assert shares([]) == []


def test_markdown_table_and_its_empty_line() -> None:
    rows = [{"rank": 1, "title_id": 42, "plays": 17}]
    assert markdown_table(rows, ["rank", "title_id", "plays"]) == (
        "| rank | title_id | plays |\n|---|---|---|\n| 1 | 42 | 17 |"
    )
    assert markdown_table([], ["rank"]) == "_no plays in the window_"
