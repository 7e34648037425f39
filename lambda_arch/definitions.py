"""The one Dagster Definitions object of lambda-arch (code location `lambda_arch.definitions`)."""

from __future__ import annotations

from dagster import Definitions

from assets.jobs import speed_job
from assets.speed import SPEED_ASSETS, play_events_topic
from resources import build_resources
from sensors.kafka_lag import kafka_lag_sensor

defs = Definitions(
    assets=[play_events_topic, *SPEED_ASSETS],
    jobs=[speed_job],
    sensors=[kafka_lag_sensor],
    resources=build_resources(),
)
