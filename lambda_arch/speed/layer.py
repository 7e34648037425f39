"""The speed layer: Kafka -> parse -> land -> late and repeated events out -> views.

One query, `counts`, reads each micro-batch of the topic once. Its foreachBatch
(`write_speed_batch`) lands every record in the lake (valid events in play_events, the rest in
play_events_quarantine: `lambda_arch.batch.lake.write_landing_batch`), leaves out late and
repeated events with state of its own (`lambda_arch.speed.dedup`), and writes every declared
count view's `count_deltas` into that view's table: a view added adds no Kafka read and no
streaming query. Sessions are a second query (`run_sessions_speed`): Spark's session windows
keep open sessions in their state store across runs, exactly, which a stitching of our own
inside the micro-batch would have to rebuild.

Both queries read the topic through `lambda_kafka` with admission control
(`maxEventsPerBatch`), have their own checkpoint `settings.checkpoints_dir/<name>` and run with
`trigger(availableNow=True)` through `lambda_arch.speed.streaming.run_available_now` (or as a
continuous query: `stream_counts`).

Tables under the speed root (`SpeedPaths`, by default `<warehouse>/speed`):
- `<view>_speed/batch_id=<N>/` for every count view (`trending_speed`, `discovery_speed`,
  `device_mix_speed`, ...): the counts micro-batch N of the counts query adds (deltas). The view
  is their sum (`read_view_speed`). A batch retried after a crash rewrites its folders (mode
  overwrite) from the same offsets and the same dedup state, so its deltas are counted exactly
  once. A view declared after the query ran gets one folder for what the query read before
  (`lambda_arch.speed.counts`).
- `sessions_speed/batch_id=<N>/`: sessions closed in batch N (append mode emits each once).
- `_dedup/`: the ids the counts query counted (`lambda_arch.speed.dedup`).
- `_state/<name>.json`: max event time, watermark and offsets after the last run, for the
  serving layer, the batch layer and `status` without Spark (`read_speed_state`): one per query,
  and copies of the counts query's for the landing (`landing`) and every count view
  (`<view>_speed`). `_state/counts_views.json`: the views the counts query writes.

Checkpoints: `settings.checkpoints_dir/<query>`; the landing's and every count view's name
(`landing`, `<view>_speed`) resolve to the counts query's (`checkpoint_of`). A home of an older
version, whose landing was a query of its own, is handed over once (`_hand_over_landing`).

Semantics (CONTRACT section 3): the watermark is the latest event time seen minus the allowed
lateness; an event older than the watermark when its micro-batch starts is dropped (counted as
late in the run's metadata, never in the view); a repeated event_id is counted once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F

from lambda_arch.batch import lake as lake_module
from lambda_arch.batch.lake import EVENTS_TABLE, QUARANTINE_TABLE, Lake, write_landing_batch
from lambda_arch.common.config import Settings
from lambda_arch.common.files import is_local, local_path, read_text, write_text
from lambda_arch.common.storage import hadoop_uri, pyarrow_filesystem
from lambda_arch.common.times import format_optional_time, format_time, parse_optional_time
from lambda_arch.ingest.incarnations import IncarnationLoss, incarnation_loss, read_ledger
from lambda_arch.ingest.kafka_offsets import KafkaOffsetsError, TopicBounds, topic_bounds
from lambda_arch.ingest.kafka_options import source_options
from lambda_arch.ingest.kafka_source import SOURCE_NAME, register_kafka_source
from lambda_arch.ingest.schema import REASON_FUTURE
from lambda_arch.ingest.source_offsets import (
    batch_watermark,
    checkpoint_offsets,
    checkpoint_topic_id,
    latest_commit,
    new_incarnation,
    pending_data_loss,
)
from lambda_arch.ingest.spark_schema import QUARANTINE_REASON_COLUMN, parse_events
from lambda_arch.speed import counts as registry
from lambda_arch.speed.dedup import DedupState
from lambda_arch.speed.streaming import (
    CheckpointBusyError,
    StreamReport,
    committed_offsets,
    run_available_now,
    run_stream,
)
from lambda_arch.views import declarations
from lambda_arch.views import spec as view_specs
from lambda_arch.views.declarations import CountView, declared_views
from lambda_arch.views.transforms import (
    SESSION_COLUMNS,
    SESSION_SCHEMA,
    count_deltas,
    stitch_sessions,
    valid_events,
)

if TYPE_CHECKING:
    from types import ModuleType

    from pyspark.sql import DataFrame, SparkSession

# Table and state-file names of the built-in count views, from their specs.
TRENDING = view_specs.TRENDING.speed_query
DISCOVERY = view_specs.DISCOVERY.speed_query
SESSIONS = view_specs.SESSIONS.speed_query
LANDING = "landing"
# The one query that lands and counts every count view: its checkpoint and state file.
COUNTS = "counts"
# The stream id of the counts query's landed files (lambda_arch.batch.lake.landed_prefix): its
# batch ids never collide with those of the landing query of older versions.
LANDING_STREAM = COUNTS
# Every checkpointed query of the speed layer.
QUERIES = (COUNTS, SESSIONS)
# The state file naming what the landing query of an older version already landed.
LANDING_HANDOVER = "landing_handover"
DEDUP_DIR = "_dedup"
# The queries a continuous run (views_stream_job: `stream_counts`, `stream_sessions`) runs.
STREAMED_QUERIES = (COUNTS, SESSIONS)
STATE_DIR = "_state"
# Checkpoints of the per-view count queries of older versions (before the counts query).
OLD_COUNT_CHECKPOINTS = (TRENDING, DISCOVERY)

log = logging.getLogger("lambda_arch.speed.layer")

# Spark drops a row when event_time <= watermark, the contract only when it is older (<). One
# extra millisecond of delay makes the two agree for millisecond times (what producers send):
# Spark's watermark is then the contract's minus 1 ms, and `<= W - 1 ms` is `< W`.
SPARK_WATERMARK_MARGIN = timedelta(milliseconds=1)
# With several stateful operators allowed (Spark's default since 3.4), late rows are judged
# against the watermark of the *previous* micro-batch, so an event older than the current
# watermark is still counted whenever the watermark moved in the last batch (verified on 4.3:
# no row is dropped in the first batch after a watermark advance). The single-operator mode
# judges them against the current watermark, as the contract says, and still accepts our
# dedup -> session_window chain (dedup passes rows through unchanged, so one global watermark
# is correct for both operators). Spark reads it when a query starts.
SPEED_SESSION_CONF: dict[str, str] = {"spark.sql.streaming.statefulOperator.allowMultiple": "false"}
# The event columns every count view reads (plus its dimensions, `input_columns`).
VIEW_INPUT_COLUMNS = ("event_id", "event_type", "event_time")
OBSERVATION = "input"  # df.observe name: records read and quarantined per batch


class SpeedStateError(RuntimeError):
    """Speed tables and checkpoint do not belong together (e.g. the checkpoint was deleted)."""


@dataclass(frozen=True)
class SpeedPaths:
    """Where the speed tables live: a local folder or an s3:// / s3a:// URI."""

    root: str

    @classmethod
    def from_settings(cls, settings: Settings) -> SpeedPaths:
        return cls(settings.warehouse.rstrip("/") + "/speed")

    def table(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def state_file(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{STATE_DIR}/{name}.json"

    def dedup(self, settings: Settings) -> DedupState:
        """The counts query's dedup state."""
        lateness = timedelta(minutes=settings.allowed_lateness_min)
        return DedupState(f"{self.root.rstrip('/')}/{DEDUP_DIR}", lateness)


def _root(paths: SpeedPaths | str) -> SpeedPaths:
    return paths if isinstance(paths, SpeedPaths) else SpeedPaths(str(paths))


def checkpoint_of(settings: Settings, name: str) -> str:
    """A query's checkpoint folder; the landing and a count view's table name (`<view>_speed`)
    name the counts query's, which writes them."""
    if name == LANDING or (name != SESSIONS and name.endswith("_speed")):
        name = COUNTS
    return str(settings.checkpoints_dir / name)


def checkpoints_of(settings: Settings) -> dict[str, str]:
    """Every speed query's checkpoint folder, by query name (what the lag is measured against)."""
    return {name: checkpoint_of(settings, name) for name in QUERIES}


def lock_dir_of(settings: Settings) -> Path:
    return settings.home / "locks"


# foreachBatch functions: module level and free of JVM handles, so that Spark Connect can pickle
# them to the server; they use the DataFrame API only.


@dataclass(frozen=True)
class SpeedSink:
    """What the counts query's foreachBatch writes to (pickled to the server under Connect)."""

    lake: Lake
    targets: tuple[tuple[CountView, str], ...]  # every count view and its table's URI
    dedup: DedupState
    checkpoint: str
    columns: tuple[str, ...]  # the event columns the views and the dedup read
    handover_file: str  # what an older version's landing query landed (none: no file)


def write_speed_batch(sink: SpeedSink, batch_df: DataFrame, batch_id: int) -> None:
    """foreachBatch of the counts query: land the micro-batch, then count its on-time, new
    events into every view's `<table>/batch_id=<N>/`. Each step is idempotent per batch id,
    so a retry after a crash writes the same files again."""
    batch_df.persist()
    try:
        spark_watermark = batch_watermark(sink.checkpoint, batch_id)
        # Spark's watermark is the contract's minus SPARK_WATERMARK_MARGIN (see there).
        watermark = spark_watermark + SPARK_WATERMARK_MARGIN if spark_watermark else None
        events = valid_events(batch_df).select(*sink.columns)
        # One job reads and parses the batch into the cache and counts its late events; the
        # steps after it run side by side on the cache. A micro-batch of the continuous query is
        # a few thousand events, where each Spark job's latency (scheduling, shuffles, file
        # commits, the metastore) outweighs its CPU. (Jobs started together before the cache
        # is filled would each read the topic on a cluster, whose executors keep separate
        # caches.)
        totals = sink.dedup.totals(events, watermark)
        with ThreadPoolExecutor(max_workers=2 + len(sink.targets)) as pool:
            landed_below = read_landed_below(sink.handover_file)
            landing = pool.submit(
                write_landing_batch,
                _not_landed(batch_df, landed_below),
                batch_id,
                sink.lake,
                stream=LANDING_STREAM,
            )
            admission = sink.dedup.decide(events, batch_id, watermark)
            try:
                # The ids are remembered beside the view writes: a retry of this batch reads
                # only the state of the batches below it, so the order does not matter.
                steps = [
                    pool.submit(write_batch, table, count_deltas(admission.counted, view), batch_id)
                    for view, table in sink.targets
                ]
                stats = admission.stats(totals)
                steps += [pool.submit(sink.dedup.record, admission, stats), landing]
                for done in steps:
                    done.result()  # raises the step's error: the batch fails and is retried
            finally:
                admission.counted.unpersist()
    finally:
        batch_df.unpersist()


def _not_landed(batch_df: DataFrame, landed_below: Mapping[int, int]) -> DataFrame:
    """The records an older version's landing query had not landed yet (all when none)."""
    if not landed_below:
        return batch_df
    below = F.create_map(*[F.lit(x) for p, o in sorted(landed_below.items()) for x in (p, o)])
    return batch_df.where(F.col("offset") >= F.coalesce(below[F.col("partition")], F.lit(0)))


def read_landed_below(handover_file: str) -> dict[int, int]:
    """Per partition, the offset below which an older version's landing query landed."""
    handover = _read_handover(handover_file)
    return handover[0] if handover else {}


def _read_handover(handover_file: str) -> tuple[dict[int, int], str | None] | None:
    """The hand-over file's offsets and topic id (None: no hand-over)."""
    text = read_text(handover_file)
    if text is None:
        return None
    document = json.loads(text)
    below = {int(p): int(o) for p, o in document["landed_below"].items()}
    return below, document.get("topic_id")


def write_batch(table: str, batch_df: DataFrame, batch_id: int) -> None:
    """foreachBatch: a micro-batch's rows into `<table>/batch_id=<N>/`, replacing a retry's."""
    # Per-batch results are small (one row per minute x key): one file per batch.
    batch_df.coalesce(1).write.mode("overwrite").parquet(f"{table}/batch_id={batch_id}")


# Queries ------------------------------------------------------------------------------------


def speed_events(
    spark: SparkSession, settings: Settings, columns: Sequence[str] | None = None
) -> DataFrame:
    """The streaming events every speed query starts from: valid, watermarked, deduplicated.

    `columns` (with event_id and event_time) keeps only those event columns, before the dedup:
    every column kept there is shuffled by event_id.

    Dedup: `dropDuplicatesWithinWatermark(["event_id"])`. Both it and
    `dropDuplicates(["event_id", "event_time"])` drop rows older than the watermark and report
    them as numRowsDroppedByWatermark (verified on Spark 4.3), but only the former keys on
    event_id alone, which is the contract's identity ("a repeated event_id is the same event"):
    a re-send with another event_time is still one event. Its state per event_id lives until
    the watermark passes event_time + lateness; a copy arriving later than that is older than
    the watermark and dropped as late, so it is never counted twice either.
    """
    parsed = parsed_stream(spark, settings).observe(
        OBSERVATION,
        F.count(F.lit(1)).alias("records"),
        F.count(F.col(QUARANTINE_REASON_COLUMN)).alias("quarantined"),
    )
    events = valid_events(parsed)
    if columns is not None:
        events = events.select(*columns)
    return events.withWatermark(
        "event_time", f"{_spark_delay_ms(settings)} milliseconds"
    ).dropDuplicatesWithinWatermark(["event_id"])


def parsed_stream(spark: SparkSession, settings: Settings) -> DataFrame:
    """Every record of the topic through `lambda_kafka` (admission control, data-loss rule),
    parsed: event columns, or the reason it is quarantined. Events from the future are
    quarantined here, before any watermark: they never move it."""
    register_kafka_source(spark)
    _ship_code(spark, lake_module)
    options = source_options(
        settings.bootstrap_servers,
        settings.topic,
        max_events_per_batch=settings.max_events_per_batch,
        failOnDataLoss=settings.fail_on_data_loss,
    )
    raw = spark.readStream.format(SOURCE_NAME).options(**options).load()
    return parse_events(raw, "value", "timestamp", settings.max_clock_skew_min)


def count_views(settings: Settings) -> tuple[CountView, ...]:
    """The count views the counts query writes: the built-in and the declared ones
    (ViewDeclarationError naming the views file and the view when the file is bad)."""
    return declared_views(settings.views_file)


def counted_types(views: Sequence[CountView]) -> tuple[str, ...]:
    """The event types some view counts: the only ones the counts query deduplicates."""
    return tuple(sorted({t for view in views for t in view.event_types}))


def input_columns(views: Sequence[CountView]) -> tuple[str, ...]:
    """The event columns the counts query keeps: what the views count by, and the dedup's."""
    return tuple(dict.fromkeys([*VIEW_INPUT_COLUMNS, *(d for v in views for d in v.dimensions)]))


def run_counts_speed(
    spark: SparkSession,
    settings: Settings,
    paths: SpeedPaths | None = None,
    *,
    views: Sequence[CountView] | None = None,
    lake: Lake | None = None,
    timeout_s: float | None = None,
    lock_timeout_s: float = 300.0,
) -> StreamReport:
    """Land and catch every count view's deltas up with the topic (availableNow) in one query.

    `views` defaults to `count_views(settings)`. A view new to the query is filled first from
    the lake (`lambda_arch.speed.counts`). Returns the run's report (name `counts`)."""
    paths = paths or SpeedPaths.from_settings(settings)
    chosen = tuple(views) if views is not None else count_views(settings)
    writer, checkpoint, prepare = _counts_writer(spark, settings, paths, chosen, lake)
    return _run(
        spark,
        settings,
        paths,
        COUNTS,
        writer,
        checkpoint,
        timeout_s,
        lock_timeout_s,
        before_start=prepare,
        views=chosen,
    )


def run_trending_speed(
    spark: SparkSession,
    settings: Settings,
    paths: SpeedPaths | None = None,
    *,
    timeout_s: float | None = None,
    lock_timeout_s: float = 300.0,
) -> StreamReport:
    """The counts query (every count view, trending included): `run_counts_speed`."""
    return run_counts_speed(
        spark, settings, paths, timeout_s=timeout_s, lock_timeout_s=lock_timeout_s
    )


def run_discovery_speed(
    spark: SparkSession,
    settings: Settings,
    paths: SpeedPaths | None = None,
    *,
    timeout_s: float | None = None,
    lock_timeout_s: float = 300.0,
) -> StreamReport:
    """The counts query (every count view, discovery included): `run_counts_speed`."""
    return run_counts_speed(
        spark, settings, paths, timeout_s=timeout_s, lock_timeout_s=lock_timeout_s
    )


def run_sessions_speed(
    spark: SparkSession,
    settings: Settings,
    paths: SpeedPaths | None = None,
    *,
    timeout_s: float | None = None,
    lock_timeout_s: float = 300.0,
) -> StreamReport:
    """Stitch sessions in streaming (append mode: a session is written once it has closed).

    A session closes when the watermark passes its last event + 30 minutes; open sessions stay
    in the RocksDB state store across runs.
    """
    paths = paths or SpeedPaths.from_settings(settings)
    writer, checkpoint = _sessions_writer(spark, settings, paths)
    return _run(spark, settings, paths, SESSIONS, writer, checkpoint, timeout_s, lock_timeout_s)


def _sessions_writer(spark: SparkSession, settings: Settings, paths: SpeedPaths) -> tuple[Any, str]:
    table = paths.table(SESSIONS)
    checkpoint = checkpoint_of(settings, SESSIONS)
    _check_fresh(checkpoint, table)
    writer = (
        stitch_sessions(speed_events(spark, settings))
        .writeStream.outputMode("append")
        .foreachBatch(partial(write_batch, hadoop_uri(table)))
    )
    return writer, checkpoint


def stream_sessions(
    spark: SparkSession,
    settings: Settings,
    *,
    stream_s: float,
    on_batch: Callable[[StreamReport], None] | None = None,
    stop_early: Callable[[], bool] | None = None,
    paths: SpeedPaths | None = None,
    lock_timeout_s: float = 300.0,
) -> StreamReport:
    """Run the sessions query as a continuous query for about `stream_s` seconds (or until
    `stop_early()`), a micro-batch every `settings.sessions_trigger_s` seconds: a session
    closes 30 minutes of event time after its last event, so it needs no faster trigger.

    Same checkpoint, table and semantics as its availableNow run (the two take turns on the
    checkpoint's lock). After each micro-batch the state file is saved, then `on_batch` gets
    that batch's report (e.g. to refresh the serving store)."""
    paths = paths or SpeedPaths.from_settings(settings)
    writer, checkpoint = _sessions_writer(spark, settings, paths)
    return _stream(
        spark,
        settings,
        paths,
        SESSIONS,
        writer,
        checkpoint,
        trigger_s=settings.sessions_trigger_s,
        save=lambda batch: _save_state(paths, SESSIONS, settings, batch),
        stream_s=stream_s,
        on_batch=on_batch,
        stop_early=stop_early,
        lock_timeout_s=lock_timeout_s,
    )


def _stream(
    spark: SparkSession,
    settings: Settings,
    paths: SpeedPaths,
    name: str,
    writer: Any,
    checkpoint: str,
    *,
    trigger_s: float,
    save: Callable[[StreamReport], dict[str, Any]],
    stream_s: float,
    on_batch: Callable[[StreamReport], None] | None,
    stop_early: Callable[[], bool] | None,
    lock_timeout_s: float,
    before_start: Callable[[], None] | None = None,
    complete: Callable[[StreamReport], StreamReport] | None = None,
) -> StreamReport:
    """A query as a continuous query (`streaming.run_stream`): after each micro-batch
    `complete` adds what Spark's progress lacks (the counts query's late events), `save`
    writes its state files, then `on_batch` gets the batch's report with the contract's
    watermark."""

    def publish(batch: StreamReport) -> None:
        batch = complete(batch) if complete is not None else batch
        state = save(batch)
        if on_batch is not None:
            on_batch(replace(batch, watermark=parse_optional_time(state.get("watermark"))))

    report = run_stream(
        name,
        writer,
        checkpoint,
        lock_dir=lock_dir_of(settings),
        stream_s=stream_s,
        trigger_s=trigger_s,
        on_batch=publish,
        stop_early=stop_early,
        lock_timeout_s=lock_timeout_s,
        spark=spark,
        session_conf=SPEED_SESSION_CONF,
        before_start=before_start,
    )
    state = read_speed_state(paths, name) or {}
    return replace(report, watermark=parse_optional_time(state.get("watermark")))


def _counts_writer(
    spark: SparkSession,
    settings: Settings,
    paths: SpeedPaths,
    views: Sequence[CountView],
    lake: Lake | None = None,
) -> tuple[Any, str, Callable[[], None]]:
    checkpoint = checkpoint_of(settings, COUNTS)
    _check_old_checkpoints(settings, paths)
    for view in views:
        _check_fresh(checkpoint, paths.table(view_specs.spec_of(view).speed_query))
    lake = lake or Lake.from_settings(settings)
    lake.ensure_tables(spark)
    sink = SpeedSink(
        lake=lake,
        targets=tuple(
            (view, hadoop_uri(paths.table(view_specs.spec_of(view).speed_query))) for view in views
        ),
        dedup=replace(paths.dedup(settings), event_types=counted_types(views)),
        checkpoint=checkpoint,
        columns=input_columns(views),
        handover_file=paths.state_file(LANDING_HANDOVER),
    )
    # Each view is applied to each micro-batch's new events (stateless per batch): its output
    # is that batch's deltas, and the sum over batches is the view.
    writer = landing_stream(spark, settings).writeStream.foreachBatch(
        partial(write_speed_batch, sink)
    )
    return writer, checkpoint, partial(_prepare, spark, settings, paths, views, lake)


def landing_stream(spark: SparkSession, settings: Settings) -> DataFrame:
    """Every record of the topic, parsed (quarantined ones with their reason), with the
    observed metrics of a run (`landing.records`, `.valid`, `.quarantined`, `.future`) and
    the event-time watermark the counts query's foreachBatch applies."""
    reason = F.col(QUARANTINE_REASON_COLUMN)
    parsed = parsed_stream(spark, settings).observe(
        LANDING,
        F.count(F.lit(1)).alias("records"),
        F.count_if(reason.isNull()).alias("valid"),
        F.count(reason).alias("quarantined"),
        F.count_if(reason == REASON_FUTURE).alias("future"),
    )
    # No stateful operator: the watermark drops nothing here. Spark keeps it in the offset log
    # (the batch's `batchWatermarkMs`), where write_speed_batch reads it, and reports the
    # latest event time read, from which the batch layer knows which days are complete.
    return parsed.withWatermark("event_time", f"{_spark_delay_ms(settings)} milliseconds")


def _spark_delay_ms(settings: Settings) -> int:
    margin_ms = SPARK_WATERMARK_MARGIN // timedelta(milliseconds=1)
    return settings.allowed_lateness_min * 60_000 + margin_ms


def _prepare(
    spark: SparkSession,
    settings: Settings,
    paths: SpeedPaths,
    views: Sequence[CountView],
    lake: Lake,
) -> None:
    """Under the counts checkpoint's lock, before its query starts: hand an older version's
    landing over, refuse a new checkpoint over landed files, fill every view new to the query
    from the lake (lambda_arch.speed.counts) and record the views it writes."""
    checkpoint = checkpoint_of(settings, COUNTS)
    handed_over = _hand_over_landing(settings, paths, checkpoint)
    if not handed_over:
        _check_fresh_lake(checkpoint, lake)
    state_file = paths.state_file(registry.REGISTRY)
    known = registry.read_registry(state_file)
    latest = latest_commit(checkpoint)
    if latest is None:
        # Nothing counted yet: every view starts with the query's first micro-batch.
        registry.write_registry(state_file, {view.name: -1 for view in views})
        return
    declared = {view.name for view in views}
    kept = {name: first for name, first in known.items() if name in declared}
    added = registry.new_views(views, known)
    if added:
        # The lake holds every record the query read: the query lands what it counts.
        offsets = checkpoint_offsets(checkpoint) or {}
        for view in added:
            table = paths.table(view_specs.spec_of(view).speed_query)
            _remove_batches(table)  # left by an earlier declaration of the same name
            deltas = registry.fill_deltas(spark, lake, view, offsets)
            write_batch(hadoop_uri(table), deltas, latest)
            kept[view.name] = latest
            log.info(
                "%s: filled from the lake below offsets %s as batch %d", view.name, offsets, latest
            )
    if kept != known:
        registry.write_registry(state_file, kept)


def _hand_over_landing(settings: Settings, paths: SpeedPaths, checkpoint: str) -> bool:
    """Take over from the landing query of an older version (`checkpoints/landing`): what it
    landed (below its offsets) is not landed again. True while that applies.

    Its offsets are written once to `_state/landing_handover.json`; the file goes once the
    counts query has passed them, or the topic is a new incarnation (its offsets then say
    nothing). Refused when the counts query had counted records that landing had not landed:
    they would never reach the lake.
    """
    old = settings.checkpoints_dir / LANDING
    handover = paths.state_file(LANDING_HANDOVER)
    counted = checkpoint_offsets(checkpoint) or {}
    taken_over = _read_handover(handover)
    if taken_over is not None:
        below, topic_id = taken_over
        bounds = _bounds(settings)
        passed = all(counted.get(p, 0) >= o for p, o in below.items())
        if passed or new_incarnation(topic_id, bounds.topic_id if bounds else None):
            _delete_file(handover)
            return False
        return True
    if not (old / "commits").is_dir() or (old / "handed_over").exists():
        return False
    landed = checkpoint_offsets(old) or {}
    behind = {p: (landed.get(p, 0), o) for p, o in counted.items() if o > landed.get(p, 0)}
    if behind:
        raise SpeedStateError(
            f"this home's landing query ({old}) of an older version is behind its counts query "
            f"(partition: (landed, counted) {behind}): run `lambda-arch run` with that version "
            "first, so that the lake holds every record counted"
        )
    document = {"landed_below": {str(p): o for p, o in sorted(landed.items())}}
    document["topic_id"] = checkpoint_topic_id(old)
    write_text(handover, json.dumps(document, indent=1) + "\n")
    (old / "handed_over").write_text("the counts query lands since this version\n")
    log.info("landing handed over from %s: landed below %s", old, landed)
    return bool(landed)


def _delete_file(location: str) -> None:
    filesystem, path = pyarrow_filesystem(location)
    filesystem.delete_file(path)


def _remove_batches(table: str) -> None:
    from pyarrow import fs

    filesystem, path = pyarrow_filesystem(table)
    if filesystem.get_file_info(path).type == fs.FileType.Directory:
        filesystem.delete_dir_contents(path)


def _check_old_checkpoints(settings: Settings, paths: SpeedPaths) -> None:
    """Refuse a home whose count views were written by the per-view queries of older versions
    while the counts query has not run: its batch ids would collide with theirs."""
    if (local_path(checkpoint_of(settings, COUNTS)) / "offsets").is_dir():
        return
    old = [n for n in OLD_COUNT_CHECKPOINTS if (settings.checkpoints_dir / n / "offsets").is_dir()]
    if old:
        folders = [str(settings.checkpoints_dir / n) for n in old] + [paths.table(n) for n in old]
        raise SpeedStateError(
            "this home's count views were written by the per-view speed queries of an older "
            f"version ({', '.join(old)}); the counts query replaces them. Remove "
            f"{', '.join(folders)} and their state files in {paths.root}/{STATE_DIR} (the "
            "counts query then recounts the topic), and refresh the serving store from scratch"
        )


def stream_counts(
    spark: SparkSession,
    settings: Settings,
    *,
    stream_s: float,
    on_batch: Callable[[StreamReport], None] | None = None,
    stop_early: Callable[[], bool] | None = None,
    paths: SpeedPaths | None = None,
    lock_timeout_s: float = 300.0,
    views: Sequence[CountView] | None = None,
) -> StreamReport:
    """Run the counts query (every count view) as a continuous query for about `stream_s`
    seconds (or until `stop_early()`), a micro-batch every `settings.speed_trigger_s` seconds.

    Same checkpoint, tables and semantics as its availableNow run (the two take turns on the
    checkpoint's lock). After each micro-batch the state files are saved, then `on_batch` gets
    that batch's report (e.g. to refresh the serving store).
    """
    paths = paths or SpeedPaths.from_settings(settings)
    chosen = tuple(views) if views is not None else count_views(settings)
    writer, checkpoint, prepare = _counts_writer(spark, settings, paths, chosen)
    dedup = paths.dedup(settings)
    return _stream(
        spark,
        settings,
        paths,
        COUNTS,
        writer,
        checkpoint,
        trigger_s=settings.speed_trigger_s,
        save=lambda batch: _save_counts_state(paths, settings, batch, chosen),
        complete=lambda batch: with_dedup_stats(batch, dedup),
        stream_s=stream_s,
        on_batch=on_batch,
        stop_early=stop_early,
        lock_timeout_s=lock_timeout_s,
        before_start=prepare,
    )


def stream_view(
    spark: SparkSession,
    settings: Settings,
    name: str,
    *,
    stream_s: float,
    on_batch: Callable[[StreamReport], None] | None = None,
    stop_early: Callable[[], bool] | None = None,
    paths: SpeedPaths | None = None,
    lock_timeout_s: float = 300.0,
) -> StreamReport:
    """`stream_counts` under a name of older versions: `counts` or a count view's table name
    (`trending_speed`, ...): every count view streams in the one counts query."""
    if checkpoint_of(settings, name) != checkpoint_of(settings, COUNTS):
        raise ValueError(f"{name!r} is not a count view's query (the counts query runs them)")
    return stream_counts(
        spark,
        settings,
        stream_s=stream_s,
        on_batch=on_batch,
        stop_early=stop_early,
        paths=paths,
        lock_timeout_s=lock_timeout_s,
    )


def _run(
    spark: SparkSession,
    settings: Settings,
    paths: SpeedPaths,
    name: str,
    writer: Any,
    checkpoint: str,
    timeout_s: float | None,
    lock_timeout_s: float,
    *,
    before_start: Callable[[], None] | None = None,
    views: Sequence[CountView] = (),
) -> StreamReport:
    # What this run owes its caller: every record on the topic now. When another run holds the
    # checkpoint (a continuous query of views_stream_job, an overlapping sensor or CLI run), it
    # is enough that the holder has committed past these offsets.
    target = _bounds(settings)
    deadline = time.monotonic() + lock_timeout_s
    while True:
        # Measured before the run: afterwards the checkpoint has moved past the gap. (When data
        # loss fails the run, the run's own error names the gap.)
        gaps = (
            []
            if settings.fail_on_data_loss
            else pending_data_loss(checkpoint, settings.bootstrap_servers, settings.topic)
        )
        loss = pending_incarnation_loss(settings, checkpoint, target)
        try:
            report = run_available_now(
                name,
                writer,
                checkpoint,
                lock_dir=lock_dir_of(settings),
                timeout_s=timeout_s,
                lock_timeout_s=min(_BUSY_PROBE_S, max(deadline - time.monotonic(), 0.0)),
                spark=spark,
                session_conf=SPEED_SESSION_CONF,
                before_start=before_start,
            )
            break
        except CheckpointBusyError:
            caught_up = _caught_up_by_holder(name, checkpoint, target, settings)
            if caught_up is not None:
                state = read_speed_state(paths, name) or {}
                return replace(caught_up, watermark=parse_optional_time(state.get("watermark")))
            if time.monotonic() >= deadline:
                raise
    if name == COUNTS:
        report = with_dedup_stats(report, paths.dedup(settings))
    state = _save_counts_state(paths, settings, report, views, name)
    if loss is not None:
        report_loss(settings, name, loss)
    # Report the contract's watermark (latest event time seen - lateness), not Spark's
    # (1 ms less, see SPARK_WATERMARK_MARGIN), and also after a run that read nothing.
    return replace(
        report,
        watermark=parse_optional_time(state.get("watermark")),
        data_loss=tuple(gaps),
        incarnation_loss=loss,
    )


# How long one wait for a busy checkpoint's lock lasts before its offsets are looked at again.
_BUSY_PROBE_S = 1.0


def _bounds(settings: Settings) -> TopicBounds | None:
    try:
        return topic_bounds(settings.bootstrap_servers, settings.topic)
    except KafkaOffsetsError:
        return None  # the run itself will say what is wrong with the broker


def pending_incarnation_loss(
    settings: Settings, checkpoint: str, bounds: TopicBounds | None = None
) -> IncarnationLoss | None:
    """What the next run from `checkpoint` finds lost with an old incarnation of the topic
    (lambda_arch.ingest.incarnations); None when the topic is the checkpoint's incarnation (or
    either id is unknown)."""
    previous = checkpoint_topic_id(checkpoint) if is_local(checkpoint) else None
    bounds = bounds or _bounds(settings)
    if bounds is None or bounds.topic_id is None:
        return None
    ledger = read_ledger(settings.topic_ends_file)
    offsets = checkpoint_offsets(checkpoint) or {}
    if previous is None and not offsets:
        # A query that never committed (e.g. killed with the memory broker before its first
        # micro-batch ended) read nothing of the incarnations the ledger saw before this one:
        # every record they held is lost to it, counted from the first of them.
        previous = _first_other_incarnation(ledger, settings.topic, bounds.topic_id)
    if not new_incarnation(previous, bounds.topic_id):
        return None
    assert previous is not None
    return incarnation_loss(ledger, settings.topic, offsets, previous, bounds.topic_id)


def _first_other_incarnation(
    ledger: Mapping[str, list[dict[str, Any]]], topic: str, current_id: str
) -> str | None:
    """The first incarnation of `topic` in the ledger that is not `current_id` (None: none)."""
    for entry in ledger.get(topic) or []:
        if entry.get("topic_id") not in (None, current_id):
            return str(entry["topic_id"])
    return None


def report_loss(settings: Settings, name: str, loss: IncarnationLoss) -> None:
    """Log the loss; for the counts query, which lands (records never landed are lost to both
    layers), also alert (logs/alerts.jsonl and the webhook) unless nothing was lost for sure.
    The sessions query's own loss is in its run metadata: the batch layer counts whatever was
    landed."""
    line = loss.describe(name)
    log.warning("%s", line)
    if name != COUNTS or (loss.precision == "exact" and loss.total == 0):
        return
    from lambda_arch.quality import alerts

    alert = alerts.data_lost_alert(
        asset_key="play_events_raw",
        message=line,
        alert_id=f"data_lost:{name}:{loss.previous_id}:{loss.current_id}",
        metadata={"query": name, "topic": loss.topic, **loss.metadata()},
    )
    alerts.publish([alert], settings.logs_dir, settings.alert_webhook)


def with_dedup_stats(report: StreamReport, dedup: DedupState) -> StreamReport:
    """The counts query's report with the late events its foreachBatch left out (Spark's
    progress counts only what stateful operators drop, and the query has none)."""
    late = {s.batch_id: s.late for s in dedup.read_stats(b.batch_id for b in report.batches)}
    batches = tuple(replace(b, late_events=late.get(b.batch_id, 0)) for b in report.batches)
    return replace(report, batches=batches, late_events=sum(late.values()))


def _caught_up_by_holder(
    name: str, checkpoint: str, target: TopicBounds | None, settings: Settings
) -> StreamReport | None:
    """A report of no work when the checkpoint's holder has committed every target offset."""
    committed = committed_offsets(checkpoint)
    if target is None or committed is None:
        return None
    if pending_incarnation_loss(settings, checkpoint, target) is not None:
        return None  # the holder's offsets are of an older incarnation
    if any(committed.get(partition, 0) < offset for partition, offset in target.end.items()):
        return None
    return StreamReport(
        name=name,
        checkpoint=checkpoint,
        micro_batches=0,
        events_read=0,
        start_offsets=committed,
        offsets=committed,
        duration_s=0.0,
        events_per_s=0.0,
        max_event_time=None,
        watermark=None,
        late_events=0,
        observed={},
        caught_up_by_holder=True,
    )


def _ship_code(spark: SparkSession, *modules: ModuleType) -> None:
    """Under Spark Connect, send the foreachBatch functions' code by value (the server may
    not have lambda_arch installed; FACTS: by reference fails with ModuleNotFoundError).

    The whole package, not only the bodies' modules: what they call lives in other modules
    too (write_landing_batch reaches lambda_arch.runtime.spark and lambda_arch.common.storage), and anything left
    by reference fails on such a server (tests/lambda_arch/test_spark_connect.py runs one).
    cloudpickle treats every submodule of a registered package as registered.
    """
    if not type(spark).__module__.startswith("pyspark.sql.connect"):
        return
    from pyspark import cloudpickle

    import lambda_arch

    for module in (lambda_arch, *modules):
        cloudpickle.register_pickle_by_value(module)


# Raw landing (play_events + play_events_quarantine) -----------------------------------------


def run_landing(
    spark: SparkSession,
    settings: Settings,
    lake: Lake | None = None,
    *,
    timeout_s: float | None = None,
    lock_timeout_s: float = 300.0,
) -> StreamReport:
    """Land every new Kafka record in the lake: the counts query (`run_counts_speed`), which
    lands valid events in play_events and the rest in play_events_quarantine as it counts
    (`lambda_arch.batch.lake.write_landing_batch`, idempotent per batch id).

    The report's observed metrics count them per run: `landing.records`, `landing.valid`,
    `landing.quarantined` and, of those, `landing.future` (event_time in the future). No
    watermark and no dedup in the lake: it keeps every record, late and repeated ones included;
    the batch layer deduplicates.
    """
    return run_counts_speed(
        spark, settings, lake=lake, timeout_s=timeout_s, lock_timeout_s=lock_timeout_s
    )


def _check_fresh_lake(checkpoint: str, lake: Lake) -> None:
    """Refuse a never-started counts checkpoint over landed files: it would land everything
    again, and its batch ids restart at 0 (a retry of batch N replaces the files of batch N,
    see lambda_arch.batch.lake)."""
    if (local_path(checkpoint) / "offsets").is_dir():
        return
    for table in (EVENTS_TABLE, QUARANTINE_TABLE):
        if any(stats.last_batch is not None for stats in lake.partition_dates(table=table)):
            raise SpeedStateError(
                f"the lake at {lake.root} holds landed batches but the counts checkpoint "
                f"{checkpoint} is new: restore the checkpoint, or move the lake's tables aside"
            )


# Readers ------------------------------------------------------------------------------------


def read_view_speed(spark: SparkSession, paths: SpeedPaths | str, view: CountView) -> DataFrame:
    """A count view's speed counts: its columns (minute, dimensions, plays), deltas summed."""
    table = _root(paths).table(view_specs.spec_of(view).speed_query)
    if not _has_batches(table):
        return spark.createDataFrame([], view.spark_schema)
    deltas = _read_batches(spark, table, view.spark_schema)
    return deltas.groupBy("minute", *view.dimensions).agg(
        F.sum("plays").cast("bigint").alias("plays")
    )


def read_trending_speed(spark: SparkSession, paths: SpeedPaths | str) -> DataFrame:
    """The trending speed view: minute, country, title_id, plays (deltas summed over batches)."""
    return read_view_speed(spark, paths, declarations.TRENDING)


def read_discovery_speed(spark: SparkSession, paths: SpeedPaths | str) -> DataFrame:
    """The discovery speed view: minute, country, discovery_source, plays."""
    return read_view_speed(spark, paths, declarations.DISCOVERY)


def read_sessions_speed(spark: SparkSession, paths: SpeedPaths | str) -> DataFrame:
    """Closed sessions from the speed layer: member_id, title_id, session_start, session_end,
    events, watched_ms."""
    table = _root(paths).table(SESSIONS)
    if not _has_batches(table):
        return spark.createDataFrame([], SESSION_SCHEMA)
    return _read_batches(spark, table, SESSION_SCHEMA).select(*SESSION_COLUMNS)


def _read_batches(spark: SparkSession, table: str, schema: str) -> DataFrame:
    """A speed table's micro-batch folders. Serving removes folders the batch layer covers
    (lambda_arch.speed.retention): one removed between Spark's listing and its read is skipped,
    its rows are older than any minute a reader compares."""
    return spark.read.schema(schema).option("ignoreMissingFiles", "true").parquet(hadoop_uri(table))


# State file ---------------------------------------------------------------------------------


def read_speed_state(paths: SpeedPaths | str, name: str) -> dict[str, Any] | None:
    """The state a speed query saved after its last run (None before the first run).

    Keys: query, topic, max_event_time and watermark (ISO text or null), allowed_lateness_min,
    offsets ({"partition": next offset}), late_events_total, updated_at.
    """
    text = read_text(_root(paths).state_file(name))
    return None if text is None else json.loads(text)


def _save_state(
    paths: SpeedPaths, name: str, settings: Settings, report: StreamReport
) -> dict[str, Any]:
    previous = read_speed_state(paths, name) or {}
    seen = [
        t for t in (parse_optional_time(previous.get("max_event_time")), report.max_event_time) if t
    ]
    latest = max(seen) if seen else None
    lateness = timedelta(minutes=settings.allowed_lateness_min)
    offsets = report.offsets or {int(p): o for p, o in (previous.get("offsets") or {}).items()}
    state = {
        "query": name,
        "topic": settings.topic,
        "max_event_time": format_optional_time(latest),
        "watermark": format_optional_time(latest - lateness if latest else None),
        "allowed_lateness_min": settings.allowed_lateness_min,
        "offsets": {str(p): o for p, o in sorted(offsets.items())},
        "late_events_total": int(previous.get("late_events_total", 0)) + report.late_events,
        "updated_at": format_time(datetime.now(UTC)),
    }
    write_text(paths.state_file(name), json.dumps(state, indent=1) + "\n")
    return state


def _save_counts_state(
    paths: SpeedPaths,
    settings: Settings,
    report: StreamReport,
    views: Sequence[CountView],
    name: str = COUNTS,
) -> dict[str, Any]:
    """A query's state file and, for the counts query, a copy for the landing and each count
    view it writes (`landing`, `<view>_speed`: what the batch layer, the serving refresh and
    status read)."""
    state = _save_state(paths, name, settings, report)
    copies = [view_specs.spec_of(view).speed_query for view in views]
    for query in [LANDING, *copies] if name == COUNTS else copies:
        text = json.dumps({**state, "query": query}, indent=1) + "\n"
        write_text(paths.state_file(query), text)
    return state


# Files (local folder or S3) -----------------------------------------------------------------


def _has_batches(table: str) -> bool:
    """Whether a speed table has at least one batch_id=<N> folder."""
    if is_local(table):
        path = local_path(table)
        return path.is_dir() and any(p.name.startswith("batch_id=") for p in path.iterdir())
    from pyarrow import fs

    filesystem, path = pyarrow_filesystem(table)
    infos = filesystem.get_file_info(fs.FileSelector(path, allow_not_found=True))
    return any(info.base_name.startswith("batch_id=") for info in infos)


def _check_fresh(checkpoint: str, table: str) -> None:
    """Refuse a never-started checkpoint over existing batch folders.

    Batch ids restart at 0 with a new checkpoint, so old deltas would be overwritten or summed
    with a second count of the same events. (A checkpoint that started but never committed a
    batch is fine: Spark re-runs that batch and overwrites its folder.)
    """
    if (local_path(checkpoint) / "offsets").is_dir() or not _has_batches(table):
        return
    raise SpeedStateError(
        f"{table} holds speed batches but the checkpoint {checkpoint} is new: delete both (or "
        "restore the checkpoint) so that batch ids and output agree"
    )
