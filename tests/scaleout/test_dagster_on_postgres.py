"""Dagster on PostgreSQL: the instance `lambda-arch up` configures with LAMBDA_ARCH_DAGSTER_PG_URL
(its generated dagster.yaml, read by DagsterInstance.from_config) runs the alert sensors and the
lag and stale-partition sensors (with the landing and batch runs they look at); each test below
is a test of the SQLite suite run again, unchanged, on that instance (the `instance` fixture
here wins over theirs). Every test gets a database of its own, copied from a migrated template.
A backfill on PostgreSQL runs through the daemon in test_cluster_stack.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance

from lambda_arch.common.config import Settings
from lambda_arch.runtime.stack import write_dagster_yaml
from tests.assets.conftest import speed_env
from tests.assets.test_batch_assets import (
    test_late_events_make_a_computed_day_stale_and_the_sensor_requests_it,
)
from tests.assets.test_speed_assets import test_lag_sensor_requests_a_run_only_for_new_data
from tests.scaleout.engines import Postgres
from tests.sensors.test_alert_sensors import (
    alert_log,
    test_check_evaluated_outside_a_run,
    test_failed_check_alerts_once,
    test_failed_run_alert_record,
    test_failed_run_alerts_exactly_once_across_ticks,
    test_first_tick_pages_through_old_history_quietly,
    test_partitioned_check_alert_reaches_the_webhook,
    test_warn_below_the_minimum_and_passed_checks_alert_nothing,
)

TEMPLATE = "dagster_template"
# The sensor tests with Spark runs take ~30 s alone; a machine shared with other suites can be
# ten times slower, and a timeout mid-run breaks the session's JVM for every later test.
pytestmark = pytest.mark.timeout(900)
REUSED = (
    speed_env,
    alert_log,
    test_late_events_make_a_computed_day_stale_and_the_sensor_requests_it,
    test_lag_sensor_requests_a_run_only_for_new_data,
    test_check_evaluated_outside_a_run,
    test_failed_check_alerts_once,
    test_failed_run_alert_record,
    test_failed_run_alerts_exactly_once_across_ticks,
    test_first_tick_pages_through_old_history_quietly,
    test_partitioned_check_alert_reaches_the_webhook,
    test_warn_below_the_minimum_and_passed_checks_alert_nothing,
)


def instance_on(postgres: Postgres, database: str, home: Path) -> DagsterInstance:
    """The instance of the dagster.yaml `up` writes for a home with this database."""
    settings = Settings(
        LAMBDA_ARCH_HOME=str(home), LAMBDA_ARCH_DAGSTER_PG_URL=postgres.url(database)
    )
    write_dagster_yaml(settings)
    return DagsterInstance.from_config(str(settings.dagster_home))


@pytest.fixture(scope="module")
def template(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database with Dagster's schema, created once (the migration takes seconds)."""
    postgres.create_database(TEMPLATE)
    with instance_on(postgres, TEMPLATE, tmp_path_factory.mktemp("template-home")) as instance:
        instance.get_runs()
    return TEMPLATE


@pytest.fixture
def instance(postgres: Postgres, template: str, tmp_path: Path) -> Iterator[DagsterInstance]:
    """A Dagster instance of this test's own, on a fresh PostgreSQL database."""
    database = f"d_{uuid.uuid4().hex[:16]}"
    postgres.create_database(database, template=template)
    with instance_on(postgres, database, tmp_path / "dagster-home") as pg_instance:
        yield pg_instance


def test_the_generated_dagster_yaml_selects_postgres(
    postgres: Postgres, instance: DagsterInstance, tmp_path: Path
) -> None:
    config = yaml.safe_load((tmp_path / "dagster-home" / "dagster" / "dagster.yaml").read_text())
    assert set(config["storage"]) == {"postgres"}
    assert config["storage"]["postgres"]["postgres_url"].startswith("postgresql+psycopg2://")
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"


def test_without_the_url_dagster_keeps_sqlite(tmp_path: Path) -> None:
    settings = Settings(LAMBDA_ARCH_HOME=str(tmp_path))
    assert "storage" not in yaml.safe_load(write_dagster_yaml(settings).read_text())
