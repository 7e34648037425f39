"""Speed layer assets (group `speed`): checkpointed Structured Streaming queries run availableNow.

Each asset is a short story: open the run's Spark session, catch one query up with the topic
(`lambda_arch.speed.layer`), report what it did as metadata the Dagster UI can plot. The lake's
raw tables (`play_events_raw`, `play_events_quarantine`) and the count views' assets
(`<view>_speed`, one per declaration of `declared_views`) are the outputs of one multi-asset,
`counts`: the one query that reads each micro-batch once, lands it and counts every view.
Sessions are the second query (`sessions_speed`).
"""

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import cache, partial
from typing import TYPE_CHECKING

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetSpec,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    ObserveResult,
    asset,
    multi_asset,
    observable_source_asset,
)

from lambda_arch.common.config import Settings, definition_settings
from lambda_arch.common.tags import SPARK_RUN_TAG, SPARK_SPEED, SPARK_STREAM
from lambda_arch.ingest.kafka_offsets import KafkaOffsetsError, offset_bounds
from lambda_arch.serving.ranking import Window, markdown_table, top_titles
from lambda_arch.serving.refresh import refresh_view
from lambda_arch.serving.store import ServingStore
from lambda_arch.speed import layer as speed
from lambda_arch.speed.lag import partition_lag
from lambda_arch.speed.streaming import StreamReport
from lambda_arch.views import spec as view_specs
from lambda_arch.views.declarations import TRENDING, CountView, views_or_built_in
from resources import KafkaResource, LambdaArchSettings, SparkResource

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

GROUP = "speed"
TOPIC_ASSET = AssetKey("play_events_topic")
RAW_ASSET = AssetKey("play_events_raw")
QUARANTINE_ASSET = AssetKey("play_events_quarantine")
# Runs of Spark assets carry this tag: dagster.yaml limits how many run at once.
SPARK_TAGS = {SPARK_RUN_TAG: SPARK_SPEED}
# Continuous views get a slot of their own: a stream runs for minutes and must not hold the
# availableNow speed runs back.
STREAM_TAGS = {SPARK_RUN_TAG: SPARK_STREAM}
# Order of the steps of a speed run (Dagster runs ready steps by this priority, highest first):
# trending and its serving refresh first, landing and the checks last, so what users query
# is fresh before the run has finished (benchmarks/freshness.py).
# (Serving steps take their view's priority: trending's first, other views' DEFAULT_PRIORITY.)
PRIORITY = {"counts": 40, "trending": 40, "discovery": 30, "sessions": 20}
DEFAULT_PRIORITY = 30
# The job that runs the counts query (every `<view>_speed`) continuously (assets/jobs.py).
STREAM_JOB_NAME = "views_stream_job"
# A continuous query reports its assets as materialized at most this often (Dagster events).
PUBLISH_EVERY_S = 30.0


def step_priority(view: str) -> dict[str, str]:
    return {"dagster/priority": str(PRIORITY.get(view, DEFAULT_PRIORITY))}


@cache
def definition_views() -> tuple[CountView, ...]:
    """The count views the definitions are built from, read once per process, never raising:
    a bad views file is logged and the built-in views stand in (runs fail naming the error,
    as `lambda_arch.speed.layer.count_views` raises it)."""
    views, error = views_or_built_in(definition_settings().views_file)
    if error is not None:
        logging.getLogger(__name__).error(
            "%s; the Dagster definitions load with the built-in views only and every run of the "
            "count views fails with this error until it is fixed",
            error,
        )
    return views


def speed_key(view: CountView) -> AssetKey:
    """A count view's speed asset: `<view>_speed`."""
    return AssetKey(view_specs.spec_of(view).speed_query)


KINDS = {"spark", "kafka"}
TRENDING_TOP_WINDOW_MIN = 60


@observable_source_asset(
    key=TOPIC_ASSET,
    group_name=GROUP,
    description="The Kafka topic of play events; observed by the Kafka-lag sensor and on demand.",
)
def play_events_topic(kafka: KafkaResource) -> ObserveResult:
    """End offsets per partition; the data version changes whenever records arrive."""
    bootstrap, topic = kafka.resolved_bootstrap_servers(), kafka.resolved_topic()
    earliest, end = offset_bounds(bootstrap, topic)
    metadata: dict[str, int | str] = {
        "topic": topic,
        "end_offset_total": sum(end.values()),
        "records_on_broker": sum(end[p] - earliest.get(p, 0) for p in end),
        **{f"end_offset_p{p}": o for p, o in sorted(end.items())},
    }
    signature = "-".join(f"{p}:{o}" for p, o in sorted(end.items()))
    return ObserveResult(data_version=DataVersion(signature), metadata=metadata)


