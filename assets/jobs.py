"""Jobs over the assets: what sensors, schedules and the CLI launch."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job, in_process_executor

from assets.batch import BATCH_ASSETS, BATCH_TAGS, DAILY
from assets.serving import SERVING_ASSETS
from assets.speed import SPARK_TAGS, SPEED_ASSETS

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
