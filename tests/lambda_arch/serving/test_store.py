"""The store: every write keeps the hourly roll-up equal to the minutes it sums (a batch day
replaced or dropped, speed rows pruned), a store written before the roll-up existed gets it when
opened, and times print and parse as UTC ISO-8601."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lambda_arch.serving.store import (
    SCHEMA_VERSION,
    ServingError,
    ServingStore,
    drop_batch_day,
    iso,
    parse_iso,
    prune_speed,
    replace_batch_day,
)
from lambda_arch.views.spec import DISCOVERY, TRENDING, VIEWS
from tests.lambda_arch.serving.oracle import (
    ROLL_BATCH,
    assert_roll_answers,
    assert_rollups_agree,
    count_rows,
    plays_between,
    roll_oracle,
    rolled_store,
    utc,
)


def test_replacing_or_dropping_a_batch_day_updates_the_rollup(tmp_path: Path) -> None:
    watermark = utc(0, 0, day=3)
    store = rolled_store(tmp_path / "store.sqlite3", ROLL_BATCH, watermark)
    # Day 1 recomputed with other plays, none after noon: its afternoon hours must empty out.
    redone = plays_between(utc(0, 0, day=1), utc(12, 0, day=1), seed=3, count=800)
    second_day = [e for e in ROLL_BATCH if e.event_time >= utc(0, 0)]
    with store.writing() as connection:
        for view in ("trending", "discovery"):
            rows = count_rows(redone, view)["2026-03-01"]
            replace_batch_day(connection, VIEWS[view], "2026-03-01", "v2", rows)
    assert_rollups_agree(store)
    assert assert_roll_answers(store, roll_oracle(redone + second_day, watermark))
    # Day 2 lost its state in the lake (refresh_view drops it).
    with store.writing() as connection:
        for view in ("trending", "discovery"):
            drop_batch_day(connection, VIEWS[view], "2026-03-02")
    assert_rollups_agree(store)
    assert assert_roll_answers(store, roll_oracle(redone, watermark))
    assert store.batch_days("trending") == {"2026-03-01": "v2"}


def test_pruning_speed_rows_updates_the_rollup(tmp_path: Path) -> None:
    watermark = utc(17, 30)  # off the hour: the speed roll-up keeps a part of 17:00
    store = rolled_store(tmp_path / "store.sqlite3", ROLL_BATCH, watermark)
    with store.writing() as connection:
        pruned = [
            prune_speed(connection, spec, int(watermark.timestamp()))
            for spec in (TRENDING, DISCOVERY)
        ]
    assert all(pruned)
    assert_rollups_agree(store)
    # The split never read speed rows before the watermark: the answers are unchanged.
    assert assert_roll_answers(store, roll_oracle(ROLL_BATCH, watermark))
    with store.writing() as connection:
        for spec in (TRENDING, DISCOVERY):
            prune_speed(connection, spec, None)  # a rebuild of the speed layer
    assert_rollups_agree(store)
    assert store.row_counts("trending")["trending_speed"] == 0


def test_a_store_from_before_the_rollup_gets_it_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    watermark = utc(17, 30)
    rolled_store(path, ROLL_BATCH, watermark).close()
    # The older code's file: the same tables without the hourly ones, user_version 0.
    with closing(sqlite3.connect(path, isolation_level=None)) as old:
        for spec in (TRENDING, DISCOVERY):
            for table in (spec.batch_store, spec.speed_store):
                old.execute(f"DROP TABLE {table}_hourly")
        old.execute("PRAGMA user_version = 0")
    store = ServingStore(path)
    assert assert_roll_answers(store, roll_oracle(ROLL_BATCH, watermark))
    assert_rollups_agree(store)
    with closing(sqlite3.connect(path)) as upgraded:
        version = upgraded.execute("PRAGMA user_version").fetchone()[0]
        hourly = upgraded.execute("SELECT count(*) FROM trending_batch_hourly").fetchone()[0]
    assert version == SCHEMA_VERSION and hourly > 0


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("2026-03-01T12:00:00Z", datetime(2026, 3, 1, 12, tzinfo=UTC)),
        ("2026-03-01T14:00:00+02:00", datetime(2026, 3, 1, 12, tzinfo=UTC)),
        ("2026-03-01 12:00:00.5z", datetime(2026, 3, 1, 12, 0, 0, 500000, tzinfo=UTC)),
    ],
)
def test_times_parse_and_print_as_utc(text: str, want: datetime) -> None:
    assert parse_iso(text) == want
    assert parse_iso(iso(want)) == want


@pytest.mark.parametrize("text", ["2026-03-01T12:00:00", "yesterday", "2026-02-30T00:00:00Z"])
def test_bad_times_are_clear_errors(text: str) -> None:
    with pytest.raises(ServingError, match=r"ISO-8601|offset"):
        parse_iso(text)
