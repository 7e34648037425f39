"""Dagster assets and checks per view declaration: `<view>_speed` (an output of the one counts
multi-asset) and `<view>_batch`, grouped and described from the declaration, with their GX suite
and the speed-vs-batch reconciliation. A bad views file never stops the code location from
loading (the built-in views stand in, the error is logged) and the runs and sensors that need
the views fail naming it. No JVM, no broker: the errors come before either is touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, AssetSelection, build_sensor_context, instance_for_test

from lambda_arch.views.declarations import ViewDeclarationError

REPO = Path(__file__).resolve().parents[2]
GOOD = """
[views.stops_by_device]
dimensions = ["device", "title_id"]
events = ["play_stop"]
form = "top"
description = "Stops per device and title (a test view)."
"""
BAD = """
[views.broken]
dimensions = ["colour"]
form = "top"
description = "A view of a field that does not exist."
"""
# What the error names: the view and its field (lambda_arch.views.declarations).
BAD_MESSAGE = "view 'broken': dimensions: 'colour' is not a countable event field"

DESCRIBE = """
import json
from lambda_arch.definitions import defs
graph = defs.resolve_asset_graph()
nodes = {key.to_user_string(): graph.get(key) for key in graph.get_all_asset_keys()}
print(json.dumps({
    "assets": {
        name: {"group": node.group_name, "description": node.description or ""}
        for name, node in nodes.items()
    },
    "checks": sorted(f"{k.asset_key.to_user_string()}:{k.name}" for k in graph.asset_check_keys),
}))
"""


def describe(tmp_path: Path, views_text: str) -> tuple[dict, str]:
    """The definitions a code server loads with this views file: (assets and checks, stderr)."""
    views = tmp_path / "views.toml"
    views.write_text(views_text, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDA_ARCH_")}
    env |= {
        "LAMBDA_ARCH_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(tmp_path),
        "LAMBDA_ARCH_VIEWS_FILE": str(views),
    }
    result = subprocess.run(
        [sys.executable, "-c", DESCRIBE],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1]), result.stderr


def test_a_declared_view_gets_its_assets_and_checks_from_its_declaration(tmp_path: Path) -> None:
    found, _ = describe(tmp_path, GOOD)
    assets, checks = found["assets"], set(found["checks"])
    for view in ("trending", "discovery", "device_mix", "stops_by_device"):
        assert assets[f"{view}_speed"]["group"] == "speed"
        assert assets[f"{view}_batch"]["group"] == "batch"
        assert f"{view}_batch:{view}_batch_expectations" in checks
        assert f"{view}_batch:speed_matches_batch" in checks
        assert f"{view}_speed:freshness_check" in checks
    for layer in ("speed", "batch"):
        description = assets[f"stops_by_device_{layer}"]["description"]
        assert description.startswith("Stops per device and title (a test view).")
        assert "device, title_id" in description and "play_stop" in description


def test_a_bad_views_file_loads_the_built_in_views_and_logs_why(tmp_path: Path) -> None:
    found, stderr = describe(tmp_path, BAD)
    speed = sorted(name for name in found["assets"] if name.endswith("_speed"))
    assert speed == ["device_mix_speed", "discovery_speed", "sessions_speed", "trending_speed"]
    assert BAD_MESSAGE in stderr


@pytest.fixture
def bad_views(env_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    views = tmp_path / "bad-views.toml"
    views.write_text(BAD, encoding="utf-8")
    monkeypatch.setenv("LAMBDA_ARCH_VIEWS_FILE", str(views))
    return views


def _failure_messages(result) -> str:
    return "\n".join(
        event.event_specific_data.error.to_string()
        for event in result.all_events
        if event.is_step_failure
    )


def test_runs_and_sensors_name_the_bad_views_file(bad_views: Path) -> None:
    from lambda_arch.definitions import defs

    speed_keys = [
        AssetKey("play_events_raw"),
        AssetKey("play_events_quarantine"),
        *(AssetKey(f"{v}_speed") for v in ("trending", "discovery", "device_mix")),
    ]
    with instance_for_test() as instance:
        speed = defs.resolve_job_def("speed_job").execute_in_process(
            instance=instance, asset_selection=speed_keys, raise_on_error=False
        )
        assert not speed.success
        assert BAD_MESSAGE in _failure_messages(speed)
        daily = defs.resolve_job_def("batch_job").execute_in_process(
            instance=instance,
            partition_key="2026-03-01",
            asset_selection=[AssetKey("trending_batch")],
            raise_on_error=False,
        )
        assert not daily.success
        assert BAD_MESSAGE in _failure_messages(daily)
    # (On an instance of its own: after a failed batch run the sensor backs off.)
    with instance_for_test() as instance:
        sensor = defs.get_sensor_def("day_complete_sensor")
        with (
            build_sensor_context(instance=instance, resources=defs.resources) as context,
            pytest.raises(ViewDeclarationError, match=BAD_MESSAGE),
        ):
            sensor(context)


SHARES_VIEW = """
[views.stops_mix]
dimensions = ["country", "event_type", "discovery_source"]
events = ["play_heartbeat", "play_stop"]
form = "shares"
description = "Heartbeats and stops per source, with their share (a test view)."
"""


def test_a_declared_views_checks_pass_on_good_days_and_fail_on_bad_rows(
    spark, speed_env, instance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The generated GX suite (schema, enums of each dimension, shares per bucket of the two
    filter dimensions) and the reconciliation of a view declared only here, on a real run."""
    from assets.batch import play_events_clean, view_batch_asset
    from assets.checks import reconciliation_check, view_batch_check
    from assets.speed import counts_asset
    from lambda_arch.batch.lake import Lake
    from lambda_arch.views.declarations import declared_views
    from tests.assets.test_batch_assets import send
    from tests.assets.test_checks import DAY, day_traffic, run

    views_path = tmp_path / "views.toml"
    views_path.write_text(SHARES_VIEW, encoding="utf-8")
    monkeypatch.setenv("LAMBDA_ARCH_VIEWS_FILE", str(views_path))
    views = declared_views(views_path)
    view = views[-1]
    suite, reconciled = view_batch_check(view), reconciliation_check(view)
    assets = [play_events_clean, view_batch_asset(view), suite, reconciled]

    send(speed_env, day_traffic())
    assert run(instance, [counts_asset(views)]).success
    result = run(instance, assets, partition_key=DAY.isoformat())
    assert result.success
    evaluations = {
        e.check_name: e
        for e in result.get_asset_check_evaluations()
        if e.asset_key.to_user_string() == "stops_mix_batch"
    }
    assert set(evaluations) == {"stops_mix_batch_expectations", "speed_matches_batch"}
    for name, evaluation in evaluations.items():
        assert evaluation.passed, (name, evaluation.metadata)
    assert evaluations["stops_mix_batch_expectations"].metadata["rows"].value > 0
    matched = evaluations["speed_matches_batch"].metadata
    assert matched["covered_buckets"].value > 0
    assert matched["missing_in_speed"].value == matched["missing_in_batch"].value == 0

    # A row of an unknown event type, counted zero times, in a bucket of its own (its share
    # alone is 1, the bucket it joins no longer sums to 1).
    lake = Lake.from_settings(speed_env)
    spark.sql(
        f"INSERT INTO {lake.table('stops_mix_batch')} PARTITION (dt='{DAY.isoformat()}') "
        "VALUES (TIMESTAMP'2026-03-01 00:06:00', 'DE', 'rewind', 'top_10', 0)"
    )
    rechecked = run(
        instance,
        assets,
        selection=AssetSelection.checks(suite, reconciled),
        tags={"dagster/partition": DAY.isoformat()},
    )
    evaluations = {e.check_name: e for e in rechecked.get_asset_check_evaluations()}
    failed = evaluations["stops_mix_batch_expectations"]
    assert not failed.passed
    assert "rewind" in failed.metadata["bad_rows_sample"].value
    assert "expect_column_values_to_be_in_set" in failed.metadata["failures"].value
