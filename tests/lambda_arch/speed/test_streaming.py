"""The availableNow runner (and its lock and report) on a real broker and Spark.

The speed queries built on it are tested in test_layer; here the runner itself: the checkpoint
lock (threads and processes), the report of every micro-batch, session confs for one start,
failures as one line, and what a run that finds nothing to read reports.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lambda_arch.ingest.kafka_offsets import Gap, KafkaDataLossError, end_offsets
from lambda_arch.ingest.kafka_options import source_options
from lambda_arch.ingest.kafka_source import SOURCE_NAME, register_kafka_source
from lambda_arch.ingest.source_offsets import checkpoint_offsets
from lambda_arch.runtime.broker import EmbeddedBroker
from lambda_arch.runtime.processes import spawn, stop_process
from lambda_arch.speed.lag import partition_lag
from lambda_arch.speed.streaming import (
    CheckpointBusyError,
    StreamDataLossError,
    StreamFailedError,
    StreamReport,
    StreamTimeoutError,
    checkpoint_lock,
    committed_offsets,
    failure_message,
    lock_path,
    run_available_now,
)
from tests.lambda_arch.speed.test_layer import KafkaTopic, new_topic

REPO = Path(__file__).resolve().parents[3]


def ignore_batch(batch_df, batch_id: int) -> None:
    """foreachBatch that only makes Spark read the batch."""
    batch_df.count()


def raw_writer(spark, kafka: KafkaTopic, **options):
    register_kafka_source(spark)
    return (
        spark.readStream.format(SOURCE_NAME)
        .options(**source_options(kafka.bootstrap, kafka.name, **options))
        .load()
        .writeStream.foreachBatch(ignore_batch)
    )


def test_runner_lock_makes_a_second_run_wait_or_give_up(
    spark, broker: EmbeddedBroker, topic: str, tmp_path: Path
) -> None:
    kafka = new_topic(broker, topic, partitions=1)
    kafka.send([(b"1", b"x")] * 5)
    checkpoint, locks = str(tmp_path / "checkpoint"), tmp_path / "locks"

    results: list[StreamReport | BaseException] = []

    def run(lock_timeout_s: float) -> None:
        try:
            results.append(
                run_available_now(
                    "raw",
                    raw_writer(spark, kafka),
                    checkpoint,
                    lock_dir=locks,
                    lock_timeout_s=lock_timeout_s,
                )
            )
        except BaseException as error:
            results.append(error)

    with checkpoint_lock(locks, checkpoint, timeout_s=0):
        started = time.monotonic()
        thread = threading.Thread(target=run, args=(0.5,))
        thread.start()
        thread.join(30)
        assert isinstance(results[-1], CheckpointBusyError)
        assert checkpoint in str(results[-1]) and time.monotonic() - started >= 0.5

        waiting = threading.Thread(target=run, args=(60,))
        waiting.start()
        time.sleep(1.5)
        assert waiting.is_alive() and not Path(checkpoint).exists()  # waiting, not running
    waiting.join(120)
    report = results[-1]
    assert isinstance(report, StreamReport) and report.events_read == 5, report


def test_runner_failures_are_one_line(
    spark, broker: EmbeddedBroker, topic: str, tmp_path: Path
) -> None:
    kafka = new_topic(broker, topic, partitions=1)
    # A resume offset beyond the end of the partition is data loss (a reset broker).
    writer = raw_writer(spark, kafka, startingOffsets={0: 50})
    with pytest.raises(StreamDataLossError) as failure:
        run_available_now("lossy", writer, str(tmp_path / "c1"), lock_dir=tmp_path / "locks")
    message = str(failure.value)
    assert isinstance(failure.value, KafkaDataLossError)
    assert "\n" not in message, message
    for text in ("'lossy'", f"topic '{kafka.name}' partition 0", "offset 50", "failOnDataLoss"):
        assert text in message, message

    kafka.send([(b"1", b"x")] * 3)
    with pytest.raises(StreamTimeoutError, match="did not finish within"):
        run_available_now(
            "slow",
            raw_writer(spark, kafka),
            str(tmp_path / "c2"),
            lock_dir=tmp_path / "locks",
            timeout_s=0.01,
        )
    assert not [q for q in spark.streams.active if q.name == "slow"]


def test_lag_and_metadata_of_an_empty_report() -> None:
    assert partition_lag({0: 10, 1: 5, 2: 7}, {}, {0: 4, 1: 5}) == {0: 6, 1: 0, 2: 7}
    report = StreamReport(
        name="q",
        checkpoint="/c",
        micro_batches=0,
        events_read=0,
        start_offsets={},
        offsets={0: 3},
        duration_s=0.5,
        events_per_s=0.0,
        max_event_time=None,
        watermark=datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
        late_events=0,
        observed={"input.records": 2.0},
    )
    assert report.metadata() == {
        "query": "q",
        "micro_batches": 0,
        "events_read": 0,
        "late_events": 0,
        "duration_s": 0.5,
        "events_per_s": 0.0,
        "offsets": '{"0": 3}',
        "start_offsets": "{}",
        "offset_total": 3,
        "watermark": "2026-03-01T12:00:00.000Z",
        "observed.input.records": 2,
    }


def test_lock_path_is_per_checkpoint_location(tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    one = lock_path(locks, str(tmp_path / "a" / "trending_speed"))
    assert one.parent == locks and one.name.startswith("trending_speed-") and one.suffix == ".lock"
    assert lock_path(locks, str(tmp_path / "a" / "trending_speed") + "/") == one
    assert lock_path(locks, str(tmp_path / "b" / "trending_speed")) != one  # same last part
    relative = os.path.relpath(tmp_path / "a" / "trending_speed")
    assert lock_path(locks, relative) == one  # local paths are made absolute
    remote = lock_path(locks, "s3a://bucket/speed/checkpoints/landing query")
    assert remote.name.startswith("landing_query-")  # unsafe characters replaced
    assert lock_path(locks, "s3a://other/speed/checkpoints/landing query") != remote


def test_checkpoint_lock_excludes_threads_and_records_its_holder(tmp_path: Path) -> None:
    locks, checkpoint = tmp_path / "locks", str(tmp_path / "checkpoint")
    with checkpoint_lock(locks, checkpoint, timeout_s=0) as path:
        assert path.read_text().startswith(f"pid {os.getpid()} thread ")
        failures: list[BaseException] = []

        def second() -> None:
            try:
                with checkpoint_lock(locks, checkpoint, timeout_s=0.3):
                    pass
            except CheckpointBusyError as error:
                failures.append(error)

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(10)
        assert len(failures) == 1
        assert f"(pid {os.getpid()} thread" in str(failures[0]) and str(path) in str(failures[0])
    with checkpoint_lock(locks, checkpoint, timeout_s=0):  # released on exit
        pass


def test_a_dead_holders_lock_is_released_by_the_os(tmp_path: Path) -> None:
    locks, checkpoint = tmp_path / "locks", str(tmp_path / "checkpoint")
    ready = tmp_path / "ready"
    code = (
        "import pathlib, time\n"
        "from lambda_arch.speed.streaming import checkpoint_lock\n"
        f"with checkpoint_lock(pathlib.Path({str(locks)!r}), {checkpoint!r}, timeout_s=5):\n"
        f"    pathlib.Path({str(ready)!r}).write_text('held')\n"
        "    time.sleep(60)\n"
    )
    holder = spawn([sys.executable, "-c", code], cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        busy = f"in use by another run \\(pid {holder.pid} "
        with (
            pytest.raises(CheckpointBusyError, match=busy),
            checkpoint_lock(locks, checkpoint, timeout_s=0.2),
        ):
            pass
    finally:
        stop_process(holder, timeout_s=5)  # SIGTERM: the with block never exits normally
    with checkpoint_lock(locks, checkpoint, timeout_s=0):
        pass


def test_a_run_reports_every_batch_applies_its_conf_and_a_rerun_reads_nothing(
    spark, broker: EmbeddedBroker, topic: str, tmp_path: Path
) -> None:
    from pyspark.sql import functions as F

    kafka = new_topic(broker, topic, partitions=2)
    kafka.send([(str(i).encode(), b"x" * (i % 7)) for i in range(25)])
    end = end_offsets(kafka.bootstrap, kafka.name)
    checkpoint, locks = str(tmp_path / "checkpoint"), tmp_path / "locks"
    register_kafka_source(spark)
    partitions_seen: list[str] = []

    def record_conf(batch_df, batch_id: int) -> None:
        partitions_seen.append(batch_df.sparkSession.conf.get("spark.sql.shuffle.partitions"))
        batch_df.count()

    def writer():
        stream = (
            spark.readStream.format(SOURCE_NAME)
            .options(**source_options(kafka.bootstrap, kafka.name, max_events_per_batch=10))
            .load()
            .observe("input", F.count(F.lit(1)).alias("records"), F.sum("offset").alias("sum"))
        )
        return stream.writeStream.foreachBatch(record_conf)

    before = spark.conf.get("spark.sql.shuffle.partitions")
    conf = {"spark.sql.shuffle.partitions": "3"}
    report = run_available_now("raw", writer(), checkpoint, lock_dir=locks, spark=spark,
                               session_conf=conf)  # fmt: skip
    assert spark.conf.get("spark.sql.shuffle.partitions") == before  # restored after the start
    assert set(partitions_seen) == {"3"} and len(partitions_seen) == report.micro_batches
    assert (report.name, report.checkpoint) == ("raw", checkpoint)
    assert report.events_read == 25 and report.offsets == end and report.start_offsets == {}
    assert [b.input_rows for b in report.batches] == [10, 10, 5]
    assert report.micro_batches == 3 and [b.batch_id for b in report.batches] == [0, 1, 2]
    assert report.batches[0].start_offsets is None  # the query's first batch
    assert report.batches[1].start_offsets == report.batches[0].end_offsets
    assert report.observed == {"input.records": 25, "input.sum": float(sum(
        sum(range(n)) for n in end.values()))}  # fmt: skip
    assert report.max_event_time is None and report.watermark is None  # no event time here
    assert report.events_per_s == pytest.approx(25 / report.duration_s)
    assert committed_offsets(checkpoint) == end == checkpoint_offsets(checkpoint)

    again = run_available_now("raw", writer(), checkpoint, lock_dir=locks)
    assert (again.micro_batches, again.events_read, again.batches) == (0, 0, ())
    assert again.start_offsets == again.offsets == end  # where the last commit ended
    assert partition_lag(end, {}, again.offsets) == dict.fromkeys(end, 0)


def test_session_conf_needs_the_session(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="session_conf needs the SparkSession"):
        run_available_now("q", _NoWriter(), str(tmp_path / "c"), lock_dir=tmp_path,
                          session_conf={"a": "b"})  # fmt: skip


class _NoWriter:
    """Stands in for a DataStreamWriter where the runner must fail before using it."""

    def trigger(self, **kwargs):
        return self


def test_committed_offsets_without_a_local_kafka_checkpoint(tmp_path: Path) -> None:
    assert committed_offsets(str(tmp_path / "never-ran")) is None
    assert committed_offsets("s3a://bucket/checkpoints/landing") is None  # not read remotely
    (tmp_path / "other" / "commits").mkdir(parents=True)
    (tmp_path / "other" / "commits" / "0").write_text("v1\n{}\n")
    (tmp_path / "other" / "offsets").mkdir()
    (tmp_path / "other" / "offsets" / "0").write_text('v1\n{}\n{"logOffset":0}\n')
    assert committed_offsets(str(tmp_path / "other")) is None  # another source's offsets


def test_failure_message_finds_the_python_cause() -> None:
    wrapped = (
        "[STREAM_FAILED] Query [id = 1, runId = 2] terminated with exception: "
        "Job aborted. SQLSTATE: XXKST\n"
        "org.apache.spark.SparkException: Job aborted.\n"
        "pyspark.errors.exceptions.base.PySparkRuntimeError: Traceback (most recent call last)\n"
        "lambda_arch.ingest.kafka_offsets.KafkaDataLossError: data loss on topic 't' partition 0"
        " SQLSTATE: 39000\n"
        "\tat org.apache.spark.Foo(Foo.scala:1)\n"
    )
    assert failure_message(RuntimeError(wrapped)) == (
        "KafkaDataLossError: data loss on topic 't' partition 0",
        True,
    )
    other = "boom\n  File x\nValueError: bad value\n"
    assert failure_message(RuntimeError(other)) == ("ValueError: bad value", False)
    plain = "[STREAM_FAILED] Query [id = 1] terminated with exception: disk full SQLSTATE: 1"
    assert failure_message(RuntimeError(plain)) == ("disk full", False)
    assert failure_message(KeyError()) == ("KeyError", False)
    assert issubclass(StreamDataLossError, StreamFailedError)
    assert issubclass(StreamTimeoutError, StreamFailedError)


def test_metadata_of_a_report_with_event_times_data_loss_and_a_holder() -> None:
    report = StreamReport(
        name="q",
        checkpoint="/c",
        micro_batches=2,
        events_read=30,
        start_offsets={1: 5, 0: 60},
        offsets={0: 15, 1: 15},
        duration_s=1.23456,
        events_per_s=24.29999,
        max_event_time=datetime(2026, 3, 1, 13, 0, 0, 123456, tzinfo=UTC),
        watermark=datetime(2026, 3, 1, 12, 50, tzinfo=UTC),
        late_events=4,
        observed={"input.bytes": 2.5},
        data_loss=(Gap("t", 0, 60, 0, 15),),
        caught_up_by_holder=True,
    )
    metadata = report.metadata()
    assert metadata["duration_s"] == 1.235 and metadata["events_per_s"] == 24.3
    assert metadata["start_offsets"] == '{"0": 60, "1": 5}'  # sorted by partition
    assert metadata["offset_total"] == 30 and metadata["late_events"] == 4
    assert metadata["max_event_time"] == "2026-03-01T13:00:00.123Z"
    assert metadata["watermark"] == "2026-03-01T12:50:00.000Z"
    assert metadata["observed.input.bytes"] == 2.5
    assert "views_stream_job" in str(metadata["caught_up_by"])
    assert metadata["data_loss_partitions"] == 1
    assert json.loads(str(metadata["data_loss"])) == [
        {"partition": 0, "kind": "reset", "checkpoint": 60, "earliest": 0, "end": 15}
    ]
