"""One runner for every `trigger(availableNow=True)` query: lock, start, watch, report.

`run_available_now` drains what a source holds when the run starts, in bounded micro-batches,
and returns a `StreamReport` built from the progress of every micro-batch. An exclusive file
lock per checkpoint keeps two processes (a sensor-triggered run and a manual one, say) from
running the same checkpoint at once: Spark would fail one of them half-way with a confusing
error, or worse, two drivers would race on the offset log.

No Dagster here: `StreamReport.metadata()` is a flat dict that the Dagster layer passes on.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lambda_arch.common.locks import LockBusyError, file_lock, lock_path
from lambda_arch.common.times import EPOCH, format_time, parse_optional_time
from lambda_arch.ingest.incarnations import IncarnationLoss
from lambda_arch.ingest.kafka_offsets import Gap, KafkaDataLossError
from lambda_arch.ingest.source_offsets import TOPIC_ID_KEY, checkpoint_offsets

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.streaming import DataStreamWriter, StreamingQuery

# recentProgress keeps the last 100 entries by default; a long catch-up has more batches than
# that, so the runner polls and merges by batch id, and asks for a longer buffer as well.
PROGRESS_RETENTION_CONF = "spark.sql.streaming.numRecentProgressUpdates"
PROGRESS_RETENTION = "1000"
_POLL_S = 0.25
# A continuous query still busy this long after its time is stopped mid-batch.
_STOP_GRACE_S = 60.0
# Session confs are read when a query starts (Spark clones the session then): setting them,
# starting and restoring happen under one lock so concurrent starts do not see each other's.
_START_LOCK = threading.Lock()


class CheckpointBusyError(RuntimeError):
    """Another run holds the checkpoint's lock and did not release it in time."""


class StreamFailedError(RuntimeError):
    """A streaming query failed; the message is one line naming the query and the cause."""


class StreamDataLossError(StreamFailedError, KafkaDataLossError):
    """The query failed on Kafka data loss (the message names topic, partition and offsets)."""


class StreamTimeoutError(StreamFailedError):
    """The query did not finish within the time limit and was stopped."""


# Locking ------------------------------------------------------------------------------------


@contextmanager
def checkpoint_lock(lock_dir: Path, checkpoint: str, *, timeout_s: float) -> Iterator[Path]:
    """Hold the checkpoint's exclusive lock (lambda_arch.common.locks, the batch layer's
    mechanism too); wait up to timeout_s, then CheckpointBusyError."""
    path = lock_path(lock_dir, checkpoint)
    try:
        with file_lock(path, timeout_s=timeout_s):
            yield path
    except LockBusyError as busy:
        raise CheckpointBusyError(
            f"checkpoint {checkpoint} is in use by another run ({busy.holder}); waited "
            f"{timeout_s:g} s for its lock {path}"
        ) from None


# Report -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchProgress:
    """What one executed micro-batch did (from its StreamingQueryProgress)."""

    batch_id: int
    input_rows: int
    start_offsets: dict[int, int] | None  # None: the query's first batch
    end_offsets: dict[int, int] | None
    watermark: datetime | None  # the watermark this batch applied (None: none yet)
    max_event_time: datetime | None  # latest event time in this batch (None: no rows)
    late_events: int  # rows the stateful operators dropped as older than the watermark
    duration_ms: int


