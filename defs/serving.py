"""Serving layer: the store's assets, the refresh job and the sensor that runs it."""

from dagster import Definitions

from assets.jobs import serving_job
from assets.serving import SERVING_ASSETS
from sensors.serving import serving_refresh_sensor

defs = Definitions(
    assets=SERVING_ASSETS,
    jobs=[serving_job],
    sensors=[serving_refresh_sensor],
)
