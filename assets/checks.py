"""Data-quality asset checks: Great Expectations suites, the lambda invariant, quarantine ratio,
freshness. The rules live in `lambda_arch.quality.rules` (no Dagster); each check here picks the rows
of its scope, runs the rules, and maps the verdict to an `AssetCheckResult`.

Severity and blocking: the GX suites guard what downstream assets read (raw -> clean -> views
-> serving), so they are `blocking=True` with ERROR severity: a failing partition stops the
run's downstream steps. The reconciliation and the quarantine ratio are ERROR (or WARN) alerts
that block nothing: the batch view is the truth the serving layer trusts, and quarantined
records are already out of the way. Freshness checks are WARN: a quiet topic also stops updates.

Partitioned assets: a check covers the days of its run (one partition, or every day of a
single-run backfill, from the run's tags); run on its own, the latest materialized partition.
"""

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetKey,
    DefaultSensorStatus,
    MetadataValue,
    SensorDefinition,
    asset_check,
    build_last_update_freshness_checks,
    build_sensor_for_freshness_checks,
    build_time_partition_freshness_checks,
)

from assets.batch import BATCH_ASSETS, tagged_days
from assets.speed import (
    QUARANTINE_ASSET,
    RAW_ASSET,
    counts,
    definition_views,
    sessions_speed,
    speed_key,
)
from lambda_arch.batch import layer as batch
from lambda_arch.batch.lake import EVENTS_TABLE, QUARANTINE_TABLE, Lake, read_play_events
from lambda_arch.common.config import Settings, definition_settings
from lambda_arch.common.times import parse_time
from lambda_arch.ingest.schema import REASON_FUTURE
from lambda_arch.quality import rules as quality
from lambda_arch.speed import layer as speed
from lambda_arch.speed import retention
from lambda_arch.views.declarations import CountView
from lambda_arch.views.spec import spec_of
from lambda_arch.views.transforms import SESSION_COLUMNS
from resources import LambdaArchSettings, SparkResource

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

CLEAN_ASSET = AssetKey(batch.CLEAN_TABLE)
SESSIONS_ASSET = AssetKey(batch.SESSIONS_TABLE)
# Yesterday's batch partitions are due by 03:00 UTC: the day-complete sensor runs them shortly
# after midnight plus the allowed lateness, the nightly schedule (02:00) is the safety net.
BATCH_FRESHNESS_DEADLINE_CRON = "0 3 * * *"
FRESHNESS_SENSOR_INTERVAL_S = 60
_CHECK_TAGS = {"lambda_arch/check": "quality"}


# Scope of a check -------------------------------------------------------------------------------


def run_days(context: AssetCheckExecutionContext, asset_key: AssetKey) -> list[date]:
    """The days of this run (partition or single-run range), else the latest materialized one."""
    days = tagged_days(context.run.tags)
    if days is not None:
        return days
    event = context.instance.get_latest_materialization_event(asset_key)
    partition = (
        event.asset_materialization.partition if event and event.asset_materialization else None
    )
    return [batch.parse_day(partition)] if partition else []


def latest_run_start(context: AssetCheckExecutionContext, asset_key: AssetKey) -> datetime | None:
    """When the run that last materialized asset_key started (None: never materialized)."""
    event = context.instance.get_latest_materialization_event(asset_key)
    if event is None:
        return None
    record = context.instance.get_run_record_by_id(event.run_id)
    started = record.start_time if record and record.start_time else event.timestamp
    return datetime.fromtimestamp(started, UTC)


# Great Expectations suites ----------------------------------------------------------------------


def validation_result(validation: quality.Validation, **extra: Any) -> AssetCheckResult:
    """A Validation as a check result: ERROR when an expectation failed, with the failing
    expectations and a sample of bad rows as markdown."""
    metadata: dict[str, Any] = {
        "rows": validation.rows,
        "rows_validated": validation.checked_rows,
        "sampled": validation.sampled,
        "expectations": len(validation.outcomes),
        "failed_expectations": len(validation.failed),
        "failures": MetadataValue.md(validation.failures_markdown()),
        "bad_rows_sample": MetadataValue.md(validation.bad_rows_markdown()),
        "scope": validation.scope,
        **extra,
    }
    return AssetCheckResult(
        passed=validation.success,
        severity=AssetCheckSeverity.ERROR,
        metadata=metadata,
        description=(
            None
            if validation.success
            else "failed: " + ", ".join(f"{o.expectation}({o.column})" for o in validation.failed)
        ),
    )