@dataclass(frozen=True)
class StreamReport:
    """The outcome of one availableNow run, summed over all its micro-batches."""

    name: str
    checkpoint: str
    micro_batches: int
    events_read: int
    start_offsets: dict[int, int]  # per Kafka partition where the run started
    offsets: dict[int, int]  # per Kafka partition where the run ended (next offset to read)
    duration_s: float
    events_per_s: float
    max_event_time: datetime | None  # latest event time read by this run
    watermark: datetime | None  # the watermark of the run's last micro-batch
    late_events: int
    observed: dict[str, float]  # `df.observe` metrics summed over batches, as "name.field"
    batches: tuple[BatchProgress, ...] = field(default=(), repr=False)
    # Offsets the run resumed from that the broker no longer held (only with failOnDataLoss=false).
    data_loss: tuple[Gap, ...] = ()
    # True: another run held the checkpoint and had already committed every record this run
    # was asked for (a continuous query, say), so this one read nothing itself.
    caught_up_by_holder: bool = False
    # The topic was a new incarnation when the run started: what the old one took with it.
    incarnation_loss: IncarnationLoss | None = None

    def metadata(self) -> dict[str, int | float | str]:
        """Flat plain values for Dagster metadata (timestamps as ISO text, offsets as JSON)."""
        result: dict[str, int | float | str] = {
            "query": self.name,
            "micro_batches": self.micro_batches,
            "events_read": self.events_read,
            "late_events": self.late_events,
            "duration_s": round(self.duration_s, 3),
            "events_per_s": round(self.events_per_s, 1),
            "offsets": json.dumps({str(p): o for p, o in sorted(self.offsets.items())}),
            "start_offsets": json.dumps({str(p): o for p, o in sorted(self.start_offsets.items())}),
            "offset_total": sum(self.offsets.values()),
        }
        if self.max_event_time is not None:
            result["max_event_time"] = format_time(self.max_event_time)
        if self.watermark is not None:
            result["watermark"] = format_time(self.watermark)
        if self.caught_up_by_holder:
            result["caught_up_by"] = "the run holding the checkpoint (e.g. views_stream_job)"
        if self.data_loss:
            result["data_loss_partitions"] = len(self.data_loss)
            result["data_loss"] = json.dumps(
                [
                    {"partition": g.partition, "kind": g.kind, "checkpoint": g.checkpoint}
                    | {"earliest": g.earliest, "end": g.end}
                    for g in self.data_loss
                ]
            )
        if self.incarnation_loss is not None:
            result.update(self.incarnation_loss.metadata())
        for key, value in sorted(self.observed.items()):
            result[f"observed.{key}"] = int(value) if float(value).is_integer() else value
        return result


def _parse_time(text: Any) -> datetime | None:
    moment = parse_optional_time(text, assume_utc=True)
    # Spark reports watermark 0 (the epoch) until a first batch has set one.
    return None if moment == EPOCH else moment