def run_metadata(settings: Settings, report: StreamReport) -> dict[str, object]:
    """A report as metadata, plus the lag left per partition (plain numbers, so they plot)."""
    metadata: dict[str, object] = dict(report.metadata())
    try:
        earliest, end = offset_bounds(settings.bootstrap_servers, settings.topic)
    except KafkaOffsetsError:
        return metadata
    left = partition_lag(end, earliest, report.offsets or None)
    metadata["lag_left"] = sum(left.values())
    metadata.update({f"lag_left_p{p}": n for p, n in sorted(left.items())})
    metadata.update({f"offset_p{p}": o for p, o in sorted(report.offsets.items())})
    if report.watermark is not None:
        metadata["watermark_lag_s"] = round(
            (datetime.now(UTC) - report.watermark).total_seconds(), 1
        )
    return metadata


def _log_report(context: AssetExecutionContext, name: str, report: StreamReport) -> None:
    context.log.info(
        f"{name}: {report.events_read} events in {report.micro_batches} micro-batches, "
        f"{report.late_events} late, watermark {report.watermark}"
        + (", caught up by the run holding its checkpoint" if report.caught_up_by_holder else "")
    )


def view_description(view: CountView) -> str:
    """A `<view>_speed` asset's description, from its declaration."""
    return (
        f"{view.description} Speed layer: plays per event-time minute and "
        f"{', '.join(view.dimensions)} ({', '.join(view.event_types)} events), from Kafka in "
        "near real time, counted by the one counts query of every view."
    )


def counts_asset(views: Sequence[CountView]):
    """The counts query as a multi-asset: the lake's two raw tables it lands, and one
    `<view>_speed` output per declared view."""

    @multi_asset(
        name=speed.COUNTS,
        specs=[
            *LANDING_SPECS,
            *(
                AssetSpec(
                    speed_key(view),
                    group_name=GROUP,
                    deps=[TOPIC_ASSET],
                    kinds=KINDS,
                    description=view_description(view),
                    metadata={"dimensions": ", ".join(view.dimensions), "form": view.form},
                )
                for view in views
            ),
        ],
        pool="spark",
        op_tags={**SPARK_TAGS, **step_priority(speed.COUNTS)},
    )
    def counts(
        context: AssetExecutionContext, settings: LambdaArchSettings, spark: SparkResource
    ) -> Iterator[MaterializeResult]:
        """Land and catch every count view up with the topic in one query; one result per
        table and view."""
        config = settings.get()
        declared = speed.count_views(config)  # a bad views file fails the run, naming it
        session = spark.session()
        if context.run.job_name == STREAM_JOB_NAME and config.speed_stream_s > 0:
            report = _stream(context, session, config, declared)
        else:
            report = speed.run_counts_speed(session, config, views=declared)
        _log_report(context, speed.COUNTS, report)
        metadata = run_metadata(config, report)
        landed = landing_metadata(report)
        context.log.info(
            f"landing: {landed['records']} records, {landed['valid']} valid, "
            f"{landed['quarantined']} quarantined"
        )
        for key in sorted(context.selected_asset_keys, key=lambda k: k.to_user_string()):
            if key in (RAW_ASSET, QUARANTINE_ASSET):
                extra = landed if key == QUARANTINE_ASSET else _raw_only(landed)
            elif key == speed_key(TRENDING):
                extra = _trending_top10(session, config, report)
            else:
                extra = {}
            yield MaterializeResult(asset_key=key, metadata={**metadata, **extra})

    return counts


LANDING_SPECS = [
    AssetSpec(
        RAW_ASSET,
        group_name=GROUP,
        deps=[TOPIC_ASSET],
        kinds={"spark", "hive", "parquet"},
        description=(
            "Every valid play event exactly once in the Hive table lambda_arch.play_events "
            "(Parquet, partitioned by dt and hour of event time); late and repeated events "
            "included, the batch layer deduplicates. Landed by the counts query."
        ),
    ),
    AssetSpec(
        QUARANTINE_ASSET,
        group_name=GROUP,
        deps=[TOPIC_ASSET],
        kinds={"spark", "hive", "parquet"},
        description=(
            "Malformed records with their raw payload, the reason, and topic, partition "
            "and offset (lambda_arch.play_events_quarantine). Landed by the counts query."
        ),
    ),
]


def landing_metadata(report: StreamReport) -> dict[str, int | float]:
    """What a run landed: records, valid, quarantined, of those from the future (more than
    LAMBDA_ARCH_MAX_CLOCK_SKEW_MIN ahead of Kafka), and the quarantined share."""
    records = int(report.observed.get("landing.records", 0))
    quarantined = int(report.observed.get("landing.quarantined", 0))
    return {
        "records": records,
        "valid": int(report.observed.get("landing.valid", 0)),
        "quarantined": quarantined,
        "quarantined_future": int(report.observed.get("landing.future", 0)),
        "quarantine_ratio": round(quarantined / records, 6) if records else 0.0,
    }


def _raw_only(landed: dict[str, int | float]) -> dict[str, int | float]:
    return {k: landed[k] for k in ("records", "valid", "quarantined")}


def _served(views: Sequence[CountView]) -> list[str]:
    """The views the serving store holds (refreshed after each micro-batch of a stream)."""
    return [view.name for view in views if view.name in view_specs.VIEWS]


