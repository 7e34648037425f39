"""Batch layer assets (group `batch`): daily partitions (UTC) recomputed from the lake's history.

Each asset is a short story: for every day of the run's partition range, recompute the day
from the raw history with `lambda_arch.batch.layer` (the same view functions as the speed layer),
overwrite exactly that day's partition, report rows per day. A range of days (a backfill) runs
in one Spark run (`BackfillPolicy.single_run()`).
"""

from collections.abc import Mapping
from datetime import date

from dagster import (
    AssetExecutionContext,
    AssetKey,
    BackfillPolicy,
    DailyPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
)
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
)

from assets.speed import RAW_ASSET, definition_views
from lambda_arch.batch import layer as batch
from lambda_arch.batch.lake import Lake
from lambda_arch.batch.retention import drop_old_quarantine
from lambda_arch.common.config import definition_settings
from lambda_arch.common.tags import SPARK_BATCH, SPARK_RUN_TAG
from lambda_arch.serving.ranking import markdown_table
from lambda_arch.speed.layer import count_views, lock_dir_of
from lambda_arch.views.declarations import CountView
from lambda_arch.views.spec import spec_of
from resources import LambdaArchSettings, SparkResource

GROUP = "batch"
# Runs of batch assets: dagster.yaml limits them apart from speed runs (one tag value each).
BATCH_TAGS = {SPARK_RUN_TAG: SPARK_BATCH}
KINDS = {"spark", "hive", "parquet"}
# Partitions from LAMBDA_ARCH_START_DATE, fixed when the code location loads (an invalid value
# falls back to the default there and fails every run by name: definition_settings); a day
# becomes a partition once it has ended (wall clock), so the time-partition freshness checks
# expect yesterday, never the day still running. The day-complete sensor decides when to run it.
DAILY = DailyPartitionsDefinition(
    start_date=definition_settings().start_date.isoformat(), timezone="UTC"
)
SINGLE_RUN = BackfillPolicy.single_run()


def partition_days(context: AssetExecutionContext) -> list[date]:
    """The days of this run: one partition, or the whole range of a single-run backfill."""
    return [batch.parse_day(key) for key in context.partition_keys]


def tagged_days(tags: Mapping[str, str]) -> list[date] | None:
    """The days a run's tags name: its partition, or its single-run range; None without them
    (an unpartitioned run, or one whose range the batch layer cannot read)."""
    try:
        if PARTITION_NAME_TAG in tags:
            return [batch.parse_day(tags[PARTITION_NAME_TAG])]
        if ASSET_PARTITION_RANGE_START_TAG in tags and ASSET_PARTITION_RANGE_END_TAG in tags:
            first = batch.parse_day(tags[ASSET_PARTITION_RANGE_START_TAG])
            last = batch.parse_day(tags[ASSET_PARTITION_RANGE_END_TAG])
            return batch.days_between(first, last)
    except batch.BatchError:
        pass
    return None


def day_metadata(results: list[batch.DayResult]) -> dict[str, object]:
    """Rows per day as plain numbers (they plot) and as a markdown table."""
    rows = [{"day": r.day, "rows": r.rows, "seconds": round(r.duration_s, 2)} for r in results]
    metadata: dict[str, object] = {
        "days": len(results),
        "rows": sum(r.rows for r in results),
        "duration_s": round(sum(r.duration_s for r in results), 3),
        "first_day": results[0].day if results else "",
        "last_day": results[-1].day if results else "",
        "rows_by_day": MetadataValue.md(markdown_table(rows, ["day", "rows", "seconds"])),
    }
    if results:
        metadata["raw_rows_of_day"] = results[-1].signature["day_rows"]
    return metadata


def _batch_asset(
    table: str,
    deps: list[AssetKey],
    description: str,
    metadata: Mapping[str, str] | None = None,
):
    @asset(
        metadata=dict(metadata or {}),
        name=table,
        group_name=GROUP,
        deps=deps,
        kinds=KINDS,
        partitions_def=DAILY,
        backfill_policy=SINGLE_RUN,
        pool="spark",
        op_tags=BATCH_TAGS,
        description=description,
    )
    def _asset(
        context: AssetExecutionContext, settings: LambdaArchSettings, spark: SparkResource
    ) -> MaterializeResult:
        days = partition_days(context)
        config = settings.get()
        # A bad views file fails the run here, before Spark, naming the file and the view.
        declared = count_views(config)
        lake = Lake.from_settings(config)
        # The lake's batch-writer lock, taken in the core: a run launched by anyone else that
        # is writing these tables makes this one wait (logged, and in the metadata).
        write = batch.write_days(
            spark.session(),
            lake,
            days,
            [table],
            lock_dir=lock_dir_of(config),
            owner=f"run {context.run_id} ({context.job_name})",
            log=context.log.info,
            count_views=declared,
        )
        results = write.results
        context.log.info(
            f"{table}: {len(days)} day(s) {days[0]}..{days[-1]}, "
            f"{sum(r.rows for r in results)} rows"
        )
        metadata = {**day_metadata(results), **write.lock.metadata()}
        if table == batch.CLEAN_TABLE:
            # Bounded disk: the quarantine keeps LAMBDA_ARCH_QUARANTINE_RETENTION_DAYS.
            retention = drop_old_quarantine(spark.session(), lake, config.quarantine_retention_days)
            if retention.dropped:
                context.log.info(f"quarantine: dropped days {', '.join(retention.dropped)}")
            metadata.update(retention.metadata())
        return MaterializeResult(metadata=metadata)

    return _asset


play_events_clean = _batch_asset(
    batch.CLEAN_TABLE,
    [RAW_ASSET],
    "The day's valid play events, one row per event_id (lambda_arch.play_events_clean).",
)


def view_batch_asset(view: CountView):
    """A declared count view's `<view>_batch`: its daily partitions, recomputed from the lake."""
    return _batch_asset(
        spec_of(view).batch_table,
        [AssetKey(batch.CLEAN_TABLE)],
        f"{view.description} Batch layer: plays per event-time minute and "
        f"{', '.join(view.dimensions)} ({', '.join(view.event_types)} events) of the day, "
        "recomputed from the lake.",
        {"dimensions": ", ".join(view.dimensions), "form": view.form},
    )


# One per declared count view (built-in and LAMBDA_ARCH_VIEWS_FILE), by name.
VIEW_BATCH_ASSETS = {view.name: view_batch_asset(view) for view in definition_views()}
trending_batch = VIEW_BATCH_ASSETS["trending"]
discovery_batch = VIEW_BATCH_ASSETS["discovery"]
sessions_batch = _batch_asset(
    batch.SESSIONS_TABLE,
    [AssetKey(batch.CLEAN_TABLE), RAW_ASSET],
    "Viewing sessions (30-minute gap) that end on the day; they may begin the day before.",
)

BATCH_ASSETS = [play_events_clean, *VIEW_BATCH_ASSETS.values(), sessions_batch]