def _offsets(value: Any) -> dict[int, int] | None:
    """A source offset from progress JSON as {partition: offset}; None if not that shape."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if not isinstance(value, dict):
        return None
    # The source keeps its topic id next to the partitions' offsets (source_offsets).
    partitions = {k: v for k, v in value.items() if str(k).lstrip("-").isdigit()}
    if len(partitions) < len(value) - (TOPIC_ID_KEY in value):
        return None
    return {int(k): int(v) for k, v in partitions.items()}


def _progress_dict(progress: Any) -> dict[str, Any]:
    # StreamingQueryProgress is also a dict in pyspark 4, but one holding Row objects (e.g. for
    # observed metrics): its JSON form is plain values all the way down.
    text = getattr(progress, "json", None)
    if isinstance(text, str):
        return json.loads(text)
    return dict(progress)


def _executed(progress: dict[str, Any]) -> bool:
    # Idle progress (no batch ran) carries no addBatch timing.
    return "addBatch" in (progress.get("durationMs") or {})


def _batch(progress: dict[str, Any]) -> BatchProgress:
    sources = progress.get("sources") or [{}]
    event_time = progress.get("eventTime") or {}
    return BatchProgress(
        batch_id=int(progress["batchId"]),
        input_rows=_input_rows(progress),
        start_offsets=_offsets(sources[0].get("startOffset")),
        end_offsets=_offsets(sources[0].get("endOffset")),
        watermark=_parse_time(event_time.get("watermark")),
        max_event_time=_parse_time(event_time.get("max")),
        late_events=sum(
            int(op.get("numRowsDroppedByWatermark") or 0)
            for op in progress.get("stateOperators") or []
        ),
        duration_ms=int((progress.get("durationMs") or {}).get("triggerExecution") or 0),
    )


def _input_rows(progress: dict[str, Any]) -> int:
    # Spark Connect's progress JSON has numInputRows per source only.
    if "numInputRows" in progress:
        return int(progress["numInputRows"] or 0)
    return sum(int(s.get("numInputRows") or 0) for s in progress.get("sources") or [])


def _metric_row(row: Any) -> dict[str, Any]:
    """An observed-metrics row from progress JSON: {"field": value}, in either of its forms."""
    if not isinstance(row, dict):
        return {}
    # Spark Connect: {"values": [...], "schema": {"fields": [{"name": ...}, ...]}}.
    if set(row) == {"values", "schema"} and isinstance(row["values"], list):
        names = [f.get("name") for f in (row["schema"] or {}).get("fields") or []]
        return dict(zip(names, row["values"], strict=False))
    return row


def _observed(progresses: list[dict[str, Any]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for progress in progresses:
        for name, row in (progress.get("observedMetrics") or {}).items():
            for key, value in _metric_row(row).items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    totals[f"{name}.{key}"] = totals.get(f"{name}.{key}", 0) + value
    return totals


class _ProgressLog:
    """Every executed batch's progress, merged by batch id from repeated recentProgress polls."""

    def __init__(self) -> None:
        self.by_batch: dict[int, dict[str, Any]] = {}

    def update(self, query: StreamingQuery) -> list[dict[str, Any]]:
        """Merge the query's recent progress; returns the batches not seen before, in order."""
        new: list[dict[str, Any]] = []
        for raw in query.recentProgress:
            progress = _progress_dict(raw)
            if not _executed(progress):
                continue
            batch_id = int(progress["batchId"])
            if batch_id not in self.by_batch:
                new.append(progress)
            self.by_batch[batch_id] = progress
        return sorted(new, key=lambda p: int(p["batchId"]))

    def ordered(self) -> list[dict[str, Any]]:
        return [self.by_batch[b] for b in sorted(self.by_batch)]


def _report(
    name: str, checkpoint: str, progresses: list[dict[str, Any]], duration_s: float
) -> StreamReport:
    batches = tuple(_batch(p) for p in progresses)
    starts = [b.start_offsets for b in batches]
    ends = [b.end_offsets for b in batches if b.end_offsets is not None]
    if batches:
        start = starts[0] or {}
        end = ends[-1] if ends else {}
    else:
        # Nothing ran: the run starts and ends where the last committed batch ended.
        start = end = committed_offsets(checkpoint) or {}
    events = sum(b.input_rows for b in batches)
    max_times = [b.max_event_time for b in batches if b.max_event_time is not None]
    return StreamReport(
        name=name,
        checkpoint=checkpoint,
        micro_batches=len(batches),
        events_read=events,
        start_offsets=start,
        offsets=end,
        duration_s=duration_s,
        events_per_s=events / duration_s if duration_s > 0 else 0.0,
        max_event_time=max(max_times) if max_times else None,
        watermark=batches[-1].watermark if batches else None,
        late_events=sum(b.late_events for b in batches),
        observed=_observed(progresses),
        batches=batches,
    )


def committed_offsets(checkpoint: str) -> dict[int, int] | None:
    """Where the query of a (local) checkpoint resumes, per Kafka partition; None if unknown."""
    if "://" in checkpoint and not checkpoint.startswith("file:"):
        return None
    try:
        offsets = checkpoint_offsets(checkpoint)
    except (OSError, IndexError, ValueError):
        return None  # not a Kafka-offset checkpoint (another source): no offsets to report
    # Another source's offsets decode to no Kafka partition at all (keys like topicId skipped).
    return offsets or None


# Failures -----------------------------------------------------------------------------------