def _empty(name: str, scope: str) -> quality.Validation:
    return quality.Validation(name=name, rows=0, checked_rows=0, outcomes=(), scope=scope)


def validate_table(
    name: str,
    frame: "DataFrame",
    schema: Sequence[tuple[str, str]],
    columns: Sequence[Any],
    expectations: Callable[[], list[Any]],
    settings: Settings,
    *,
    scope: str,
    unique_keys: Sequence[str] | None = None,
    shares: Sequence[str] | None = None,
) -> quality.Validation:
    """Schema (exact), optional uniqueness (exact, Spark), then the GX suite on a bounded
    pandas copy of `columns` (see lambda_arch.quality.rules for why pandas). `shares`: the
    filter dimensions of a `shares` view, whose shares per bucket must sum to 1."""
    extra = [quality.schema_outcome(frame.dtypes, schema)]
    duplicates: list[dict[str, Any]] = []
    if unique_keys:
        outcome, duplicates = quality.duplicates_outcome(frame, unique_keys)
        extra.append(outcome)
    rows, total = quality.bounded_pandas(frame.select(*columns), settings.quality_max_rows)
    if shares is not None and len(rows) == total:
        # Shares need whole buckets: judged only when nothing was sampled away.
        extra.append(quality.share_outcome(rows, filters=shares))
    if total == 0:
        return quality.Validation(name, 0, 0, tuple(extra), tuple(duplicates), scope)
    return quality.run_expectations(
        name, rows, expectations(), rows=total, extra=extra, extra_bad_rows=duplicates, scope=scope
    )


def _session_and_lake(
    settings: LambdaArchSettings, spark: SparkResource
) -> tuple[Settings, "SparkSession", Lake]:
    config = settings.get()
    session = spark.session()
    lake = Lake.from_settings(config)
    batch.ensure_batch_tables(session, lake, speed.count_views(config))
    return config, session, lake


def reading_batch_tables(
    context: AssetCheckExecutionContext, config: Settings, lake: Lake
) -> AbstractContextManager[Any]:
    """The lake's batch-writer lock, shared: checks read while no other run writes."""
    return batch.reading_batch(
        lake, speed.lock_dir_of(config), owner=f"check run {context.run.run_id}"
    )


@asset_check(
    asset=RAW_ASSET,
    name="raw_events_expectations",
    blocking=True,
    op_tags=_CHECK_TAGS,
    description=(
        "Great Expectations on the rows the latest landing run added to play_events: schema, "
        "required fields not null, enums, member/title/position >= 0 (sampled above "
        "LAMBDA_ARCH_QUALITY_MAX_ROWS)."
    ),
)
def raw_events_expectations(
    context: AssetCheckExecutionContext, settings: LambdaArchSettings, spark: SparkResource
) -> AssetCheckResult:
    """Rows landed since the start of the run that last materialized play_events_raw."""
    config, session, lake = _session_and_lake(settings, spark)
    since = latest_run_start(context, RAW_ASSET)
    if since is None:
        return validation_result(_empty(EVENTS_TABLE, "never landed"))
    from pyspark.sql import functions as F

    table = read_play_events(session, lake)
    # ingested_at is stamped per micro-batch: the rows of runs since `since`, without knowing
    # which dt partitions they went to (Parquet min/max statistics skip older files).
    landed = table.where(F.col("ingested_at") >= F.lit(since))
    columns = [*quality.EVENT_CHECK_COLUMNS, "dt", "partition", "offset"]
    validation = validate_table(
        EVENTS_TABLE,
        landed,
        quality.RAW_SCHEMA,
        columns,
        quality.event_expectations,
        config,
        scope=f"landed since {since.isoformat(timespec='seconds')}",
    )
    return validation_result(validation)


