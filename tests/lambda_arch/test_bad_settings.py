"""An invalid setting never stops the code location from loading; runs and sensors name it.

Dagster fixes a few values when it loads `lambda_arch.definitions` (the first daily partition,
the freshness window); they fall back to their defaults when their variable is invalid, and
every run and sensor evaluation fails with the one-line ConfigError naming the variable.
No JVM, no broker: the error comes before either is touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import build_sensor_context, instance_for_test

from lambda_arch.common.config import ConfigError, settings_or_defaults

REPO = Path(__file__).resolve().parents[2]
BAD = {"LAMBDA_ARCH_ALLOWED_LATENESS_MIN": "abc"}
MESSAGE = "LAMBDA_ARCH_ALLOWED_LATENESS_MIN='abc' is invalid: expected a whole number of minutes"


def test_the_code_location_loads_with_a_bad_variable(tmp_path: Path) -> None:
    code = (
        "from lambda_arch.definitions import defs\n"
        "print(len(defs.resolve_asset_graph().get_all_asset_keys()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, **BAD, "LAMBDA_ARCH_HOME": str(tmp_path), "DAGSTER_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.split()[-1]) > 0
    # The load says why its runs will fail, in the code server's log.
    assert MESSAGE in result.stderr


def test_only_the_bad_variable_falls_back(env_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMBDA_ARCH_ALLOWED_LATENESS_MIN", "abc")
    monkeypatch.setenv("LAMBDA_ARCH_START_DATE", "2026-02-01")
    settings, error = settings_or_defaults()
    assert settings.allowed_lateness_min == 10
    assert settings.start_date.isoformat() == "2026-02-01"
    assert error is not None and MESSAGE in str(error)


def test_a_sensor_evaluation_names_the_bad_variable(
    env_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lambda_arch.definitions import defs

    for name, value in BAD.items():
        monkeypatch.setenv(name, value)
    sensor = defs.get_sensor_def("day_complete_sensor")
    with (
        instance_for_test() as instance,
        build_sensor_context(instance=instance, resources=defs.resources) as context,
        pytest.raises(ConfigError, match=MESSAGE),
    ):
        sensor(context)


def test_a_run_names_the_bad_variable(env_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lambda_arch.definitions import defs

    for name, value in BAD.items():
        monkeypatch.setenv(name, value)
    with instance_for_test() as instance:
        result = defs.resolve_job_def("serving_job").execute_in_process(
            instance=instance, raise_on_error=False
        )
    assert not result.success
    failures = [event for event in result.all_events if event.is_step_failure]
    assert failures
    assert all(MESSAGE in str(event.step_failure_data.error) for event in failures)