# A Python exception line inside Spark's message: "module.Name: text" (Java frames and the
# wrappers around a Python traceback are filtered out below).
_PY_EXCEPTION = re.compile(
    r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)): (.+?)\s*$", re.MULTILINE
)
_WRAPPERS = ("org.", "java.", "scala.", "py4j.", "pyspark.errors.", "pyspark.sql.")
_SQLSTATE = re.compile(r"\s*SQLSTATE: \w+")
_STREAM_FAILED = re.compile(r"^\[STREAM_FAILED\] Query \[[^\]]*\] terminated with exception: ")


def failure_message(error: BaseException) -> tuple[str, bool]:
    """(one line describing a query failure, whether it is Kafka data loss)."""
    text = str(error)
    for match in _PY_EXCEPTION.finditer(text):
        kind, message = match.group(1), _SQLSTATE.sub("", match.group(2)).strip()
        if kind.startswith(_WRAPPERS) or message.startswith("Traceback") or not message:
            continue
        short = kind.rsplit(".", 1)[-1]
        return f"{short}: {message}", short == KafkaDataLossError.__name__
    first = _STREAM_FAILED.sub("", _SQLSTATE.sub("", text.strip().splitlines()[0] if text else ""))
    return first or type(error).__name__, False


def _raise_failure(name: str, error: BaseException) -> None:
    line, data_loss = failure_message(error)
    message = f"streaming query {name!r} failed: {line}"
    if data_loss:
        raise StreamDataLossError(message) from None
    raise StreamFailedError(message) from None


# Runner -------------------------------------------------------------------------------------


def _start(
    writer: DataStreamWriter,
    spark: SparkSession | None,
    session_conf: Mapping[str, str],
) -> StreamingQuery:
    if spark is None:
        return writer.start()
    conf = {PROGRESS_RETENTION_CONF: PROGRESS_RETENTION, **session_conf}
    with _START_LOCK:
        previous = {key: spark.conf.get(key, None) for key in conf}
        for key, value in conf.items():
            spark.conf.set(key, value)
        try:
            return writer.start()
        finally:
            for key, value in previous.items():
                if value is None:
                    spark.conf.unset(key)
                else:
                    spark.conf.set(key, value)


def run_available_now(
    name: str,
    writer: DataStreamWriter,
    checkpoint: str,
    *,
    lock_dir: Path,
    timeout_s: float | None = None,
    lock_timeout_s: float = 300.0,
    spark: SparkSession | None = None,
    session_conf: Mapping[str, str] | None = None,
    before_start: Callable[[], None] | None = None,
) -> StreamReport:
    """Run `writer` once with trigger(availableNow=True) on `checkpoint` and report every batch.

    - Holds the checkpoint's lock in `lock_dir` for the whole run (waits up to lock_timeout_s,
      then CheckpointBusyError).
    - `timeout_s` bounds the run itself: the query is stopped and StreamTimeoutError raised
      (batches committed so far stay committed; the next run resumes after them).
    - `session_conf` is applied to `spark` just for this query's start (Spark reads them then).
    - A query failure becomes StreamFailedError (StreamDataLossError for Kafka data loss) with
      a one-line message.
    - `before_start` runs under the lock just before the query starts (e.g. to prepare its
      output for what the checkpoint has committed).
    """
    return _run_query(
        name,
        writer.trigger(availableNow=True),
        checkpoint,
        lock_dir=lock_dir,
        timeout_s=timeout_s,
        lock_timeout_s=lock_timeout_s,
        spark=spark,
        session_conf=session_conf,
        before_start=before_start,
    )


