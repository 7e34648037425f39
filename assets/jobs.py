"""Jobs over the assets: what sensors, schedules and the CLI launch."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job, in_process_executor, multiprocess_executor

from assets.batch import BATCH_ASSETS, BATCH_TAGS, DAILY
from assets.serving import SERVING_ASSETS
from assets.speed import (
    SPARK_TAGS,
    SPEED_ASSETS,
    STREAM_JOB_NAME,
    STREAM_TAGS,
    counts,
    sessions_speed,
)

SPEED_JOB_NAME = "speed_job"
BATCH_JOB_NAME = "batch_job"
SERVING_JOB_NAME = "serving_job"

# In-process: the speed queries share one Spark session (one JVM, or one Connect client) instead
# of one per step; they run one after another, each holding its checkpoint's lock. The serving
# refresh follows in the same run: what a speed run counted is served when the run ends, without
# waiting for another run to start (freshness).
speed_job = define_asset_job(
    SPEED_JOB_NAME,
    selection=AssetSelection.assets(*SPEED_ASSETS, *SERVING_ASSETS),
    executor_def=in_process_executor,
    tags=SPARK_TAGS,
    description="Catch every speed-layer query up with the topic (availableNow), then serve it.",
)

# No Spark: a serving refresh reads Parquet with pyarrow (after batch runs, or on demand).
serving_job = define_asset_job(
    SERVING_JOB_NAME,
    selection=AssetSelection.assets(*SERVING_ASSETS),
    executor_def=in_process_executor,
    description="Refresh the serving store from the lake (changed batch days, new speed batches).",
)

# One partition, or a range of days (single-run backfill), in one process and Spark session.
batch_job = define_asset_job(
    BATCH_JOB_NAME,
    selection=AssetSelection.assets(*BATCH_ASSETS),
    partitions_def=DAILY,
    executor_def=in_process_executor,
    tags=BATCH_TAGS,
    description="Recompute daily partitions of the batch views from the lake's history.",
)

# LAMBDA_ARCH_SPEED_STREAM_S > 0: the speed layer's two queries as continuous queries, side by
# side (one step process each): counts (the landing and every `<view>_speed`, a micro-batch every
# LAMBDA_ARCH_SPEED_TRIGGER_S) and sessions (every LAMBDA_ARCH_SESSIONS_TRIGGER_S), the serving
# store refreshed after every micro-batch. The sensor sensors/stream.py keeps one such run going;
# the lag sensor launches no speed run meanwhile, and speed_job's runs of the same assets (from
# `run`, the UI) find the checkpoints held and return once the stream has passed the topic's
# end offsets.
views_stream_job = define_asset_job(
    STREAM_JOB_NAME,
    selection=AssetSelection.assets(counts, sessions_speed),
    executor_def=multiprocess_executor.configured({"max_concurrent": 2}),
    # A Spark slot of its own: a stream runs for minutes and must not hold speed_job back.
    tags=STREAM_TAGS,
    description=(
        "The speed layer as continuous queries for LAMBDA_ARCH_SPEED_STREAM_S seconds: the "
        "counts query (landing and every count view's <view>_speed, a micro-batch every "
        "LAMBDA_ARCH_SPEED_TRIGGER_S) beside the sessions query (every "
        "LAMBDA_ARCH_SESSIONS_TRIGGER_S), serving refreshed after each."
    ),
)
