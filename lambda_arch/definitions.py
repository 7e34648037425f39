"""The one Dagster Definitions object of lambda-arch (code location `lambda_arch.definitions`).

The layers' definitions (defs/: speed, batch, serving, quality) merged, plus what they share: the
resources and the executor. Loading reads no setting that can fail: an invalid variable shows as
a clear error in the runs and sensor evaluations that need it (lambda_arch.common.config).
"""

from __future__ import annotations

from dagster import Definitions, in_process_executor

from defs import batch, quality, serving, speed
from resources import build_resources

defs = Definitions.merge(
    speed.defs,
    batch.defs,
    serving.defs,
    quality.defs,
    Definitions(
        resources=build_resources(),
        # Every job, the UI's and the CLI's ad-hoc asset jobs included, runs its steps in one
        # process: one Spark session (one JVM, or one Connect client) per run instead of one per
        # step. (Not views_stream_job: its two continuous queries run side by side, one process
        # each.)
        executor=in_process_executor,
    ),
)
