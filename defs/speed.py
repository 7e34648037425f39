"""Speed layer: the topic, the streaming assets, their jobs and the sensors that keep them caught up."""

from dagster import Definitions

from assets.jobs import speed_job, views_stream_job
from assets.speed import SPEED_ASSETS, play_events_topic
from sensors.kafka_lag import kafka_lag_sensor
from sensors.stream import views_stream_sensor

defs = Definitions(
    assets=[play_events_topic, *SPEED_ASSETS],
    jobs=[speed_job, views_stream_job],
    sensors=[kafka_lag_sensor, views_stream_sensor],
)
