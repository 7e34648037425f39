"""The answers: the split at the batch watermark, the reads of the hourly roll-up and the minutes
at a window's edges, answers over the roll-up equal to the plain sums of the plays (on and off the
hour, across the batch watermark), the default as-of time, and bad parameters."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from lambda_arch.serving import answers
from lambda_arch.serving.answers import reads_of, split_window
from lambda_arch.serving.store import ServingError, ServingStore, iso, time_from_seconds
from tests.lambda_arch.serving.oracle import (
    ROLL_BATCH,
    ROLL_WATERMARKS,
    assert_roll_answers,
    assert_rollups_agree,
    roll_oracle,
    rolled_store,
    utc,
)
from tests.lambda_arch.serving.pipeline import MIDNIGHT, Pipeline


def test_default_as_of_is_the_speed_watermark(served: Pipeline) -> None:
    state = served.store.view_state("trending")
    assert state.speed_watermark is not None
    answer = answers.trending(served.store)
    assert answer["as_of"] == iso(state.speed_watermark.replace(second=0, microsecond=0))
    assert answer["speed_watermark"] == iso(state.speed_watermark)
    assert answer["window_minutes"] == 60 and answer["country"] is None


def test_the_split_follows_the_contract() -> None:
    wm = MIDNIGHT
    start, end = utc(23, 0, day=1), utc(1, 0)
    s = split_window(start, end, wm)
    assert (s.batch_from, s.batch_to, s.speed_from, s.speed_to) == (
        int(start.timestamp()),
        int(wm.timestamp()),
        int(wm.timestamp()),
        int(end.timestamp()),
    )
    # Wholly before or after the watermark, and no watermark at all.
    before = split_window(utc(20, 0, day=1), utc(21, 0, day=1), wm)
    assert before.speed_from == before.speed_to and before.batch_to > before.batch_from
    after = split_window(utc(2, 0), utc(3, 0), wm)
    assert after.batch_from == after.batch_to and after.speed_to > after.speed_from
    none = split_window(start, end, None)
    assert none.batch_from == none.batch_to and none.speed_from == int(start.timestamp())


@pytest.mark.parametrize(
    ("first", "to", "hours"),
    [
        (utc(3, 0), utc(4, 0), [(utc(3, 0), utc(4, 0))]),  # one whole hour: roll-up only
        (utc(3, 1), utc(4, 0), []),  # less than an hour: minutes only
        (utc(3, 30), utc(4, 30), []),  # an hour across a boundary: no whole hour in it
        (utc(3, 59), utc(5, 1), [(utc(4, 0), utc(5, 0))]),
        (utc(3, 17), utc(3, 17, day=3), [(utc(4, 0), utc(3, 0, day=3))]),  # a day off the hour
        (utc(0, 0), utc(0, 0, day=3), [(utc(0, 0), utc(0, 0, day=3))]),  # a day on the hour
        (utc(3, 0), utc(3, 0), []),  # empty
    ],
)
def test_reads_cover_each_minute_of_a_range_once(
    first: datetime, to: datetime, hours: list[tuple[datetime, datetime]]
) -> None:
    first_s, to_s = int(first.timestamp()), int(to.timestamp())
    reads = reads_of("trending_batch", first_s, to_s)
    assert [
        (time_from_seconds(r.first), time_from_seconds(r.to)) for r in reads if r.column == "hour"
    ] == hours
    covered = []
    for read in reads:
        assert read.table == (
            "trending_batch_hourly" if read.column == "hour" else "trending_batch"
        )
        covered += range(read.first, read.to, 60)
    assert sorted(covered) == list(range(first_s, to_s, 60))


@pytest.mark.parametrize("watermark", ROLL_WATERMARKS.values(), ids=ROLL_WATERMARKS.keys())
def test_rollup_answers_equal_the_minutes(tmp_path: Path, watermark: datetime | None) -> None:
    store = rolled_store(tmp_path / "store.sqlite3", ROLL_BATCH, watermark)
    assert_rollups_agree(store)
    assert assert_roll_answers(store, roll_oracle(ROLL_BATCH, watermark)) == 3 * 3 * 8 * 7


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: answers.trending(s, country="us"), "country"),
        (lambda s: answers.trending(s, country="XX"), "country"),
        (lambda s: answers.trending(s, window=0), "window"),
        (lambda s: answers.trending(s, limit=0), "limit"),
        (lambda s: answers.trending(s, limit=1001), "limit"),
        (lambda s: answers.discovery(s, window=10**9), "window"),
        (lambda s: answers.sessions(s, member_id=-1), "member_id"),
    ],
)
def test_bad_parameters_are_clear_errors(tmp_path: Path, call, message: str) -> None:
    with pytest.raises(ServingError, match=message):
        call(ServingStore(tmp_path / "store.sqlite3"))


def test_an_empty_store_answers_empty(tmp_path: Path) -> None:
    store = ServingStore(tmp_path / "store.sqlite3")
    answer = answers.trending(store, as_of=utc(1, 0))
    assert answer == {
        "country": None,
        "as_of": "2026-03-02T01:00:00Z",
        "window_minutes": 60,
        "batch_watermark": None,
        "speed_watermark": None,
        "titles": [],
    }
    assert answers.discovery(store, as_of=utc(1, 0))["sources"] == []
    assert answers.sessions(store, member_id=1)["sessions"] == []
