"""Asset checks on a real Dagster instance, broker and SparkSession: every check passes on good
data and fails on data made bad on purpose (rows written behind the pipeline's back with Spark
SQL, malformed records, a stalled speed layer)."""

from __future__ import annotations

import json
import time
from datetime import UTC, date, datetime, timedelta

from dagster import AssetCheckSeverity, AssetSelection, DagsterInstance, materialize

from assets.batch import BATCH_ASSETS, play_events_clean, trending_batch
from assets.checks import (
    GX_CHECKS,
    quarantine_ratio,
    raw_events_expectations,
    speed_freshness_checks,
    speed_matches_batch,
)
from assets.speed import SPEED_ASSETS, counts
from lambda_arch.batch.lake import Lake
from lambda_arch.common.config import Settings
from resources import build_resources
from tests.assets.test_batch_assets import send

DAY = date(2026, 3, 1)
START = datetime(2026, 3, 1, tzinfo=UTC)
# The checks of the batch assets (the raw one targets play_events_raw, an output of counts).
BATCH_CHECKS = [*GX_CHECKS[1:], speed_matches_batch]


def event(n: int, moment: datetime, event_type: str = "play_start") -> bytes:
    return json.dumps(
        {
            "event_id": f"e{n}",
            "event_type": event_type,
            "event_time": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "member_id": n % 13,
            "title_id": n % 7,
            "country": ("US", "DE", "BR")[n % 3],
            "discovery_source": ("search", "top_10", "other")[n % 3],
            "position_ms": (n % 5) * 60_000,
        }
    ).encode()


def checks_of(result, name: str):
    return {e.check_name: e for e in result.get_asset_check_evaluations() if e.check_name == name}[
        name
    ]


def run(instance: DagsterInstance, assets: list, **kwargs):
    return materialize(
        assets, resources=build_resources(), instance=instance, raise_on_error=False, **kwargs
    )


def checks(definitions: list) -> AssetSelection:
    return AssetSelection.checks(*definitions)


def freshness(result) -> dict:
    """Freshness evaluations by asset name."""
    return {e.asset_key.path[-1]: e for e in result.get_asset_check_evaluations()}


def day_traffic(count: int = 240) -> list[bytes]:
    """Events every 6 minutes of DAY (a mix of types), and one the next day so DAY is settled."""
    types = ("play_start", "play_start", "play_heartbeat", "play_stop")
    payloads = [event(n, START + timedelta(minutes=6 * n), types[n % 4]) for n in range(count)]
    return [*payloads, event(9_999, START + timedelta(days=1, minutes=30))]


def test_landing_checks_pass_then_fail_on_malformed_traffic_bad_rows_and_stalls(
    spark, speed_env: Settings, instance: DagsterInstance
) -> None:
    send(speed_env, day_traffic(200))
    result = run(instance, [counts, raw_events_expectations, quarantine_ratio])
    assert result.success
    raw = checks_of(result, "raw_events_expectations")
    assert raw.passed, raw.metadata["failures"].value
    assert raw.metadata["rows"].value == 201
    assert checks_of(result, "quarantine_ratio").passed

    # Freshness: fresh right after landing; sessions_speed never ran; a stalled layer is overdue.
    fresh = speed_freshness_checks(timedelta(minutes=15))
    evaluations = freshness(run(instance, [*SPEED_ASSETS, *fresh], selection=checks(fresh)))
    assert evaluations["play_events_raw"].passed
    assert evaluations["trending_speed"].passed  # landed and counted by the same query
    assert not evaluations["sessions_speed"].passed
    time.sleep(1.5)
    tight = speed_freshness_checks(timedelta(seconds=1))
    stalled = freshness(run(instance, [*SPEED_ASSETS, *tight], selection=checks(tight)))
    assert not stalled["play_events_raw"].passed
    assert stalled["play_events_raw"].severity == AssetCheckSeverity.WARN

    # 3 malformed of 103 records: above 1% (WARN), then 8 of 108 above 5% (ERROR).
    send(speed_env, [*[event(500 + n, START) for n in range(100)], *[b"{oops"] * 3])
    warned = checks_of(run(instance, [counts, quarantine_ratio]), "quarantine_ratio")
    assert not warned.passed and warned.severity == AssetCheckSeverity.WARN
    assert warned.metadata["quarantine_ratio"].value == round(3 / 103, 6)
    assert warned.metadata["cumulative_ratio"].value == round(3 / 304, 6)
    send(speed_env, [*[event(700 + n, START) for n in range(100)], *[b'{"a": 1}'] * 8])
    errored = checks_of(run(instance, [counts, quarantine_ratio]), "quarantine_ratio")
    assert not errored.passed and errored.severity == AssetCheckSeverity.ERROR

    # A row written into the lake behind the landing's back (unknown country, negative id).
    lake = Lake.from_settings(speed_env)
    spark.sql(
        f"INSERT INTO {lake.table('play_events')} PARTITION (dt='2026-03-01', hour=0) "
        "SELECT 'bad-1', 'play_start', TIMESTAMP'2026-03-01 00:00:00', -1, 3, 'XX', 'tv', "
        "'search', NULL, 't', 0, 0, current_timestamp(), current_timestamp()"
    )
    failed = checks_of(
        run(
            instance,
            [counts, raw_events_expectations],
            selection=checks([raw_events_expectations]),
        ),
        "raw_events_expectations",
    )
    assert not failed.passed and failed.severity == AssetCheckSeverity.ERROR
    assert "expect_column_values_to_be_in_set" in failed.metadata["failures"].value
    assert "bad-1" in failed.metadata["bad_rows_sample"].value


