"""Data quality: the asset checks of every layer, their freshness sensor, and the alert sensors."""

from dagster import Definitions

from assets.checks import ASSET_CHECKS, FRESHNESS_SENSORS
from sensors.alerts import ALERT_SENSORS

defs = Definitions(
    asset_checks=ASSET_CHECKS,
    sensors=[*ALERT_SENSORS, *FRESHNESS_SENSORS],
)