def run_stream(
    name: str,
    writer: DataStreamWriter,
    checkpoint: str,
    *,
    lock_dir: Path,
    stream_s: float,
    trigger_s: float,
    on_batch: Callable[[StreamReport], None] | None = None,
    stop_early: Callable[[], bool] | None = None,
    lock_timeout_s: float = 300.0,
    spark: SparkSession | None = None,
    session_conf: Mapping[str, str] | None = None,
    before_start: Callable[[], None] | None = None,
) -> StreamReport:
    """Run `writer` as a continuous query (a micro-batch every `trigger_s` seconds when there is
    data) for about `stream_s` seconds, or until `stop_early()` is true, then stop it between
    two micro-batches.

    No run start per micro-batch: freshness is the trigger interval plus one small batch.
    `on_batch` gets a one-batch report as soon as each micro-batch has committed (the caller
    publishes it: state file, serving refresh). Locking, session conf and failures as in
    `run_available_now`; the returned report sums every batch of the run.
    """
    return _run_query(
        name,
        writer.trigger(processingTime=f"{int(trigger_s * 1000)} milliseconds"),
        checkpoint,
        lock_dir=lock_dir,
        lock_timeout_s=lock_timeout_s,
        spark=spark,
        session_conf=session_conf,
        stream_s=stream_s,
        on_batch=on_batch,
        stop_early=stop_early,
        before_start=before_start,
    )


def _run_query(
    name: str,
    triggered: DataStreamWriter,
    checkpoint: str,
    *,
    lock_dir: Path,
    lock_timeout_s: float,
    spark: SparkSession | None,
    session_conf: Mapping[str, str] | None,
    timeout_s: float | None = None,
    stream_s: float | None = None,
    on_batch: Callable[[StreamReport], None] | None = None,
    stop_early: Callable[[], bool] | None = None,
    before_start: Callable[[], None] | None = None,
) -> StreamReport:
    if session_conf and spark is None:
        raise ValueError("session_conf needs the SparkSession (spark=...)")
    with checkpoint_lock(lock_dir, checkpoint, timeout_s=lock_timeout_s):
        if before_start is not None:
            before_start()
        started = time.monotonic()
        configured = triggered.queryName(name).option("checkpointLocation", checkpoint)
        try:
            query = _start(configured, spark, session_conf or {})
        except Exception as error:  # analysis errors, unsupported operations
            _raise_failure(name, error)
        log = _ProgressLog()

        def publish() -> int:
            new = log.update(query)
            for progress in new:
                if on_batch is not None:
                    on_batch(_report(name, checkpoint, [progress], _duration_s(progress)))
            return len(new)

        try:
            while query.isActive:
                finished = publish()
                elapsed = time.monotonic() - started
                if timeout_s is not None and elapsed > timeout_s:
                    query.stop()
                    raise StreamTimeoutError(
                        f"streaming query {name!r} did not finish within {timeout_s:g} s and "
                        "was stopped"
                    )
                # Stop between micro-batches: one stopped half-way is redone by the next run
                # (idempotent per batch id), but that costs its time twice.
                if stop_early is not None and stream_s is not None and stop_early():
                    stream_s = min(stream_s, elapsed)
                if _time_to_stop(query, stream_s, elapsed, finished > 0):
                    query.stop()
                    break
                query.awaitTermination(_POLL_S)
            query.awaitTermination()  # raises the query's failure, if any
            publish()
        except StreamTimeoutError:
            raise
        except Exception as error:
            _raise_failure(name, error)
        finally:
            if query.isActive:  # a failure of on_batch: the query must not outlive the run
                query.stop()
        return _report(name, checkpoint, log.ordered(), time.monotonic() - started)


def _time_to_stop(
    query: StreamingQuery, stream_s: float | None, elapsed: float, batch_just_ended: bool
) -> bool:
    """Whether a continuous query has had its time and is between micro-batches: idle, or a
    micro-batch has just ended (when batches run back to back, the next one has only just
    started and little is lost; the query is never idle then)."""
    if stream_s is None or elapsed < stream_s:
        return False
    if batch_just_ended or elapsed >= stream_s + _STOP_GRACE_S:
        return True
    return not query.status.get("isTriggerActive")


def _duration_s(progress: dict[str, Any]) -> float:
    return int((progress.get("durationMs") or {}).get("triggerExecution") or 0) / 1000