def test_batch_checks_pass_on_good_days_and_fail_on_bad_rows(
    spark, speed_env: Settings, instance: DagsterInstance
) -> None:
    send(speed_env, day_traffic())
    assert run(instance, [counts]).success
    # Late plays of DAY after the speed watermark passed it: landed, dropped by the speed layer.
    send(speed_env, [event(8_000 + n, START + timedelta(hours=12, seconds=n)) for n in range(3)])
    speed_run = run(instance, [counts])
    (late,) = [
        m.metadata
        for m in speed_run.asset_materializations_for_node("counts")
        if m.asset_key.to_user_string() == "trending_speed"
    ]
    assert late["late_events"].value == 3

    key = DAY.isoformat()
    result = run(instance, [*BATCH_ASSETS, *BATCH_CHECKS], partition_key=key)
    assert result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == {c.check_key.name for c in BATCH_CHECKS}
    for name, evaluation in evaluations.items():
        assert evaluation.passed, (name, evaluation.metadata)
    reconciled = evaluations["speed_matches_batch"].metadata
    assert reconciled["missing_in_speed"].value == 3
    assert reconciled["late_events_total"].value == 3
    assert reconciled["covered_buckets"].value > 100

    # Rows made bad on purpose, one per table, behind the batch layer's back.
    lake = Lake.from_settings(speed_env)
    part = f"PARTITION (dt='{key}')"
    spark.sql(
        f"INSERT INTO {lake.table('play_events_clean')} {part} SELECT event_id, event_type, "
        "event_time, member_id, title_id, country, device, discovery_source, position_ms, topic, "
        f"partition, offset FROM {lake.table('play_events_clean')} WHERE dt='{key}' LIMIT 1"
    )
    spark.sql(
        f"INSERT INTO {lake.table('trending_batch')} {part} "
        "VALUES (TIMESTAMP'2026-03-01 10:00:00', 'US', 424242, 5), "
        "(TIMESTAMP'2026-03-05 00:00:00', 'US', 1, 0)"
    )
    spark.sql(
        f"INSERT INTO {lake.table('discovery_batch')} {part} "
        "VALUES (TIMESTAMP'2026-03-02 10:00:00', 'US', 'radio', 0)"
    )
    spark.sql(
        f"INSERT INTO {lake.table('sessions_batch')} {part} VALUES "
        "(1, 2, TIMESTAMP'2026-03-01 10:00:00', TIMESTAMP'2026-03-01 09:00:00', 0, -5)"
    )
    rechecked = run(
        instance,
        [*BATCH_ASSETS, *BATCH_CHECKS],
        selection=checks(BATCH_CHECKS),
        # A checks-only run has no partitions definition: the checks read the day from the tag.
        tags={"dagster/partition": key},
    )
    evaluations = {e.check_name: e for e in rechecked.get_asset_check_evaluations()}
    for name in (
        "clean_events_expectations",
        "trending_batch_expectations",
        "discovery_batch_expectations",
        "sessions_batch_expectations",
        "speed_matches_batch",
    ):
        assert not evaluations[name].passed, name
        assert evaluations[name].severity == AssetCheckSeverity.ERROR
    assert "424242" in evaluations["speed_matches_batch"].metadata["top_differences"].value
    assert "radio" in evaluations["discovery_batch_expectations"].metadata["bad_rows_sample"].value
    assert "copies" in evaluations["clean_events_expectations"].metadata["bad_rows_sample"].value

    # Blocking: a bad raw row reaches play_events_clean, whose failing check stops the views.
    spark.sql(
        f"INSERT INTO {lake.table('play_events')} PARTITION (dt='{key}', hour=0) "
        "SELECT 'bad-1', 'play_start', TIMESTAMP'2026-03-01 00:00:00', 1, 3, 'XX', 'tv', "
        "'search', NULL, 't', 0, 0, current_timestamp(), current_timestamp()"
    )
    clean_check = BATCH_CHECKS[0]
    blocked = run(instance, [play_events_clean, trending_batch, clean_check], partition_key=key)
    assert not checks_of(blocked, "clean_events_expectations").passed
    assert blocked.asset_materializations_for_node("trending_batch") == []


def test_a_burst_of_events_from_the_future_shows_in_the_quarantine_ratio_check(
    spark, speed_env: Settings, instance: DagsterInstance
) -> None:
    """Plays stamped a day ahead of their Kafka timestamp (sent now) are quarantined with their
    reason: the ratio check fails (WARN: 3 of 103), counts them by reason in its metadata and
    names the reason in its description (which its alert carries)."""
    from lambda_arch.ingest.schema import REASON_FUTURE

    ahead = datetime.now(UTC) + timedelta(days=1)
    send(
        speed_env,
        [*[event(n, START) for n in range(100)], *[event(900 + n, ahead) for n in range(3)]],
    )
    result = run(instance, [counts, quarantine_ratio])
    check = checks_of(result, "quarantine_ratio")
    assert not check.passed and check.severity == AssetCheckSeverity.WARN
    assert check.metadata["quarantined"].value == 3
    assert check.metadata["quarantined_future"].value == 3
    assert REASON_FUTURE in (check.description or "")
    quarantine = Lake.from_settings(speed_env).table("play_events_quarantine")
    rows = spark.sql(f"SELECT reason, count(*) AS n FROM {quarantine} GROUP BY reason").collect()
    assert {(r["reason"], r["n"]) for r in rows} == {(REASON_FUTURE, 3)}
