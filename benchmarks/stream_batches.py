"""Micro-batches of a continuous view at steady traffic: where a micro-batch's time goes.

Starts an embedded broker, a `lambda-arch produce --rate R` process (generated traffic, event
clock = wall clock) and one SparkSession in this process, then runs the counts query (every
count view) as a continuous query (`lambda_arch.speed.layer.stream_view`, a micro-batch every --trigger-s seconds) for
--seconds. A StreamingQueryListener records every micro-batch's progress; printed are medians
and p95 of its phases (Spark's durationMs: latestOffset = asking the broker for end offsets,
queryPlanning, addBatch = read + parse + dedup state + the foreachBatch write, walCommit and
commitOffsets = checkpoint logs, triggerExecution = the whole micro-batch), rows per batch, and
as the baseline the same query run availableNow once over everything the stream read (fresh
checkpoint): the micro-batch's fixed cost shows as the ratio of their per-event costs.

    .venv/bin/python benchmarks/stream_batches.py [--rate 2000] [--seconds 60] [--trigger-s 2]
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lambda_arch.common.config import Settings
from lambda_arch.ingest.producer import ensure_topic
from lambda_arch.runtime.broker import EmbeddedBroker, free_port
from lambda_arch.runtime.processes import isolated_env, spawn

ROOT = Path(__file__).resolve().parents[1]
TOPIC = "bench-stream-events"
PHASES = (
    "latestOffset",
    "queryPlanning",
    "addBatch",
    "walCommit",
    "commitOffsets",
    "triggerExecution",
)


def settings_for(home: Path, bootstrap: str, trigger_s: float) -> Settings:
    return Settings(
        LAMBDA_ARCH_HOME=str(home),
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        LAMBDA_ARCH_TOPIC=TOPIC,
        LAMBDA_ARCH_WAREHOUSE=str(home / "warehouse"),
        LAMBDA_ARCH_SPEED_TRIGGER_S=trigger_s,
    )


def _stats(values: list[float], unit: str = "ms") -> str:
    if not values:
        return "n/a"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"median {statistics.median(ordered):8,.0f} {unit}  p95 {p95:8,.0f} {unit}"


def compilations(spark: Any) -> int:
    """Classes Spark's code generator has compiled in this JVM so far (Janino, then the JIT):
    a micro-batch that reuses the generated code of the one before compiles none."""
    metrics = spark.sparkContext._jvm.org.apache.spark.metrics.source.CodegenMetrics
    return int(metrics.METRIC_COMPILATION_TIME().getCount())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2000.0, help="events/s produced")
    parser.add_argument("--seconds", type=float, default=60.0, help="s of continuous query")
    parser.add_argument("--trigger-s", type=float, default=2.0, help="s between micro-batches")
    parser.add_argument("--partitions", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault(
        "PYSPARK_SUBMIT_ARGS", "--conf spark.ui.showConsoleProgress=false pyspark-shell"
    )
    from pyspark.sql.streaming import StreamingQueryListener

    from lambda_arch.runtime.spark import build_session
    from lambda_arch.speed.layer import COUNTS, run_trending_speed, stream_view

    base = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    broker = EmbeddedBroker(free_port(), log_path=base / "broker.log")
    broker.start()
    producer = None
    try:
        bootstrap = broker.bootstrap_servers
        ensure_topic(bootstrap, TOPIC, args.partitions)
        settings = settings_for(base / "stream", bootstrap, args.trigger_s)
        spark = build_session(settings, app_name="bench-stream-batches")
        spark.sparkContext.setLogLevel("ERROR")
        progresses: list[dict[str, Any]] = []

        class Recorder(StreamingQueryListener):
            def onQueryStarted(self, event: Any) -> None:
                pass

            def onQueryProgress(self, event: Any) -> None:
                progress = event.progress
                if progress.numInputRows > 0:
                    progresses.append(
                        {
                            "rows": progress.numInputRows,
                            "compiled": compilations(spark),
                            **dict(progress.durationMs),
                        }
                    )

            def onQueryIdle(self, event: Any) -> None:
                pass

            def onQueryTerminated(self, event: Any) -> None:
                pass

        recorder = Recorder()
        spark.streams.addListener(recorder)
        env = isolated_env(
            {
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "LAMBDA_ARCH_TOPIC": TOPIC,
                "LAMBDA_ARCH_HOME": str(base / "producer"),
            }
        )
        command = [sys.executable, "-m", "lambda_arch.cli", "produce", "--rate"]
        command += [f"{args.rate:g}", "--events", "0", "--quiet"]
        producer = spawn(command, env=env, cwd=ROOT)
        load_before = os.getloadavg()[0]
        report = stream_view(spark, settings, COUNTS, stream_s=args.seconds)
        spark.streams.removeListener(recorder)  # the baseline's progress is not the stream's
        load_after = os.getloadavg()[0]
        producer.terminate()
        producer.wait(30)
        producer = None

        # Baseline: the same query availableNow over what the stream read, fresh checkpoint.
        baseline_settings = settings_for(base / "baseline", bootstrap, args.trigger_s)
        started = time.perf_counter()
        baseline = run_trending_speed(spark, baseline_settings)
        baseline_s = time.perf_counter() - started
        spark.stop()
    finally:
        if producer is not None:
            producer.terminate()
            producer.wait(30)
        broker.stop()
        shutil.rmtree(base, ignore_errors=True)

    batches = progresses
    rows = [p["rows"] for p in batches]
    print(
        f"cores (os.cpu_count): {os.cpu_count()}  rate {args.rate:g} events/s  trigger "
        f"{args.trigger_s:g} s  {args.seconds:g} s  load {load_before:.1f} -> {load_after:.1f}"
    )
    print(
        f"continuous: {report.micro_batches} micro-batches with data, {report.events_read:,} "
        f"events; rows per batch {_stats([float(r) for r in rows], 'rows')}"
    )
    for phase in PHASES:
        print(f"  {phase:<17}{_stats([float(p.get(phase, 0)) for p in batches])}")
    # Warm: the second half of the micro-batches (the first ones compile every stage anew).
    warm = batches[len(batches) // 2 :]
    compiled = [float(b["compiled"] - a["compiled"]) for a, b in itertools.pairwise(warm)]
    print(f"  {'classes compiled':<17}{_stats(compiled, 'per micro-batch')} (warm half)")
    per_event_stream = [p["triggerExecution"] / p["rows"] for p in batches if p["rows"]]
    per_event_base = baseline_s * 1000 / max(baseline.events_read, 1)
    median_stream = statistics.median(per_event_stream) if per_event_stream else 0.0
    print(
        f"baseline availableNow over the same {baseline.events_read:,} events: {baseline_s:.1f} s "
        f"in {baseline.micro_batches} micro-batch(es), {per_event_base * 1000:.1f} us/event"
    )
    print(
        f"cost per event, continuous micro-batch / availableNow catch-up: "
        f"{median_stream * 1000:.1f} us / {per_event_base * 1000:.1f} us = "
        f"{median_stream / per_event_base:.1f}x (a micro-batch's fixed cost over few events)"
    )


if __name__ == "__main__":
    main()