def _stream(
    context: AssetExecutionContext,
    session: "SparkSession",
    config: Settings,
    views: Sequence[CountView],
) -> StreamReport:
    """The counts query as a continuous query for `LAMBDA_ARCH_SPEED_STREAM_S` seconds."""
    keys = [RAW_ASSET, QUARANTINE_ASSET, *(speed_key(view) for view in views)]
    return _continuous(
        context,
        config,
        speed.COUNTS,
        keys,
        _served(views),
        partial(speed.stream_counts, session, config, views=views),
        config.speed_trigger_s,
    )


def _continuous(
    context: AssetExecutionContext,
    config: Settings,
    name: str,
    keys: Sequence[AssetKey],
    served: Sequence[str],
    stream: Callable[..., StreamReport],
    trigger_s: float,
) -> StreamReport:
    """Run `stream` (a continuous query) for `LAMBDA_ARCH_SPEED_STREAM_S` seconds: the serving
    store's `served` views are refreshed after every micro-batch, and `keys` are reported as
    materialized at most every PUBLISH_EVERY_S seconds, so the UI follows the stream while the
    run goes on."""
    store = ServingStore.from_settings(config)
    published = {"at": time.monotonic(), "events": 0, "batches": 0}

    def on_batch(batch: StreamReport) -> None:
        refreshed = {view: refresh_view(config, store, view) for view in served}
        published["events"] += batch.events_read
        published["batches"] += 1
        if time.monotonic() - published["at"] < PUBLISH_EVERY_S:
            return
        metadata = {
            **run_metadata(config, batch),
            "events_since_last_report": published["events"],
            "micro_batches_since_last_report": published["batches"],
        }
        for key in keys:
            context.log_event(AssetMaterialization(asset_key=key, metadata=metadata))
        for view, refresh in refreshed.items():
            context.log_event(
                AssetMaterialization(
                    asset_key=AssetKey(f"{view}_serving"), metadata=refresh.metadata()
                )
            )
        published.update(at=time.monotonic(), events=0, batches=0)

    context.log.info(
        f"{name}: continuous query for {config.speed_stream_s} s, a micro-batch every "
        f"{trigger_s:g} s, serving refreshed after each"
    )
    # The stream ends LAMBDA_ARCH_SPEED_STREAM_S after its step started, however long it waited
    # at the checkpoint's lock for its predecessor (sensors/stream.py requests it early): the
    # sensor times the hand-over from the run's start, and each successor would otherwise end
    # (and wait) later than the one before.
    deadline = time.monotonic() + config.speed_stream_s
    report = stream(
        stream_s=config.speed_stream_s,
        on_batch=on_batch,
        stop_early=lambda: time.monotonic() >= deadline,
    )
    for view in served:
        refresh_view(config, store, view)
    return report


def _trending_top10(
    session: "SparkSession", config: Settings, report: StreamReport
) -> dict[str, object]:
    """The top 10 titles of the last hour of event time seen, up to and including the newest
    minute (all countries): what is trending right now, before the watermark settles it."""
    if report.max_event_time is None:
        return {"top_10": MetadataValue.md("_no events yet_")}
    window = Window.ending_at(report.max_event_time + timedelta(minutes=1), TRENDING_TOP_WINDOW_MIN)
    counts = speed.read_trending_speed(session, speed.SpeedPaths.from_settings(config))
    rows = top_titles(counts, window, limit=10)
    title = f"Top 10, {window.start:%Y-%m-%d %H:%M} to {window.end:%H:%M} UTC\n\n"
    return {"top_10": MetadataValue.md(title + markdown_table(rows, ["rank", "title_id", "plays"]))}


counts = counts_asset(definition_views())


@asset(
    name=speed.SESSIONS,
    group_name=GROUP,
    deps=[TOPIC_ASSET],
    kinds=KINDS,
    pool="spark",
    op_tags={**SPARK_TAGS, **step_priority("sessions")},
    description=(
        "Closed viewing sessions (30-minute gap) per member and title, stitched in streaming "
        "(the speed layer's second query)."
    ),
)
def sessions_speed(
    context: AssetExecutionContext, settings: LambdaArchSettings, spark: SparkResource
) -> MaterializeResult:
    """Catch the sessions query up with the topic (in views_stream_job: run it continuously)."""
    config = settings.get()
    session = spark.session()
    if context.run.job_name == STREAM_JOB_NAME and config.speed_stream_s > 0:
        stream = partial(speed.stream_sessions, session, config)
        report = _continuous(
            context,
            config,
            speed.SESSIONS,
            [AssetKey(speed.SESSIONS)],
            [view_specs.SESSIONS.name],
            stream,
            config.sessions_trigger_s,
        )
    else:
        report = speed.run_sessions_speed(session, config)
    _log_report(context, speed.SESSIONS, report)
    return MaterializeResult(metadata=run_metadata(config, report))


SPEED_ASSETS = [counts, sessions_speed]
