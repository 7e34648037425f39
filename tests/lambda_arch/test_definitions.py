"""The one Definitions object loads, through the Dagster CLI as the webserver loads it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dagster import Definitions

REPO = Path(__file__).resolve().parents[2]


def test_definitions_validate_with_the_dagster_cli(tmp_path: Path) -> None:
    dagster = Path(sys.executable).parent / "dagster"
    result = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", str(REPO / "workspace.yaml")],
        cwd=REPO,
        env={**os.environ, "DAGSTER_HOME": str(tmp_path), "LAMBDA_ARCH_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "All code locations passed validation" in result.stderr + result.stdout


def test_definitions_object_resolves() -> None:
    from lambda_arch.definitions import defs

    assert isinstance(defs, Definitions)
    repository = defs.get_repository_def()
    assert {"settings", "kafka"} <= set(repository.get_top_level_resources())
