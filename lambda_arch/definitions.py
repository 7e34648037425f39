"""The one Dagster Definitions object of lambda-arch (code location `lambda_arch.definitions`)."""

from __future__ import annotations

from dagster import Definitions, in_process_executor

from assets.batch import BATCH_ASSETS
from assets.checks import ASSET_CHECKS, FRESHNESS_SENSORS
from assets.jobs import batch_job, serving_job, speed_job, views_stream_job
from assets.serving import SERVING_ASSETS
from assets.speed import SPEED_ASSETS, play_events_topic
from resources import build_resources
from sensors.alerts import ALERT_SENSORS
from sensors.batch import day_complete_sensor, nightly_batch_schedule, stale_partition_sensor
from sensors.kafka_lag import kafka_lag_sensor
from sensors.serving import serving_refresh_sensor
from sensors.stream import views_stream_sensor

defs = Definitions(
    assets=[play_events_topic, *SPEED_ASSETS, *BATCH_ASSETS, *SERVING_ASSETS],
    jobs=[speed_job, batch_job, serving_job, views_stream_job],
    sensors=[
        kafka_lag_sensor,
        day_complete_sensor,
        stale_partition_sensor,
        serving_refresh_sensor,
        views_stream_sensor,
        *ALERT_SENSORS,
        *FRESHNESS_SENSORS,
    ],
    asset_checks=[*ASSET_CHECKS],
    schedules=[nightly_batch_schedule],
    resources=build_resources(),
    # Every job, the UI's and the CLI's ad-hoc asset jobs included, runs its steps in one process:
    # one Spark session (one JVM, or one Connect client) per run instead of one per step. (Not
    # views_stream_job: its two continuous queries run side by side, one process each.)
    executor=in_process_executor,
)