def _batch_check(
    asset_key: AssetKey,
    name: str,
    schema: Sequence[tuple[str, str]],
    columns: Callable[[], list[Any]],
    expectations: Callable[[], list[Any]],
    description: str,
    *,
    unique_keys: Sequence[str] | None = None,
    shares: Sequence[str] | None = None,
) -> AssetChecksDefinition:
    table = asset_key.path[-1]

    @asset_check(
        asset=asset_key,
        name=name,
        blocking=True,
        op_tags=_CHECK_TAGS,
        description=description,
    )
    def _check(
        context: AssetCheckExecutionContext, settings: LambdaArchSettings, spark: SparkResource
    ) -> AssetCheckResult:
        days = run_days(context, asset_key)
        scope = ", ".join(d.isoformat() for d in days) or "no partition"
        if not days:
            return validation_result(_empty(table, scope))
        config, session, lake = _session_and_lake(settings, spark)
        # Shared with other readers, never with a writer: another run overwriting these days
        # would delete the files under this read (lambda_arch.batch.layer.write_days).
        with reading_batch_tables(context, config, lake):
            frame = batch.read_batch_view(session, lake, table, days)
            validation = validate_table(
                table,
                frame,
                schema,
                columns(),
                expectations,
                config,
                scope=scope,
                unique_keys=unique_keys,
                shares=shares,
            )
        return validation_result(validation, days=len(days))

    return _check


def _with_day(source: str, *columns: str) -> Callable[[], list[Any]]:
    """Columns to bring to pandas, plus the UTC day of `source` (judged against dt)."""

    def build() -> list[Any]:
        from pyspark.sql import functions as F

        return [*columns, "dt", quality.utc_day(F.col(source)).alias(quality.DAY_COLUMN)]

    return build


clean_events_expectations = _batch_check(
    CLEAN_ASSET,
    "clean_events_expectations",
    quality.CLEAN_SCHEMA,
    _with_day("event_time", *quality.EVENT_CHECK_COLUMNS, "partition", "offset"),
    quality.clean_expectations,
    "Great Expectations on the run's days of play_events_clean: schema, not-null, enums, "
    "ids >= 0, event_id unique per day (exact), event_time within the partition's day.",
    # Unique per day: each day is deduplicated on its own (a re-send on another day is kept).
    unique_keys=["dt", "event_id"],
)


def view_batch_check(view: CountView) -> AssetChecksDefinition:
    """A declared count view's GX suite on its batch days (`<view>_batch_expectations`)."""
    table = spec_of(view).batch_table
    share = "; shares per bucket summing to 1 (4 decimals)" if view.form == "shares" else ""
    return _batch_check(
        AssetKey(table),
        f"{table}_expectations",
        quality.view_schema(view),
        _with_day("minute", *view.columns),
        quality.view_expectations(view),
        f"Great Expectations on the run's days of {table}: schema, plays >= 1, known "
        f"{', '.join(view.dimensions)} values, one row per (minute, "
        f"{', '.join(view.dimensions)}), minutes within the partition's day{share}.",
        shares=view.filters if view.form == "shares" else None,
    )


VIEW_BATCH_CHECKS = {view.name: view_batch_check(view) for view in definition_views()}
trending_batch_expectations = VIEW_BATCH_CHECKS["trending"]
discovery_batch_expectations = VIEW_BATCH_CHECKS["discovery"]
sessions_batch_expectations = _batch_check(
    SESSIONS_ASSET,
    "sessions_batch_expectations",
    quality.SESSIONS_SCHEMA,
    _with_day("session_end", *SESSION_COLUMNS),
    quality.sessions_expectations,
    "Great Expectations on the run's days of sessions_batch: schema, session_end >= "
    "session_start, events >= 1, watched_ms >= 0, sessions ending within the partition's day.",
)


# The lambda invariant ---------------------------------------------------------------------------


def _fresh_days(lake: Lake, table: str, days: Sequence[date]) -> tuple[list[date], list[date]]:
    """(days computed from the raw rows there now, days never computed or stale)."""
    fresh, skipped = [], []
    for day in days:
        state = batch.read_day_state(lake, table, day)
        current = state is not None and state["signature"] == batch.day_signature(lake, day)
        (fresh if current else skipped).append(day)
    return fresh, skipped


