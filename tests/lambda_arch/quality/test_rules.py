"""Data-quality rules (lambda_arch.quality.rules) on pandas frames and the suite's SparkSession: each
rule passes on good rows and fails, naming the bad rows, on rows made bad on purpose."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pytest

from lambda_arch.quality import rules as quality

DAY = "2026-03-01"


def events(**changes: object) -> pd.DataFrame:
    """Three valid clean events of DAY; `changes` maps column -> value for the last row."""
    frame = pd.DataFrame(
        {
            "event_id": ["a", "b", "c"],
            "event_type": ["play_start", "play_heartbeat", "play_stop"],
            "event_time": pd.to_datetime(
                ["2026-03-01 00:00", "2026-03-01 12:00", "2026-03-01 23:59"]
            ),
            "member_id": [1, 2, 3],
            "title_id": [10, 20, 30],
            "country": ["US", "DE", "BR"],
            "device": ["tv", "web", "other"],
            "discovery_source": ["search", "top_10", "other"],
            "position_ms": [None, 1000.0, 0.0],
            "dt": [DAY] * 3,
            quality.DAY_COLUMN: [DAY] * 3,
        }
    )
    for column, value in changes.items():
        frame[column] = frame[column].astype(object)
        frame.loc[2, column] = value
    return frame


def failed(validation: quality.Validation) -> set[tuple[str, str]]:
    return {(o.expectation, o.column) for o in validation.failed}


def test_good_clean_events_pass_every_expectation() -> None:
    validation = quality.run_expectations("clean", events(), quality.clean_expectations())
    assert validation.success, validation.failures_markdown()
    assert validation.rows == validation.checked_rows == 3
    assert validation.bad_rows == ()
    assert "passed" in validation.failures_markdown()
    # Analytics are off through the GX context's setting, not the process environment.
    assert quality._gx_context().config.analytics_enabled is False


@pytest.mark.parametrize(
    ("column", "value", "expectation"),
    [
        ("event_type", "play_pause", "expect_column_values_to_be_in_set"),
        ("device", "fridge", "expect_column_values_to_be_in_set"),
        ("discovery_source", "radio", "expect_column_values_to_be_in_set"),
        ("country", "XX", "expect_column_values_to_be_in_set"),
        ("member_id", -1, "expect_column_values_to_be_between"),
        ("title_id", -5, "expect_column_values_to_be_between"),
        ("position_ms", -1.0, "expect_column_values_to_be_between"),
        ("event_id", None, "expect_column_values_to_not_be_null"),
        ("event_id", "", "expect_column_value_lengths_to_be_between"),
        (quality.DAY_COLUMN, "2026-03-02", "expect_column_pair_values_to_be_equal"),
    ],
)
def test_a_bad_clean_event_fails_its_expectation_and_is_shown(
    column: str, value: object, expectation: str
) -> None:
    validation = quality.run_expectations(
        "clean", events(**{column: value}), quality.clean_expectations()
    )
    assert not validation.success
    assert expectation in {o.expectation for o in validation.failed}
    # The bad row (event c) is in the sample, and the markdown names the expectation.
    (bad_row,) = validation.bad_rows
    assert bad_row[column] == value and bad_row["member_id"] in (3, -1)
    assert expectation in validation.failures_markdown()
    assert "| event_id |" in validation.bad_rows_markdown()


def test_views_pass_on_good_rows_and_fail_on_bad_ones() -> None:
    minute = pd.to_datetime(["2026-03-01 10:00", "2026-03-01 10:00", "2026-03-01 10:01"])
    trending = pd.DataFrame(
        {
            "minute": minute,
            "country": ["US", "US", "DE"],
            "title_id": [1, 2, 1],
            "plays": [3, 1, 2],
            "dt": [DAY] * 3,
            quality.DAY_COLUMN: [DAY] * 3,
        }
    )
    assert quality.run_expectations("t", trending, quality.trending_expectations()).success
    bad = trending.copy()
    bad.loc[2, ["country", "title_id", "plays"]] = ["US", 2, 0]  # repeated bucket, 0 plays
    bad.loc[2, "minute"] = minute[0]
    assert failed(quality.run_expectations("t", bad, quality.trending_expectations())) == {
        ("expect_column_values_to_be_between", "plays"),
        ("expect_compound_columns_to_be_unique", "dt, minute, country, title_id"),
    }

    sessions = pd.DataFrame(
        {
            "member_id": [1, 2],
            "title_id": [5, 5],
            "session_start": pd.to_datetime(["2026-03-01 10:00", "2026-02-28 23:50"]),
            "session_end": pd.to_datetime(["2026-03-01 10:00", "2026-03-01 00:10"]),
            "events": [1, 4],
            "watched_ms": [0, 60_000],
            "dt": [DAY] * 2,
            quality.DAY_COLUMN: [DAY] * 2,
        }
    )
    assert quality.run_expectations("s", sessions, quality.sessions_expectations()).success
    sessions.loc[1, ["session_start", "events", "watched_ms"]] = [
        pd.Timestamp("2026-03-01 01:00"),
        0,
        -1,
    ]
    assert {
        e
        for e, _ in failed(quality.run_expectations("s", sessions, quality.sessions_expectations()))
    } == {
        "expect_column_pair_values_a_to_be_greater_than_b",
        "expect_column_values_to_be_between",
    }


def test_discovery_shares_sum_to_one_within_rounding() -> None:
    # Thirds round to 0.3333 each: the sum 0.9999 is within 3 * 0.00005 of 1.
    frame = pd.DataFrame(
        {
            "dt": [DAY] * 4,
            "minute": ["10:00"] * 3 + ["10:01"],
            "country": ["US"] * 4,
            "plays": [1, 1, 1, 5],
        }
    )
    assert quality.share_outcome(frame).success
    frame.loc[3, "plays"] = None  # a bucket without a count
    outcome = quality.share_outcome(frame)
    assert not outcome.success and outcome.unexpected_count == 1


def test_schema_outcome_names_missing_mistyped_and_extra_columns() -> None:
    expected = [("a", "bigint"), ("b", "string")]
    assert quality.schema_outcome([("a", "bigint"), ("b", "string")], expected).success
    outcome = quality.schema_outcome([("a", "int"), ("c", "string")], expected)
    assert not outcome.success
    assert outcome.detail == "a: int, expected bigint; b: missing; c: unexpected column"


@pytest.mark.parametrize(
    ("ratio", "level"),
    [(0.0, "ok"), (0.01, "ok"), (0.011, "warn"), (0.05, "warn"), (0.06, "error")],
)
def test_quarantine_levels(ratio: float, level: str) -> None:
    assert quality.quarantine_level(ratio, 0.01, 0.05) == level


def test_offset_gaps_and_covered_ranges() -> None:
    assert quality.offset_gaps({"0": 10, "1": 5}, {"0": 7, "1": 9, "2": 1}) == (3, 5)
    watermark = datetime(2026, 3, 2, 0, 20, 30, tzinfo=UTC)
    assert quality.covered_range([date(2026, 3, 2), date(2026, 3, 1)], watermark) == [
        (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC)),
        (datetime(2026, 3, 2, tzinfo=UTC), datetime(2026, 3, 2, 0, 20, tzinfo=UTC)),
    ]
    assert quality.covered_range([date(2026, 3, 3)], watermark) == []


def test_covered_spans_are_disjoint_pieces_of_at_most_one_day() -> None:
    day = datetime(2026, 3, 1, tzinfo=UTC)
    hour = timedelta(hours=1)
    # Touching and overlapping ranges merge; the merged span is cut at each UTC midnight.
    ranges = [
        (day, day + 20 * hour),
        (day + 20 * hour, day + 30 * hour),
        (day + hour, day + 2 * hour),
    ]
    assert quality.covered_spans([*ranges, (day + 40 * hour, day + 40 * hour)]) == [
        ("2026-03-01", day, day + 24 * hour),
        ("2026-03-02", day + 24 * hour, day + 30 * hour),
    ]
    # 400 whole days: one piece per day, a table of 400 rows rather than 400 nested conditions.
    days = [date(2025, 1, 1) + timedelta(days=n) for n in range(400)]
    pieces = quality.covered_spans(quality.covered_range(days, datetime(2027, 1, 1, tzinfo=UTC)))
    assert len(pieces) == 400 and pieces[-1][0] == days[-1].isoformat()


# On Spark ---------------------------------------------------------------------------------------


def test_spark_helpers_day_sample_and_duplicates(spark) -> None:
    from pyspark.sql import functions as F

    frame = spark.createDataFrame(
        [("a", "2026-03-01"), ("b", "2026-03-01"), ("b", "2026-03-01"), ("c", "2026-03-02")],
        "event_id string, dt string",
    ).withColumn("t", F.to_timestamp(F.lit("2026-03-01 23:59:59")))
    assert {r[0] for r in frame.select(quality.utc_day(F.col("t"))).collect()} == {"2026-03-01"}

    rows, total = quality.bounded_pandas(spark.range(5000), 1000)
    assert total == 5000 and 0 < len(rows) <= 1000
    rows, total = quality.bounded_pandas(spark.range(50), 1000)
    assert total == len(rows) == 50

    outcome, examples = quality.duplicates_outcome(frame, ["dt", "event_id"])
    assert not outcome.success and outcome.unexpected_count == 2
    assert examples == [{"dt": "2026-03-01", "event_id": "b", "copies": 2}]
    assert quality.duplicates_outcome(frame.dropDuplicates(), ["dt", "event_id"])[0].success


def test_reconcile_explains_differences_by_late_events_only(spark) -> None:
    schema = "minute timestamp, country string, title_id bigint, plays bigint"
    m = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    later = datetime(2026, 3, 1, 23, 59, tzinfo=UTC)
    batch = spark.createDataFrame([(m, "US", 1, 5), (m, "US", 2, 1), (later, "US", 1, 9)], schema)
    # Speed: deltas of two micro-batches for title 1 (summed), title 2 dropped as late, and
    # minute 23:59 not settled yet (the watermark has not passed it).
    speed = spark.createDataFrame([(m, "US", 1, 2), (m, "US", 1, 1), (later, "US", 1, 1)], schema)
    ranges = quality.covered_range([date(2026, 3, 1)], datetime(2026, 3, 1, 23, 59, 30, tzinfo=UTC))
    differences = quality.bucket_differences(batch, speed, ranges)

    explained = quality.reconcile(differences, late_events_total=3)
    assert explained.passed, explained.summary()
    assert (explained.buckets, explained.missing_in_speed, explained.missing_in_batch) == (2, 3, 0)
    assert explained.offenders[0] == {
        "minute": m.replace(tzinfo=None),
        "country": "US",
        "title_id": 1,
        "batch": 5,
        "speed": 3,
        "diff": 2,
    }
    assert (
        "| minute | country | title_id | batch | speed | diff |" in explained.offenders_markdown()
    )

    unexplained = quality.reconcile(differences, late_events_total=2)
    assert not unexplained.passed and "NOT explained" in unexplained.summary()
    # Unread records on the landing side widen the allowance by one each.
    assert quality.reconcile(differences, late_events_total=2, landing_ahead=1).passed

    # Speed above batch is never explained by late events, only by records not yet landed.
    ahead = spark.createDataFrame([(m, "US", 3, 1)], schema).unionByName(speed)
    over = quality.reconcile(quality.bucket_differences(batch, ahead, ranges), late_events_total=9)
    assert not over.passed and over.missing_in_batch == 1
    assert quality.reconcile(
        quality.bucket_differences(batch, ahead, ranges), late_events_total=9, speed_ahead=1
    ).passed
