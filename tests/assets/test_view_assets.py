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
from dagster import AssetKey, build_sensor_context, instance_for_test

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

    speed_keys = [AssetKey(f"{v}_speed") for v in ("trending", "discovery", "device_mix")]
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