def reconciliation_check(view: CountView) -> AssetChecksDefinition:
    """The lambda invariant of one count view, on `<view>_batch` (`speed_matches_batch`)."""
    spec = spec_of(view)
    batch_asset = AssetKey(spec.batch_table)
    keys = ("minute", *view.dimensions)

    @asset_check(
        asset=batch_asset,
        name="speed_matches_batch",
        op_tags=_CHECK_TAGS,
        description=(
            f"The lambda invariant: over minutes both layers settled, {spec.speed_query} counts "
            f"equal {spec.batch_table} counts except for events the speed layer dropped as late."
        ),
    )
    def speed_matches_batch(
        context: AssetCheckExecutionContext, settings: LambdaArchSettings, spark: SparkResource
    ) -> AssetCheckResult:
        """Covered buckets: the run's days that are computed and not stale (a stale day is
        known to miss landed events), cut at the speed watermark's minute (later minutes may
        still grow). Fails (ERROR) when batch - speed exceeds the late events (plus records one
        layer has read and the other not), or speed exceeds batch beyond records not yet
        landed."""
        config = settings.get()
        paths = speed.SpeedPaths.from_settings(config)
        state = speed.read_speed_state(paths, spec.speed_query) or {}
        watermark = state.get("watermark")
        days = run_days(context, batch_asset)
        if not watermark or not days:
            reason = "the speed layer has no watermark yet" if not watermark else "no partition"
            return AssetCheckResult(passed=True, metadata={"skipped": reason})
        lake = Lake.from_settings(config)
        fresh, skipped = _fresh_days(lake, spec.batch_table, days)
        watermark_at = parse_time(watermark)
        # Not before the speed rows serving has removed (LAMBDA_ARCH_SPEED_RETENTION_HOURS).
        removed_before = retention.removed_before(paths.root, spec.speed_query)
        ranges = retention.cut_ranges(quality.covered_range(fresh, watermark_at), removed_before)
        session = spark.session()
        batch.ensure_batch_tables(session, lake, speed.count_views(config))
        landing = speed.read_speed_state(paths, speed.LANDING) or {}
        landing_ahead, speed_ahead = quality.offset_gaps(
            {p: int(o) for p, o in (landing.get("offsets") or {}).items()},
            {p: int(o) for p, o in (state.get("offsets") or {}).items()},
        )
        # The frames are lazy: the Spark jobs of `reconcile` read the batch table, under the lock.
        with reading_batch_tables(context, config, lake):
            batch_view = batch.read_batch_view(session, lake, spec.batch_table, fresh).drop("dt")
            differences = quality.bucket_differences(
                batch_view, speed.read_view_speed(session, paths, view), ranges, keys
            )
            result = quality.reconcile(
                differences,
                late_events_total=int(state.get("late_events_total") or 0),
                landing_ahead=landing_ahead,
                speed_ahead=speed_ahead,
            )
        context.log.info(f"{view.name} speed vs batch: {result.summary()}")
        last_speed = context.instance.get_latest_materialization_event(speed_key(view))
        last_late = (
            last_speed.asset_materialization.metadata.get("late_events")
            if last_speed and last_speed.asset_materialization
            else None
        )
        metadata: dict[str, Any] = {
            "covered_buckets": result.buckets,
            "buckets_differing": result.buckets_differing,
            "batch_plays": result.batch_plays,
            "speed_plays": result.speed_plays,
            "missing_in_speed": result.missing_in_speed,
            "missing_in_batch": result.missing_in_batch,
            "late_events_total": result.late_events_total,
            "late_events_last_run": int(last_late.value) if last_late is not None else 0,
            "landing_ahead": landing_ahead,
            "speed_ahead": speed_ahead,
            "speed_watermark": watermark,
            "speed_removed_before": removed_before.isoformat() if removed_before else "none",
            "days_checked": ", ".join(d.isoformat() for d in fresh) or "none",
            "days_skipped": ", ".join(d.isoformat() for d in skipped) or "none",
            "summary": result.summary(),
            "top_differences": MetadataValue.md(result.offenders_markdown()),
        }
        return AssetCheckResult(
            passed=result.passed,
            severity=AssetCheckSeverity.ERROR,
            metadata=metadata,
            description=None if result.passed else result.summary(),
        )

    return speed_matches_batch


# One per declared count view; `speed_matches_batch` is trending's.
RECONCILIATION_CHECKS = {view.name: reconciliation_check(view) for view in definition_views()}
speed_matches_batch = RECONCILIATION_CHECKS["trending"]


# Quarantine ratio -------------------------------------------------------------------------------


def _metadata_int(metadata: dict[str, Any], key: str) -> int:
    value = metadata.get(key)
    return int(getattr(value, "value", value) or 0)


