"""Dagster run tags shared by the Dagster layer and the stack's dagster.yaml (plain strings: the
core imports no Dagster)."""

from __future__ import annotations

# Runs tagged with this key share max_spark_runs slots per tag value: each starts a Spark driver
# (JVM), and dagster.yaml limits each value apart so one layer never holds another back.
SPARK_RUN_TAG = "lambda_arch/spark"
# The values: availableNow speed runs, batch runs, and continuous views (a stream runs for
# minutes and must not hold the availableNow speed runs back).
SPARK_SPEED = "speed"
SPARK_BATCH = "batch"
SPARK_STREAM = "stream"
# The next continuous views run starts while the running one ends (sensors/stream.py): the two
# alternate between these values, so the successor is not queued behind its predecessor.
SPARK_STREAM_NEXT = "stream-next"
