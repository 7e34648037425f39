"""Batch layer: the daily-partitioned assets, their job, and what requests their partitions."""

from dagster import Definitions

from assets.batch import BATCH_ASSETS
from assets.jobs import batch_job
from sensors.batch import day_complete_sensor, nightly_batch_schedule, stale_partition_sensor

defs = Definitions(
    assets=BATCH_ASSETS,
    jobs=[batch_job],
    sensors=[day_complete_sensor, stale_partition_sensor],
    schedules=[nightly_batch_schedule],
)