@asset_check(
    asset=QUARANTINE_ASSET,
    name="quarantine_ratio",
    op_tags=_CHECK_TAGS,
    description=(
        "Share of malformed records: WARN above LAMBDA_ARCH_QUARANTINE_WARN_RATIO (1%), ERROR "
        "above LAMBDA_ARCH_QUARANTINE_ERROR_RATIO (5%), for the latest landing run."
    ),
)
def quarantine_ratio(
    context: AssetCheckExecutionContext, settings: LambdaArchSettings
) -> AssetCheckResult:
    """Judged on the latest landing run's ratio; a run that read nothing is judged on the
    cumulative ratio of the lake (rows of both tables from a file listing: no Spark)."""
    config = settings.get()
    event = context.instance.get_latest_materialization_event(QUARANTINE_ASSET)
    metadata = (
        dict(event.asset_materialization.metadata) if event and event.asset_materialization else {}
    )
    records = _metadata_int(metadata, "records")
    quarantined = _metadata_int(metadata, "quarantined")
    future = _metadata_int(metadata, "quarantined_future")
    lake = Lake.from_settings(config)
    total_quarantined = sum(p.rows for p in lake.partition_dates(table=QUARANTINE_TABLE))
    total_valid = sum(p.rows for p in lake.partition_dates(table=EVENTS_TABLE))
    latest = quality.ratio(quarantined, records)
    cumulative = quality.ratio(total_quarantined, total_quarantined + total_valid)
    judged, basis = (latest, "latest run") if records else (cumulative, "cumulative")
    level = quality.quarantine_level(
        judged, config.quarantine_warn_ratio, config.quarantine_error_ratio
    )
    return AssetCheckResult(
        passed=level == quality.OK,
        severity=AssetCheckSeverity.ERROR if level == quality.ERROR else AssetCheckSeverity.WARN,
        metadata={
            "quarantine_ratio": latest,
            "records": records,
            "quarantined": quarantined,
            # A burst of device clocks (or a replay) ahead of Kafka's time shows here by name.
            "quarantined_future": future,
            "cumulative_ratio": cumulative,
            "cumulative_records": total_quarantined + total_valid,
            "cumulative_quarantined": total_quarantined,
            "judged_on": basis,
            "warn_ratio": config.quarantine_warn_ratio,
            "error_ratio": config.quarantine_error_ratio,
        },
        description=(
            None
            if level == quality.OK
            else f"quarantine ratio {judged:.2%} ({basis}) above the {level} threshold"
            + (f"; {future} with reason '{REASON_FUTURE}'" if future else "")
        ),
    )


# Freshness --------------------------------------------------------------------------------------

# The counts multi-asset's keys: the lake's raw tables and every `<view>_speed`.
SPEED_FRESHNESS_ASSETS = [*counts.keys, sessions_speed]


def speed_freshness_checks(lower_bound: timedelta) -> Sequence[AssetChecksDefinition]:
    """Speed assets updated within `lower_bound` of the check's evaluation (WARN otherwise)."""
    return build_last_update_freshness_checks(
        assets=SPEED_FRESHNESS_ASSETS, lower_bound_delta=lower_bound
    )


def batch_freshness_checks(
    deadline_cron: str = BATCH_FRESHNESS_DEADLINE_CRON,
) -> Sequence[AssetChecksDefinition]:
    """The latest daily partition due by the deadline is materialized (partition-aware)."""
    return build_time_partition_freshness_checks(
        assets=BATCH_ASSETS, deadline_cron=deadline_cron, timezone="UTC"
    )


# Fixed when the code location loads, as the daily partitions are (assets/batch.py).
FRESHNESS_CHECKS: list[AssetChecksDefinition] = [
    *speed_freshness_checks(timedelta(minutes=definition_settings().speed_freshness_min)),
    *batch_freshness_checks(),
]
FRESHNESS_SENSORS: list[SensorDefinition] = [
    build_sensor_for_freshness_checks(
        freshness_checks=FRESHNESS_CHECKS,
        minimum_interval_seconds=FRESHNESS_SENSOR_INTERVAL_S,
        default_status=DefaultSensorStatus.RUNNING,
    )
]
GX_CHECKS: list[AssetChecksDefinition] = [
    raw_events_expectations,
    clean_events_expectations,
    *VIEW_BATCH_CHECKS.values(),
    sessions_batch_expectations,
]
ASSET_CHECKS: list[AssetChecksDefinition] = [
    *GX_CHECKS,
    *RECONCILIATION_CHECKS.values(),
    quarantine_ratio,
    *FRESHNESS_CHECKS,
]
