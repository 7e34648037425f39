"""The views' logic as DataFrame -> DataFrame functions, shared by the speed and the batch layer.

Both layers call these same functions (the speed layer on streaming DataFrames or inside
foreachBatch, the batch layer on lake history), so the two cannot drift apart. Everything is
built from the DataFrame API only: the functions run unchanged on a classic session, under
Spark Connect and inside a foreachBatch function on the Connect server.

Input of every view function is a DataFrame of *valid, deduplicated* events with the columns of
`lambda_arch.ingest.spark_schema.SPARK_EVENT_SCHEMA` (more columns are fine).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lambda_arch.ingest.spark_schema import QUARANTINE_REASON_COLUMN, SPARK_EVENT_COLUMNS
from lambda_arch.views.declarations import DISCOVERY, TRENDING, CountView

# CONTRACT section 3: a gap of 30 minutes or more between two events starts a new session.
SESSION_GAP = timedelta(minutes=30)
# Spark merges an event into a session when its time is <= the session's window end (last event
# + gap): with a gap of exactly 30 minutes, an event 30:00 after the previous one would join the
# session. Timestamps have microsecond precision, so "gap >= 30 min" is "gap > 30 min - 1 us":
# a window of 30 min - 1 us gives exactly the contract's rule (tested at 29:59, 30:00, 30:01).
SPARK_SESSION_GAP = f"{SESSION_GAP // timedelta(microseconds=1) - 1} microseconds"

# Kafka record columns that travel with an event when present (for lineage and tie-breaking).
KAFKA_COLUMNS: tuple[str, ...] = ("topic", "partition", "offset", "timestamp")
# Columns of each view, in order (the readers of the speed and batch tables return these).
TRENDING_COLUMNS: tuple[str, ...] = TRENDING.columns
DISCOVERY_COLUMNS: tuple[str, ...] = DISCOVERY.columns
SESSION_COLUMNS: tuple[str, ...] = (
    "member_id",
    "title_id",
    "session_start",
    "session_end",
    "events",
    "watched_ms",
)
TRENDING_SCHEMA = TRENDING.spark_schema
DISCOVERY_SCHEMA = DISCOVERY.spark_schema
SESSION_SCHEMA = (
    "member_id bigint, title_id bigint, session_start timestamp, session_end timestamp, "
    "events bigint, watched_ms bigint"
)


def valid_events(parsed: DataFrame) -> DataFrame:
    """Rows of `parse_events` output that passed every rule: event columns plus Kafka columns."""
    kept = [*SPARK_EVENT_COLUMNS, *[c for c in KAFKA_COLUMNS if c in parsed.columns]]
    return parsed.where(F.col(QUARANTINE_REASON_COLUMN).isNull()).select(*kept)


def quarantined(parsed: DataFrame, value_col: str = "value") -> DataFrame:
    """Rows of `parse_events` output that broke a rule: raw payload, reason and Kafka columns."""
    return parsed.where(F.col(QUARANTINE_REASON_COLUMN).isNotNull()).select(
        F.col(value_col).alias("payload"),
        F.col(QUARANTINE_REASON_COLUMN).alias("reason"),
        *[c for c in KAFKA_COLUMNS if c in parsed.columns],
    )


def deduplicate(events: DataFrame, by: Sequence[str] = ()) -> DataFrame:
    """Batch form: one row per event_id, the earliest by (event_time, partition, offset).
    `by` names columns that scope it (the batch layer deduplicates each `dt` on its own).

    The Kafka position breaks ties between copies with the same time, so the choice is
    deterministic across reruns. A hash aggregate (min_by) instead of a ranking window: no sort
    of the whole day. (The speed layer deduplicates in streaming form; see `lambda_arch.speed.layer`.)
    """
    order = [F.col("event_time")]
    order += [F.col(c) for c in ("partition", "offset") if c in events.columns]
    picked = "__dedup_row"
    return (
        events.groupBy(*by, "event_id")
        .agg(F.min_by(F.struct(*events.columns), F.struct(*order)).alias(picked))
        .select(f"{picked}.*")
    )


def count_deltas(events: DataFrame, view: CountView) -> DataFrame:
    """A count view's plays per (1-minute event-time bucket, dimensions): its `columns`.

    Over a day of history this is the batch layer's partition; over one deduplicated
    micro-batch it is that batch's speed deltas (the sum over batches is the view)."""
    types = view.event_types
    counted = (
        F.col("event_type") == types[0] if len(types) == 1 else F.col("event_type").isin(*types)
    )
    return (
        events.where(counted)
        .withColumn("minute", F.date_trunc("minute", F.col("event_time")))
        .groupBy("minute", *view.dimensions)
        .agg(F.count(F.lit(1)).cast("bigint").alias("plays"))
        .select(*view.columns)
    )


def trending_counts(events: DataFrame) -> DataFrame:
    """Plays per (1-minute event-time bucket, country, title): minute, country, title_id, plays."""
    return count_deltas(events, TRENDING)


def discovery_counts(events: DataFrame) -> DataFrame:
    """Plays per (minute, country, discovery_source): minute, country, discovery_source, plays."""
    return count_deltas(events, DISCOVERY)


def stitch_sessions(events: DataFrame, by: Sequence[str] = ()) -> DataFrame:
    """Sessions per (member_id, title_id): a gap of 30 minutes or more starts a new one.
    `by` names more columns that scope the sessions; they lead the output columns.

    session_start and session_end are the first and last event times (not Spark's window end,
    which is the last event plus the gap); watched_ms = max - min position, 0 without positions.
    Works on a batch DataFrame and, in append mode after a watermark, on a streaming one (then
    only closed sessions are emitted).
    """
    positions = F.max("position_ms") - F.min("position_ms")
    return (
        events.groupBy(
            *by,
            "member_id",
            "title_id",
            F.session_window("event_time", SPARK_SESSION_GAP).alias("w"),
        )
        .agg(
            F.max("event_time").alias("session_end"),
            F.count(F.lit(1)).cast("bigint").alias("events"),
            F.coalesce(positions, F.lit(0)).cast("bigint").alias("watched_ms"),
        )
        .select(
            *by,
            "member_id",
            "title_id",
            # A session window starts at its first event: the same value as min(event_time).
            F.col("w.start").alias("session_start"),
            "session_end",
            "events",
            "watched_ms",
        )
    )
